"""The soundness checks every experiment runs on its results (they fail loudly, never warn).

- :func:`check_radii`: a certified (lower) radius never exceeds an exact or empirical (upper)
  one, point by point.
- :func:`check_certified_unbroken`: an input certified at a budget is never broken by an
  attack at that budget.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: relative slack of :func:`check_radii` (the radii are computed by different float paths)
SOUND_RTOL = 1e-6


def check_radii(name: str, lower: np.ndarray, upper: np.ndarray, what: str) -> None:
    """Raise RuntimeError where ``lower > upper`` (beyond ``SOUND_RTOL``) on any point."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    bad = lower > upper * (1 + SOUND_RTOL) + 1e-12
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RuntimeError(f"soundness violated in {name}: {what} on {int(bad.sum())} point(s), "
                           f"e.g. point {i}: {lower[i]!r} > {upper[i]!r}")


def check_certified_unbroken(name: str, radii: np.ndarray, eps: Sequence[float], broken: Sequence[np.ndarray]) -> None:
    """Raise RuntimeError where an input with certified radius above ``eps[j]`` is in ``broken[j]``."""
    radii = np.asarray(radii, dtype=float)
    for e, flipped in zip(eps, broken):
        bad = np.asarray(flipped, dtype=bool) & (radii > e)
        if bad.any():
            raise RuntimeError(f"soundness violated in {name}: {int(bad.sum())} queries certified at eps={e} "
                               "were broken by the evaluation attack")
