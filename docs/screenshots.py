"""Screenshots of a built site in headless Chromium: the index, an API page, the gallery and one of
its examples with its figure.

Usage: ``python docs/screenshots.py docs/_build/html``. Writes ``_screenshots/*.png`` inside the
build folder and prints their paths. Needs Debian's ``chromium`` package (or ``$CHROMIUM``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

API_PAGE = "generated/robust_metric_learning.MahalanobisKNN.html"


def _browser() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: install Debian's chromium package or set $CHROMIUM")


def pages(root: Path) -> dict[str, Path]:
    """The three pages to show: the index, an API page, the first gallery example with a figure."""
    gallery = sorted(p for p in (root / "auto_examples").glob("plot_*.html")
                     if "sphx_glr_" in p.read_text(encoding="utf-8", errors="replace"))
    chosen = {"index": root / "index.html", "api": root / API_PAGE,
              "gallery_index": root / "auto_examples" / "index.html",
              "gallery": gallery[0] if gallery else root / "auto_examples" / "index.html"}
    missing = [str(p) for p in chosen.values() if not p.exists()]
    if missing:
        raise SystemExit(f"pages missing from the build: {missing}")
    return chosen


def shoot(root: Path, width: int = 1280, height: int = 1600) -> list[Path]:
    out = root / "_screenshots"
    out.mkdir(exist_ok=True)
    browser, shots = _browser(), []
    for name, page in pages(root).items():
        png = out / f"{name}.png"
        tall = 3 * height if name == "gallery" else height  # long enough to reach the example's first figure
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={width},{tall}", f"--screenshot={png}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        if not png.exists() or png.stat().st_size == 0:
            raise SystemExit(f"Chromium wrote no screenshot of {page}")
        shots.append(png)
    return shots


if __name__ == "__main__":
    for png in shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")):
        print(png)
