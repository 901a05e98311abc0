"""The docstrings stand on their own: none cites a file outside the package."""

import importlib
import inspect
import pkgutil
import re

import robust_metric_learning

OUTSIDE = re.compile(r"DESIGN|README|§")


def _docstrings():
    for info in pkgutil.walk_packages(robust_metric_learning.__path__, "robust_metric_learning."):
        mod = importlib.import_module(info.name)
        yield info.name, mod.__doc__ or ""
        for name, obj in vars(mod).items():
            if getattr(obj, "__module__", None) != info.name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj.__doc__ or ""
                for mname, member in vars(obj).items() if inspect.isclass(obj) else ():
                    if inspect.isfunction(member) or isinstance(member, property):
                        yield f"{info.name}.{name}.{mname}", member.__doc__ or ""


def test_no_docstring_cites_a_file_outside_the_package():
    found = [(where, m.group()) for where, doc in _docstrings() for m in [OUTSIDE.search(doc)] if m]
    assert not found, f"docstrings citing files outside the package: {found}"


def test_the_scan_sees_the_docstrings_it_checks():  # the scan above would pass vacuously on nothing
    names = {where for where, _ in _docstrings()}
    assert "robust_metric_learning.certify.certified_radius_knn" in names
    assert "robust_metric_learning.neighbors.MahalanobisKNN.fit" in names
    assert len(names) > 300


def test_train_embedding_lists_every_registered_defence():
    from robust_metric_learning.deep import DEFENSES, train_embedding

    missing = [name for name in DEFENSES if f'``"{name}"``' not in train_embedding.__doc__]
    assert not missing, f"train_embedding's docstring omits {missing}"
