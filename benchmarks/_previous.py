"""Run a snippet against the package as it was at an earlier commit: the "old and new in one run"
side of the speed benchmarks (``--previous COMMIT`` of bench_certify.py and bench_attacks.py).
The comparison alternates runs of the old and the current package, each in a fresh process.

The commit is checked out into a temporary git worktree (the whole package of then, so any
restructuring since is irrelevant) and the snippet runs in its own process with that tree's
``src`` first on ``PYTHONPATH``; arrays go in and out through ``.npz`` files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def positive_int(text: str) -> int:
    """``--previous-repeats``: an int >= 1 (argparse type)."""
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def alternate_with_commit(commit: str, script: str, arrays: dict, argv: list[str] = (), *, repeats: int = 5,
                          tag: str = "bench", timeout: float = 24 * 3600) -> tuple[list[dict], list[dict]] | None:
    """``script`` (Python source; ``sys.argv[1]`` is the input ``.npz`` holding ``arrays``,
    ``sys.argv[2]`` the ``.npz`` it must write, then ``argv``) run ``repeats`` times against the
    package at ``commit`` and as many times against this tree's package, alternately (which side
    goes first alternates too), each run in its own process on the same inputs: a machine whose
    speed drifts slows both sides alike. Returns (the commit's outputs, the current outputs), or
    None if a run fails (saying why on stderr)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    tmp = Path(tempfile.mkdtemp(prefix=f"{tag}_prev_"))
    tree = tmp / "tree"
    side = f"the code at {commit}"
    try:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
                       capture_output=True, text=True, timeout=120, check=True)
        np.savez(tmp / "in.npz", **arrays)
        sides = [("previous", tree / "src"), ("current", REPO / "src")]
        outs: dict[str, list[dict]] = {"previous": [], "current": []}
        for r in range(repeats):
            for name, src in sides[::-1] if r % 2 else sides:
                side = f"the code at {commit}" if name == "previous" else "the current code"
                (tmp / "out.npz").unlink(missing_ok=True)  # a run that writes nothing must not pass
                env = {**os.environ, "PYTHONPATH": str(src)}
                subprocess.run([sys.executable, "-c", script, str(tmp / "in.npz"), str(tmp / "out.npz"),
                                *map(str, argv)], env=env, check=True, timeout=timeout)
                with np.load(tmp / "out.npz") as out:
                    outs[name].append({k: out[k] for k in out.files})
        return outs["previous"], outs["current"]
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"[{tag}] {side} could not be run: {exc}", file=sys.stderr)
        return None
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
