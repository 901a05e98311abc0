"""Run a snippet against the package as it was at an earlier commit: the "old and new in one run"
side of the speed benchmarks (``--previous COMMIT`` of bench_certify.py and bench_attacks.py).

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


def run_at_commit(commit: str, script: str, arrays: dict, argv: list[str] = (), *, tag: str = "bench",
                  timeout: float = 24 * 3600) -> dict | None:
    """Run ``script`` (Python source; ``sys.argv[1]`` is the input ``.npz`` holding ``arrays``,
    ``sys.argv[2]`` the ``.npz`` it must write, then ``argv``) against the package at ``commit``.
    Returns the arrays it wrote, or None if that fails (and says why on stderr)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{tag}_prev_"))
    tree = tmp / "tree"
    try:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
                       capture_output=True, text=True, timeout=120, check=True)
        np.savez(tmp / "in.npz", **arrays)
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        subprocess.run([sys.executable, "-c", script, str(tmp / "in.npz"), str(tmp / "out.npz"), *map(str, argv)],
                       env=env, check=True, timeout=timeout)
        with np.load(tmp / "out.npz") as out:
            return {k: out[k] for k in out.files}
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"[{tag}] the code at {commit} could not be run: {exc}", file=sys.stderr)
        return None
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
