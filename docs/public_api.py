"""The public names of robust_metric_learning and where each is documented.

One source for the API reference (written by ``conf.py`` at build time) and for the check that
every public name has a page (``check_site.py``). A public name is one in the ``__all__`` of the
package or of one of its subpackages; an object exported from several of them is documented once,
under the deepest subpackage that exports it, and every other export links to that page.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass

PACKAGE = "robust_metric_learning"


@dataclass(frozen=True)
class PublicName:
    module: str      # the (sub)package whose __all__ holds it
    name: str
    canonical: str   # full dotted name of the page that documents it
    kind: str        # "class", "function" or "data"


def subpackages() -> list[str]:
    """The package and every subpackage that declares ``__all__``, parents first."""
    root = importlib.import_module(PACKAGE)
    names = [PACKAGE] + sorted(m.name for m in pkgutil.walk_packages(root.__path__, PACKAGE + ".") if m.ispkg)
    return [n for n in names if hasattr(importlib.import_module(n), "__all__")]


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def public_names() -> list[PublicName]:
    """Every (subpackage, name) pair of the public API with the page that documents it."""
    mods = {m: importlib.import_module(m) for m in subpackages()}
    owners: dict[tuple[int, str], str] = {}
    for m, mod in mods.items():  # deepest exporter wins: later (deeper) packages overwrite
        for n in mod.__all__:
            key = (id(getattr(mod, n)), n)
            if key not in owners or m.count(".") >= owners[key].count("."):
                owners[key] = m
    out = []
    for m, mod in mods.items():
        for n in mod.__all__:
            obj = getattr(mod, n)
            out.append(PublicName(m, n, f"{owners[(id(obj), n)]}.{n}", _kind(obj)))
    return out


def first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def write_api_index(path: str) -> None:
    """Write the API reference's index: one section per subpackage, one autosummary row per name."""
    rows = public_names()
    lines = [
        ".. This file is written by docs/conf.py from the package's __all__; do not edit.",
        "",
        "API reference",
        "=============",
        "",
        "Every name in the ``__all__`` of :mod:`robust_metric_learning` and of its subpackages. A name",
        "exported by several of them has one page, under the deepest subpackage that exports it; the",
        "others link to it.",
        "",
    ]
    for m in subpackages():
        importlib.import_module(m)
        own = [r for r in rows if r.module == m and r.canonical == f"{m}.{r.name}"]
        also = [r for r in rows if r.module == m and r.canonical != f"{m}.{r.name}"]
        title = f":mod:`{m}`"
        lines += [title, "-" * len(title), "", f".. automodule:: {m}", "   :no-members:", ""]
        if own:
            lines += [f".. currentmodule:: {m}", "", ".. autosummary::", "   :toctree: generated/",
                      "   :template: public.rst", ""]
            lines += [f"   {r.name}" for r in sorted(own, key=lambda r: r.name.lower())]
            lines.append("")
        if also:
            lines += ["Also exported here: " + ", ".join(
                f":{'class' if r.kind == 'class' else 'func' if r.kind == 'function' else 'data'}:`{r.canonical}`"
                for r in sorted(also, key=lambda r: r.name.lower())) + ".", ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":  # list each public name and the page that documents it
    for r in public_names():
        print(f"{r.module}.{r.name} -> {r.canonical} ({r.kind})")
