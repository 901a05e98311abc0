"""Check a built documentation site: every public name has its page, every internal link resolves.

Usage: ``python docs/check_site.py docs/_build/html``. Exits 1 and lists what is wrong.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_api import public_names  # noqa: E402


class _Page(HTMLParser):
    """The ids a page defines and the links it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src") if tag in ("a", "img", "script", "link") else ():
            if a.get(key):
                self.links.append(a[key])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def check_site(root: Path) -> list[str]:
    """Every problem found in the site built at ``root`` (empty when it is sound)."""
    problems: list[str] = []
    pages = {p.resolve(): _parse(p) for p in root.rglob("*.html")
             if "_static" not in p.relative_to(root).parts}  # the theme's own template files
    if not pages:
        return [f"{root} holds no HTML page"]
    for r in public_names():
        target = (root / "generated" / f"{r.canonical}.html").resolve()
        if target not in pages:
            problems.append(f"{r.module}.{r.name}: no API page {target.relative_to(root.resolve())}")
        elif r.canonical not in pages[target].ids:
            problems.append(f"{r.module}.{r.name}: its page does not document {r.canonical}")
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith(("//", "mailto:", "data:")):
                continue  # external: not checked here (the build machine has no internet)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            where = path.relative_to(root.resolve())
            if not target.exists():
                problems.append(f"{where}: broken link {link}")
            elif parts.fragment and target.suffix == ".html" and parts.fragment not in pages[target].ids:
                problems.append(f"{where}: link {link} names a missing anchor")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "docs/_build/html")
    problems = check_site(root)
    for p in problems:
        print(p)
    print(f"{len(public_names())} public names checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
