"""The documentation site builds with warnings as errors, runs its gallery, and every public name
has a page and every internal link resolves (docs/check_site.py)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_site_builds_without_warnings_and_its_links_and_api_pages_check(tmp_path):
    out = tmp_path / "html"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                          "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, f"sphinx-build failed:\n{run.stderr[-8000:]}"
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "check_site.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.check_site(out) == []
    figures = list((out / "_images").glob("sphx_glr_plot_*.png"))
    assert len(figures) >= 8, f"the gallery produced {len(figures)} figures"
