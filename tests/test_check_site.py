"""docs/check_site.py finds missing API pages, broken links and missing anchors, and passes a sound site."""

import importlib.util
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load(name):
    sys.path.insert(0, str(DOCS))
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sound_site(root: Path, public_names) -> None:
    (root / "generated").mkdir(parents=True)
    for r in public_names():
        (root / "generated" / f"{r.canonical}.html").write_text(f'<dl><dt id="{r.canonical}">x</dt></dl>')
    first = public_names()[0].canonical
    (root / "index.html").write_text(f'<a href="generated/{first}.html#{first}">api</a><a href="https://x.org">ext</a>')


def test_a_sound_site_passes(tmp_path):
    check = _load("check_site")
    _sound_site(tmp_path, check.public_names)
    assert check.check_site(tmp_path) == []


def test_missing_page_broken_link_and_missing_anchor_are_reported(tmp_path):
    check = _load("check_site")
    _sound_site(tmp_path, check.public_names)
    victim = check.public_names()[-1]
    (tmp_path / "generated" / f"{victim.canonical}.html").unlink()
    (tmp_path / "page.html").write_text('<a href="nowhere.html">x</a><a href="index.html#nope">y</a>')
    problems = check.check_site(tmp_path)
    assert any(f"no API page generated/{victim.canonical}.html" in p for p in problems)
    assert "page.html: broken link nowhere.html" in problems
    assert "page.html: link index.html#nope names a missing anchor" in problems


def test_every_public_name_is_documented_once_under_its_deepest_exporter():
    api = _load("public_api")
    rows = api.public_names()
    pgd = [r for r in rows if r.name == "PGD"]
    assert {r.module for r in pgd} >= {"robust_metric_learning.attacks.embedding"}
    assert {r.canonical for r in pgd} == {"robust_metric_learning.attacks.embedding.PGD"}
    top = {r.name: r.canonical for r in rows if r.module == "robust_metric_learning"}
    assert top["ARML"] == "robust_metric_learning.learners.ARML"
