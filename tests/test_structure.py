"""The package's shape (DESIGN §4): no import circle, imports inside functions included; small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "robust_metric_learning"
MAX_LINES = 500


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((SRC / PKG).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its code (functions included).

    ``from X import name`` depends on ``X.name`` where that is a module, else on ``X`` itself.
    """
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, (path, is_pkg) in modules.items():
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                graph[mod].update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names]
                graph[mod].update(s for s in subs if s in modules)
                if target in modules and not all(s in modules for s in subs):
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / PKG
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import os\n\ndef g():\n    from .. import a\n")
    (pkg / "d.py").write_text("from . import a\n")
    mods = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    assert cycles(import_graph(mods)) == [[f"{PKG}.a", f"{PKG}.b", f"{PKG}.sub.c"]]


def test_no_import_circle():
    found = cycles(import_graph(_modules()))
    assert found == [], f"import circles: {found}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_is_small(module):
    path, _ = _modules()[module]
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (at most {MAX_LINES})"


def _bad_argument_cases():
    """(callable, the argument's name) for a wrongly typed argument to each public entry point."""
    import numpy as np
    import torch

    import robust_metric_learning as rml
    from robust_metric_learning.attacks import APGD, PGD, BoundaryAttack, NoiseAttack, RetrievalEnsemble, StructuralAttack
    from robust_metric_learning.datasets import download_dataset, load_dataset
    from robust_metric_learning.deep import MLP, adversarial_retrieval, certified_retrieval, train_embedding

    rng = np.random.default_rng(0)
    X, y = rng.random((20, 4)), np.arange(20) % 2
    Xi = X.astype(np.float32)
    torch.manual_seed(0)
    net = MLP(4, hidden=(8,), embedding_dim=3)
    knn = rml.MahalanobisKNN(1).fit(X, y)
    q = (X[:2], y[:2])
    return [
        (lambda: rml.exact_radius_1nn(X, y, *q, n_jobs="x"), "n_jobs"),
        (lambda: rml.exact_radius_1nn(X, y, *q, tol=-1.0), "tol"),
        (lambda: rml.exact_radius_1nn(X, y, *q, progress="x"), "progress"),
        (lambda: rml.exact_radius_1nn(X, y, *q, memory_budget="big"), "memory_budget"),
        (lambda: rml.certified_radius_knn(X, y, *q, chunk_size=0), "chunk_size"),
        (lambda: rml.certified_radius_knn(X, y, *q, n_screen=0), "n_screen"),
        (lambda: rml.certified_radius_knn(X, y, *q, n_neighbors=2), "n_neighbors"),
        (lambda: rml.MahalanobisKNN(n_jobs="x").fit(X, y), "n_jobs"),
        (lambda: rml.MahalanobisKNN(n_neighbors=0).fit(X, y), "n_neighbors"),
        (lambda: knn.certify(*q, method="fast"), "method"),
        (lambda: knn.certify(*q, progress=3), "progress"),
        (lambda: rml.attack_knn(X, y, *q, n_jobs="x"), "n_jobs"),
        (lambda: rml.attack_knn(X, y, *q, n_neighbors="3"), "n_neighbors"),
        (lambda: rml.attack_knn(X, y, *q, method="pgd"), "method"),
        (lambda: StructuralAttack(n_pool=0)(knn, *q), "n_pool"),
        (lambda: BoundaryAttack(steps=1.5)(knn, *q), "steps"),
        (lambda: NoiseAttack(kind=3)(knn, *q, eps=0.1), "kind"),
        (lambda: rml.LMNN(max_iter="x").fit(X, y), "max_iter"),
        (lambda: rml.NCA(max_iter=-1).fit(X, y), "max_iter"),
        (lambda: rml.ARML(random_state="x").fit(X, y), "random_state"),
        (lambda: adversarial_retrieval(net, Xi, y, eps="big"), "eps"),
        (lambda: adversarial_retrieval(net, Xi, y, eps=0.1, attack="pgd"), "attack"),
        (lambda: adversarial_retrieval(net, Xi, y, eps=0.1, batch_size=0), "batch_size"),
        (lambda: certified_retrieval(net, Xi, y, eps=0.1, norm="l3"), "norm"),
        (lambda: train_embedding(net, Xi, y, epochs="x", progress=False), "epochs"),
        (lambda: train_embedding(net, Xi, y, epochs=1, batches_per_epoch=0, progress=False), "batches_per_epoch"),
        (lambda: train_embedding(net, Xi, y, epochs=1, lr=-1, progress=False), "lr"),
        (lambda: PGD(steps=0)(net, Xi, rml.attacks.EmbeddingShift(net(torch.as_tensor(Xi))), eps=0.1), "steps"),
        (lambda: APGD(rho=2.0)(net, Xi, rml.attacks.EmbeddingShift(net(torch.as_tensor(Xi))), eps=0.1), "rho"),
        (lambda: RetrievalEnsemble(focus=5).members, "focus"),
        (lambda: download_dataset("usps", base_url=5, data_home="/nonexistent"), "base_url"),
        (lambda: download_dataset("usps", base_url="gopher://x", data_home="/nonexistent"), "base_url"),
        (lambda: download_dataset("usps", timeout=-1, data_home="/nonexistent"), "timeout"),
        (lambda: load_dataset("nope"), "dataset name"),
    ]


def test_each_public_entry_point_names_a_bad_argument():
    import robust_metric_learning.attacks  # noqa: F401  (rml.attacks below)

    failures = []
    for i, (call, name) in enumerate(_bad_argument_cases()):
        try:
            call()
        except (ValueError, TypeError) as exc:
            if name not in str(exc):
                failures.append(f"case {i} ({name}): {type(exc).__name__}: {exc}")
        else:
            failures.append(f"case {i} ({name}): no error")
    assert not failures, "\n".join(failures)
