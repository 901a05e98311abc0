"""The one optimisation loop shared by every gradient-based learner."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

__all__ = ["minimize"]


def minimize(
    objective: Callable[[torch.Tensor, int], torch.Tensor],
    param0: np.ndarray,
    *,
    solver: str = "adam",
    learning_rate: float = 1e-3,
    max_iter: int = 1000,
    tol: float = 0.0,
    n_iter_no_change: int = 10,
    on_epoch: Callable[[torch.Tensor, int], None] | None = None,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
    verbose: bool = False,
    desc: str = "fit",
) -> tuple[np.ndarray, int]:
    """Minimise ``objective(param, epoch)`` over a matrix parameter.

    Parameters
    ----------
    objective : callable
        Returns a scalar torch loss (autograd gives the gradient). ``epoch`` counts from 0.
    param0 : ndarray
        Starting point (L or M).
    solver : {"adam", "lbfgs", "sgd"}
        Adam and SGD take one step per epoch (full batch, or whatever the objective samples);
        L-BFGS runs its own line-searched iterations, ``max_iter`` in all.
    learning_rate : float
    max_iter : int
        Epochs (Adam/SGD) or L-BFGS iterations.
    tol : float, default=0
        Early stopping: stop when the loss has not improved by more than ``tol`` (relative)
        for ``n_iter_no_change`` epochs. 0 runs all ``max_iter`` epochs.
    on_epoch : callable, optional
        Called with the detached parameter before each epoch (re-sampling triplets, say).
    project : callable, optional
        Applied to the parameter after each step (projected gradient, e.g. onto the PSD cone).
    verbose : bool
        Progress bar with the loss.

    Returns
    -------
    param : ndarray, n_iter : int
    """
    from tqdm.auto import tqdm

    param = torch.tensor(np.asarray(param0), dtype=dtype, requires_grad=True)
    if solver == "adam":
        opt = torch.optim.Adam([param], lr=learning_rate)
    elif solver == "sgd":
        opt = torch.optim.SGD([param], lr=learning_rate)
    elif solver == "lbfgs":
        opt = torch.optim.LBFGS([param], lr=learning_rate, max_iter=max_iter, tolerance_change=tol or 1e-12,
                                history_size=20, line_search_fn="strong_wolfe")
    else:
        raise ValueError(f"solver must be 'adam', 'lbfgs' or 'sgd', got {solver!r}")

    bar = tqdm(total=max_iter, desc=desc, disable=not (verbose and sys.stderr.isatty()), leave=False)
    best, stall, n_iter = np.inf, 0, 0
    try:
        if solver == "lbfgs":
            if on_epoch is not None:
                on_epoch(param.detach(), 0)

            def closure():
                opt.zero_grad()
                loss = objective(param, 0)
                loss.backward()
                bar.update(1)
                return loss

            opt.step(closure)
            n_iter = opt.state[opt._params[0]].get("n_iter", max_iter)
            converged = n_iter < max_iter
        else:
            converged = tol <= 0
            for epoch in range(max_iter):
                if on_epoch is not None:
                    on_epoch(param.detach(), epoch)
                opt.zero_grad()
                loss = objective(param, epoch)
                loss.backward()
                opt.step()
                if project is not None:
                    with torch.no_grad():
                        param.copy_(project(param))
                n_iter = epoch + 1
                value = float(loss.detach())
                bar.update(1)
                if verbose:
                    bar.set_postfix(loss=f"{value:.5g}")
                if tol > 0:
                    if value < best - tol * max(abs(best), 1e-12) if np.isfinite(best) else True:
                        best, stall = value, 0
                    else:
                        stall += 1
                        if stall >= n_iter_no_change:
                            converged = True
                            break
    finally:
        bar.close()
    if not converged:
        warnings.warn(f"{desc}: stopped after max_iter={max_iter} iterations without converging",
                      ConvergenceWarning, stacklevel=3)
    return param.detach().cpu().to(torch.float64).numpy(), int(n_iter)
