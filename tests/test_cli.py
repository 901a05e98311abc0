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
    assert "neither of ['components', 'mahalanobis']; expected exactly one of them" in capsys.readouterr().err


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


# ------------------------------------------------------------------ issue 16: no silent wrong answer


@pytest.fixture
def no_computing(monkeypatch):
    """Make loading the data and certifying fail loudly: an error must come before them."""
    import robust_metric_learning.datasets as datasets
    from robust_metric_learning.neighbors import MahalanobisKNN

    def slow(*args, **kwargs):
        raise AssertionError("computing started before the arguments were checked")

    monkeypatch.setattr(datasets, "load_dataset", slow)
    monkeypatch.setattr(MahalanobisKNN, "certify", slow)


@pytest.fixture
def no_certify(monkeypatch):
    """Certifying fails loudly (the data may load: a metric file's shape is checked against it)."""
    from robust_metric_learning.neighbors import MahalanobisKNN

    def slow(*args, **kwargs):
        raise AssertionError("certify ran with a bad metric file")

    monkeypatch.setattr(MahalanobisKNN, "certify", slow)


def _err(argv, capsys):
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rml ") and ": error: " in err and "Traceback" not in err
    return err


def test_unwritable_out_fails_before_any_computing(tmp_path, capsys, no_computing):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _err(["certify", "--out", str(blocker / "sub")], capsys)
    assert f"--out {blocker / 'sub'} cannot be written" in err
    err = _err(["certify", "--out", str(blocker)], capsys)
    assert f"--out {blocker} exists and is not a folder" in err
    assert "--out must be a folder path, got an empty string" in _err(["certify", "--out", ""], capsys)
    # a writable --out is created, and the probe file is gone; then the (patched) data loading runs
    with pytest.raises(AssertionError, match="computing started"):
        main(["certify", "--out", str(tmp_path / "new" / "out"), "--quiet"])
    assert (tmp_path / "new" / "out").is_dir() and not any((tmp_path / "new" / "out").iterdir())


def _flip_member_byte(path, member):
    import io
    import struct
    import zipfile

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo(member)
    n, e = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    raw[info.header_offset + 30 + n + e + info.compress_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("make, needles", [
    (lambda p: np.savez(p, mahalanobis=np.eye(64)[:20]),
     ["entry 'mahalanobis' must be a square (d, d) Mahalanobis matrix M, got shape (20, 64)"]),
    (lambda p: np.savez(p, mahalanobis=np.eye(10)),
     ["entry 'mahalanobis' must have shape (64, 64) for data with 64 features, got shape (10, 10)"]),
    (lambda p: np.savez(p, components=np.ones((3, 10))),
     ["entry 'components' must have shape (r, 64) for data with 64 features, got shape (3, 10)"]),
    (lambda p: np.savez(p, components=np.full((3, 64), np.nan)), ["entry 'components' contains NaN or infinity"]),
    (lambda p: np.savez(p, mahalanobis=np.diag(np.r_[np.inf, np.ones(63)])),
     ["entry 'mahalanobis' contains NaN or infinity"]),
    (lambda p: np.savez(p, mahalanobis=-np.eye(64)), ["entry 'mahalanobis'", "positive semi-definite"]),
    (lambda p: np.savez(p, components=np.zeros((0, 64))), ["entry 'components' must be a non-empty 2-D array"]),
    (lambda p: np.savez(p, components=np.array(["a", "b"])), ["entry 'components' must hold numbers"]),
    (lambda p: np.savez(p, components=np.eye(64), mahalanobis=np.eye(64)), ["both ['components', 'mahalanobis']"]),
    (lambda p: np.savez(p, components=np.eye(64), metadata=np.array("{oops")), ["entry 'metadata' is not JSON"]),
    (lambda p: np.savez(p, components=np.array([None, 1], dtype=object)), ["pickled objects"]),
])
def test_bad_metric_npz_is_refused_naming_file_entry_and_shapes(tmp_path, capsys, no_certify, make, needles):
    path = tmp_path / "m.npz"
    make(path)
    err = _err(["certify", "--metric", str(path), "--k", "1"], capsys)
    assert f"metric file {path}" in err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("matrix, needle", [
    (np.eye(10), "must have shape (64, 64) (M) or (r, 64) (L) for data with 64 features, got shape (10, 10)"),
    (np.ones((3, 65)), "got shape (3, 65)"),
    (np.ones(64), "must be a non-empty 2-D array of shape (r, d) or (d, d), got shape (64,)"),
    (np.full((64, 64), np.nan), "contains NaN or infinity"),
])
def test_bad_metric_npy_is_refused(tmp_path, capsys, no_certify, matrix, needle):
    path = tmp_path / "m.npy"
    np.save(path, matrix)
    err = _err(["certify", "--metric", str(path), "--k", "1"], capsys)
    assert f"metric file {path}" in err and needle in err


@pytest.mark.parametrize("damage", ["truncated npz", "truncated npy", "flipped byte in npz data", "garbage",
                                    "empty", "folder"])
def test_damaged_metric_file_gives_a_clear_error_before_computing(tmp_path, capsys, no_computing, damage):
    path = tmp_path / ("m.npy" if "npy" in damage else "m.npz")
    if damage.endswith("npy"):
        np.save(path, np.eye(64))
    else:
        np.savez(path, mahalanobis=2 * np.eye(64))
    raw = path.read_bytes()
    if damage.startswith("truncated"):
        path.write_bytes(raw[: len(raw) // 2])
    elif damage.startswith("flipped"):
        _flip_member_byte(path, "mahalanobis.npy")
    elif damage == "garbage":
        path.write_bytes(b"hello, world" * 20)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
        path.mkdir()
    err = _err(["certify", "--metric", str(path)], capsys)
    assert f"metric file {path}" in err
    assert any(w in err for w in ("could not be read", "is a folder"))


def test_damaged_metric_file_exits_2_without_traceback_in_a_subprocess(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "m.npz"
    save_metric(path, np.eye(64))
    path.write_bytes(path.read_bytes()[:100])
    proc = subprocess.run([sys.executable, "-m", "robust_metric_learning.cli", "certify", "--metric", str(path),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"rml certify: error: metric file {path} could not be read")
    assert "Traceback" not in proc.stderr


def test_save_metric_refuses_what_load_metric_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="components contains NaN"):
        save_metric(tmp_path / "m.npz", np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="components must be a non-empty 2-D array"):
        save_metric(tmp_path / "m.npz", np.zeros((0, 3)))
    # load_metric checks against a feature count when given one
    save_metric(tmp_path / "m.npz", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"entry 'components' must have shape \(r, 4\) .* got shape \(2, 3\)"):
        load_metric(tmp_path / "m.npz", n_features=4)
    np.testing.assert_array_equal(load_metric(tmp_path / "m.npz", n_features=3)[0], np.ones((2, 3)))


@pytest.mark.parametrize("argv, needle", [
    (["certify", "--seed", "-1"], "--seed must be an integer seed in [0, 2**32 - 1], got -1"),
    (["certify", "--n-jobs", "0"], "--n-jobs must be a non-zero integer"),
    (["certify", "--eps", "nan"], "--eps must be finite and >= 0"),
    (["certify", "--eps", "inf"], "--eps must be finite and >= 0"),
    (["certify", "--k", "-1"], "--k must be a positive integer, got -1"),
    (["certify", "--k", "1", "3", "--method", "exact"], "--method exact is for K=1 only"),
])
def test_certify_argument_errors_come_before_computing(argv, needle, capsys, no_computing):
    assert needle in _err(argv, capsys)


def test_datasets_checks_data_home_and_base_url(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["datasets", "--data-home", str(blocker)]) == 2
    assert f"--data-home {blocker} exists and is not a folder" in capsys.readouterr().err
    assert main(["datasets", "--data-home", str(tmp_path), "--download", "usps", "--base-url", "not-a-url"]) == 2
    assert "--base-url must be a URL" in capsys.readouterr().err


def test_reproduce_checks_out_before_running(tmp_path, capsys, monkeypatch):
    import robust_metric_learning.experiments as experiments

    def slow(*args, **kwargs):
        raise AssertionError("the experiment started before --out was checked")

    monkeypatch.setattr(experiments, "reproduce", slow)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["reproduce", "arml", "--out", str(blocker / "sub")]) == 2
    assert f"--out {blocker / 'sub'} cannot be written" in capsys.readouterr().err


def test_version_flag_prints_the_package_version(capsys):
    import robust_metric_learning
    from robust_metric_learning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rml (robust-metric-learning) {robust_metric_learning.__version__}"


@pytest.mark.parametrize("metadata, message", [
    ({"when": object()}, "metadata must hold JSON values only"),
    ({"score": float("nan")}, "metadata must hold JSON values only"),
    (["not", "a", "dict"], "metadata must be a dict of JSON values or None, got list"),
])
def test_save_metric_refuses_metadata_json_cannot_hold(tmp_path, metadata, message):
    with pytest.raises(ValueError, match=message):
        save_metric(tmp_path / "m.npz", np.eye(3), metadata=metadata)
    assert not (tmp_path / "m.npz").exists()  # nothing half-written
