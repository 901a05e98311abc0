"""The ``rml`` command line on the embedded default data."""

import json

import numpy as np
import pytest

from robust_metric_learning._io import load_metric, save_metric
from robust_metric_learning.cli import main


def test_certify_digits_writes_table_json_png(tmp_path, capsys):
    assert main(["certify", "--dataset", "digits", "--k", "1", "3", "--n-eval", "60", "--eps", "0.2", "0.5",
                 "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| K | method | clean error | ε=0.2 | ε=0.5 | s/point |" in out
    result = json.loads((tmp_path / "certify.json").read_text())
    assert [r["k"] for r in result["results"]] == [1, 3]
    assert [r["method"] for r in result["results"]] == ["exact", "bound"]
    assert len(result["results"][0]["radii"]) == 60
    assert result["settings"]["seed"] == 42 and result["settings"]["eps"] == [0.0, 0.2, 0.5]
    errs = result["results"][0]["robust_error"]
    assert errs == sorted(errs)  # robust error grows with ε
    assert (tmp_path / "robust_error.png").read_bytes()[:4] == b"\x89PNG"


def test_certify_with_metric_file(tmp_path, capsys):
    L = np.random.default_rng(0).normal(size=(20, 64))
    path = save_metric(tmp_path / "m.npz", L, metadata={"learner": "random"})
    mat, meta = load_metric(path)
    np.testing.assert_array_equal(mat, L) and meta == {"learner": "random"}
    assert main(["certify", "--metric", str(path), "--k", "1", "--n-eval", "20", "--quiet", "--out",
                 str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "certify.json").read_text())
    assert result["settings"]["metric_metadata"] == {"learner": "random"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["certify", "--k", "2"], "--k must be odd"),
        (["certify", "--metric", "missing.npz"], "metric file missing.npz not found"),
        (["certify", "--eps", "-1"], "--eps must be finite and >= 0"),
        (["certify", "--n-eval", "0"], "--n-eval must be >= 1"),
        (["certify", "--k", "3", "--method", "exact"], "--method exact is for K=1 only"),
    ],
)
def test_certify_errors(argv, message, capsys):
    assert main(argv + ["--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_bad_metric_file(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["certify", "--metric", str(bad), "--quiet"]) == 2
    assert "could not be read" in capsys.readouterr().err
    np.savez(tmp_path / "other.npz", weights=np.eye(2))
    assert main(["certify", "--metric", str(tmp_path / "other.npz"), "--quiet"]) == 2
    assert "expected one of ['components', 'mahalanobis']" in capsys.readouterr().err


def test_datasets_lists_names(capsys, tmp_path):
    assert main(["datasets", "--data-home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| digits | bundled with scikit-learn | yes |" in out
    assert "| usps |" in out and "rml datasets --download usps" in out


def test_loky_worker_recycling_warning_is_silenced_and_others_are_not(monkeypatch):
    import warnings

    from robust_metric_learning import cli

    def noisy(args):
        warnings.warn("A worker stopped while some jobs were given to the executor. This can be caused by a too "
                      "short worker timeout or by a memory leak.", UserWarning)
        warnings.warn("something else", UserWarning)
        return 0

    monkeypatch.setattr(cli, "cmd_datasets", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["datasets"]) == 0
    assert [str(w.message) for w in caught] == ["something else"]
