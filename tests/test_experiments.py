"""The experiment runner: verified cache, resumption, reports, soundness checks."""

import json

import numpy as np
import pytest

from robust_metric_learning.cli import main
from robust_metric_learning.experiments import ResultCache, fingerprint, reproduce
from robust_metric_learning.experiments import runner


def test_cache_roundtrip_and_rejections(tmp_path):
    cache = ResultCache(tmp_path)
    key, fp = ("arml", "digits", "ARML", "seed0"), fingerprint({"a": 1})
    assert cache.load(key, fp) is None
    cache.store(key, fp, {"radii": [0.5, float("inf")]})
    assert cache.load(key, fp) == {"radii": [0.5, float("inf")]}
    assert cache.load(key, fingerprint({"a": 2})) is None  # other settings: stale
    path = cache.path(key)
    text = path.read_text()
    path.write_text(text.replace("0.5", "0.25"))  # edited payload
    with pytest.warns(RuntimeWarning, match="checksum"):
        assert cache.load(key, fp) is None
    path.write_text(text[: len(text) // 2])  # interrupted write of an older tool
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert cache.load(key, fp) is None


def test_reproduce_resumes_and_recomputes_only_what_is_missing(tmp_path, monkeypatch):
    calls = []
    real = runner._arml_task

    def counting(dataset, method, seed, data, n_jobs):
        calls.append(method)
        return real(dataset, method, seed, data, n_jobs)

    monkeypatch.setattr(runner, "_arml_task", counting)
    kw = dict(datasets=["digits"], methods=["Euclidean", "LFDA"], n_eval=25, verbose=False)
    summary = reproduce("arml", tmp_path, **kw)
    assert calls == ["Euclidean", "LFDA"]
    for name in ("report.md", "results.json", "digits_radius_1nn_exact.png", "digits_radius_knn_empirical.png"):
        assert (tmp_path / name).stat().st_size > 0
    curves = summary["datasets"]["digits"]["methods"]["Euclidean"]["curves"]
    # certified <= exact for K = 1 curves' ordering: robust error (certified) >= (empirical)
    assert np.all(np.array(curves["radius_knn_certified"]) >= np.array(curves["radius_knn_empirical"]) - 1e-12)
    assert reproduce("arml", tmp_path, **kw) == json.loads((tmp_path / "results.json").read_text())
    assert calls == ["Euclidean", "LFDA"]  # all cached
    path = ResultCache(tmp_path / "cache").path(("arml", "digits", "LFDA", "seed0"))
    path.write_text(path.read_text()[:100])  # corrupt one entry
    with pytest.warns(RuntimeWarning, match="unreadable"):
        reproduce("arml", tmp_path, **kw)
    assert calls == ["Euclidean", "LFDA", "LFDA"]


def test_soundness_violation_fails_loudly():
    with pytest.raises(RuntimeError, match="soundness violated"):
        runner._check_sound("x", np.array([0.1, 0.3]), np.array([0.2, 0.25]), "certified > empirical")
    runner._check_sound("x", np.array([0.1, np.inf]), np.array([0.1, np.inf]), "ok")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="experiment must be one of"):
        reproduce("nope", tmp_path)
    with pytest.raises(ValueError, match="n_eval must be >= 1"):
        reproduce("arml", tmp_path, n_eval=0)
    with pytest.raises(ValueError, match="methods must be among"):
        reproduce("arml", tmp_path, methods=["SVM"])
    assert main(["reproduce", "arml", "--methods", "SVM", "--out", str(tmp_path)]) == 2
