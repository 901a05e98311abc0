"""Tests of robust_metric_learning.datasets and robust_metric_learning._io.

Real data come from the ``shared_data`` fixture (skipped when absent). Downloads
are tested against a local HTTP server on 127.0.0.1 only.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import stat
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn import datasets as skd

from robust_metric_learning import datasets as rds
from robust_metric_learning._io import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    md5_file,
)
from robust_metric_learning.datasets import (
    DATASET_NAMES,
    REMOTE_FILES,
    Dataset,
    DownloadError,
    dataset_status,
    download_dataset,
    get_data_home,
    load_dataset,
    load_idx,
    load_libsvm,
)

BUNDLED = {  # name: (n_samples, n_features, n_classes)
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
}

# Shapes and class counts from shared/data/README.md (counts in encoded label order).
SHARED = {
    "mnist": dict(
        train=(60000, 784), test=(10000, 784), images=True,
        train_counts=[5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        test_counts=[980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ),
    "fashion-mnist": dict(
        train=(60000, 784), test=(10000, 784), images=True,
        train_counts=[6000] * 10, test_counts=[1000] * 10,
    ),
    "usps": dict(
        train=(7291, 256), test=(2007, 256), images=False,
        train_counts=[1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644],
        test_counts=[359, 264, 198, 166, 200, 160, 170, 147, 166, 177],
    ),
    "pendigits": dict(
        train=(7494, 16), test=(3498, 16), images=False,
        train_counts=[780, 779, 780, 719, 780, 720, 720, 778, 719, 719],
        test_counts=None,  # README gives only the total
    ),
    "splice": dict(
        train=(700, 60), test=(300, 60), images=False,
        total_counts=[483, 517],  # -1 -> 0, +1 -> 1
    ),
}


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------- _io


def test_atomic_write_bytes_and_text(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_text(target, "héllo\nworld\n")
    assert target.read_bytes() == "héllo\nworld\n".encode()
    assert _files_in(tmp_path) == [target]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_permissions(tmp_path):
    target = atomic_write_bytes(tmp_path / "new.txt", b"x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    os.chmod(target, 0o600)
    atomic_write_bytes(target, b"y")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_open_failure_keeps_old_file(tmp_path):
    old = tmp_path / "old.txt"
    old.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(old, "w") as f:
            f.write("new, partial")
            raise RuntimeError("interrupted")
    assert old.read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "fresh.bin") as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    assert _files_in(tmp_path) == [old]


def test_atomic_open_text_and_bad_mode(tmp_path):
    with atomic_open(tmp_path / "t.txt", "w") as f:
        assert Path(f.name).parent == tmp_path
        assert Path(f.name) != tmp_path / "t.txt"
        f.write("line\n")
    assert (tmp_path / "t.txt").read_text() == "line\n"
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "ab"):
            pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_atomic_open_never_replaces_what_is_not_a_regular_file(tmp_path):
    pipe, folder = tmp_path / "pipe", tmp_path / "folder"
    os.mkfifo(pipe)
    folder.mkdir()
    for target in (pipe, folder):
        with pytest.raises(ValueError, match="not a regular file"):
            atomic_write_bytes(target, b"x")
    assert stat.S_ISFIFO(pipe.stat().st_mode) and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "pipe"]  # no temporary file left
    if Path("/dev/null").exists():
        with pytest.raises(ValueError, match="not a regular file"):
            atomic_write_text("/dev/null", "x")
        assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)


def test_md5_file(tmp_path):
    data = b"some bytes\n" * 1000
    plain, gz, bz = tmp_path / "f", tmp_path / "f.gz", tmp_path / "f.bz2"
    plain.write_bytes(data)
    gz.write_bytes(gzip.compress(data))
    bz.write_bytes(bz2.compress(data))
    assert md5_file(plain) == md5_file(plain, decompress=True) == _md5(data)
    assert md5_file(gz) == _md5(gz.read_bytes()) != _md5(data)
    assert md5_file(gz, decompress=True) == _md5(data)
    assert md5_file(bz, decompress=True) == _md5(data)


# ----------------------------------------------------------------------------- data home


def test_get_data_home_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("RML_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert get_data_home(tmp_path / "arg") == tmp_path / "arg"
    assert get_data_home() == tmp_path / "env"
    monkeypatch.delenv("RML_DATA")
    assert get_data_home() == tmp_path / "xdg" / "robust-metric-learning"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_data_home() == tmp_path / "home" / ".cache" / "robust-metric-learning"
    assert not (tmp_path / "home").exists()  # nothing created


# ----------------------------------------------------------------------------- IDX


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".bz2":
        data = bz2.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_load_idx_images_and_labels(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    img = _write(tmp_path / f"img{suffix}", _idx_bytes(images, 0x08))
    lab = _write(tmp_path / f"lab{suffix}", _idx_bytes(labels, 0x08))
    if suffix == "":
        assert img.read_bytes()[:4] == b"\0\0\x08\x03"
        assert lab.read_bytes()[:4] == b"\0\0\x08\x01"
    out = load_idx(img)
    assert out.dtype == np.uint8 and out.shape == (5, 3, 4)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(load_idx(lab), labels)
    out[0, 0, 0] = 7  # writable


@pytest.mark.parametrize(
    "code, dtype",
    [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 1, 3, 2)])
def test_load_idx_dtypes(tmp_path, code, dtype, shape):
    arr = (np.arange(np.prod(shape)) - 3).astype(dtype).reshape(shape) * 3
    path = _write(tmp_path / "x.idx.gz", _idx_bytes(arr, code))
    out = load_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_load_idx_empty_dimension(tmp_path):
    path = _write(tmp_path / "e.idx", _idx_bytes(np.zeros((0, 28, 28), np.uint8), 0x08))
    assert load_idx(path).shape == (0, 28, 28)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda b: b"\x01\x00" + b[2:], "magic number 0x01000803"),
        (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
        (lambda b: b"", "empty"),
        (lambda b: b[:10], "truncated IDX header"),
        (lambda b: b[:-1], "holds 59"),
        (lambda b: b + b"\0", "data bytes"),
    ],
    ids=["bad-magic", "bad-type", "empty", "short-header", "truncated", "too-long"],
)
def test_load_idx_errors(tmp_path, suffix, mangle, match):
    good = _idx_bytes(np.ones((5, 3, 4), np.uint8), 0x08)
    path = _write(tmp_path / f"bad-images{suffix}", mangle(good))
    with pytest.raises(ValueError, match=match) as info:
        load_idx(path)
    assert str(path) in str(info.value)


def test_load_idx_damaged_gzip(tmp_path):
    data = gzip.compress(_idx_bytes(np.ones((50, 28, 28), np.uint8), 0x08))
    not_gz = tmp_path / "plain-but-named.gz"
    not_gz.write_bytes(b"this is no gzip stream")
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) // 2])
    for path in (not_gz, cut):
        with pytest.raises(ValueError) as info:
            load_idx(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "absent.gz")


# ----------------------------------------------------------------------------- LIBSVM

LIBSVM_TEXT = b"1 1:0.5 3:2\n-1 2:-1.25 \n+1 4:7\n"
LIBSVM_DENSE = np.array([[0.5, 0, 2, 0], [0, -1.25, 0, 0], [0, 0, 0, 7]])


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_load_libsvm(tmp_path, suffix):
    path = _write(tmp_path / f"data{suffix}", LIBSVM_TEXT)
    X, y = load_libsvm(path)
    assert X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(X, LIBSVM_DENSE)
    np.testing.assert_array_equal(y, [1, -1, 1])
    X6, _ = load_libsvm(path, n_features=6)
    assert X6.shape == (3, 6)
    np.testing.assert_array_equal(X6[:, :4], LIBSVM_DENSE)
    assert not X6[:, 4:].any()


def test_load_libsvm_real_labels(tmp_path):
    path = _write(tmp_path / "reg", b"0.5 1:1\n2 2:1\n")
    _, y = load_libsvm(path)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [0.5, 2.0])


@pytest.mark.parametrize(
    "content, n_features, match",
    [
        (b"1 1:2 3:abc\n", None, "abc"),
        (b"one 1:2\n", None, "one"),
        (b"1 0:3\n", None, "index 0"),
        (b"1 2:3 1:4\n", None, "sorted"),
        (b"1 1:2 junk\n", None, "malformed"),
        (b"1 1:2 5:3\n", 4, "5 features"),
        (b"", None, "no samples"),
    ],
    ids=["bad-value", "bad-label", "zero-index", "unsorted", "junk", "too-many", "empty"],
)
@pytest.mark.parametrize("suffix", ["", ".bz2"])
def test_load_libsvm_errors(tmp_path, content, n_features, match, suffix):
    path = _write(tmp_path / f"bad{suffix}", content)
    with pytest.raises(ValueError, match=match) as info:
        load_libsvm(path, n_features=n_features)
    assert str(path) in str(info.value)


def test_load_libsvm_bad_arguments(tmp_path):
    path = _write(tmp_path / "ok", LIBSVM_TEXT)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_features"):
            load_libsvm(path, n_features=bad)
    with pytest.raises(FileNotFoundError):
        load_libsvm(tmp_path / "absent.bz2")
    cut = tmp_path / "cut.bz2"
    cut.write_bytes(bz2.compress(LIBSVM_TEXT * 50)[:40])
    with pytest.raises(ValueError, match="cut.bz2"):
        load_libsvm(cut)


# ----------------------------------------------------------------------------- load_dataset


def test_unknown_name():
    for func in (load_dataset, download_dataset):
        with pytest.raises(ValueError, match="Unknown dataset name 'mnist2'") as info:
            func("mnist2")
        for name in DATASET_NAMES:
            assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled(name, tmp_path):
    n, d, c = BUNDLED[name]
    ds = load_dataset(name, data_home=tmp_path / "nothing-here")
    assert isinstance(ds, Dataset)
    X_tr, y_tr, X_te, y_te = ds
    n_te = int(np.ceil(0.3 * n))
    assert X_tr.shape == (n - n_te, d) and X_te.shape == (n_te, d)
    assert X_tr.dtype == X_te.dtype == np.float64
    assert y_tr.dtype == y_te.dtype == np.int64
    np.testing.assert_array_equal(np.unique(y_tr), np.arange(c))
    assert set(np.unique(y_te)) <= set(range(c))
    # training part scaled to exactly [0, 1]
    assert X_tr.min() >= 0 and X_tr.max() <= 1
    raw = load_dataset(name, scale=False)
    varying = raw.X_train.max(0) > raw.X_train.min(0)
    assert np.all(X_tr.min(0) == 0)
    assert np.all(X_tr.max(0)[varying] == 1)
    lo, rng = raw.X_train.min(0), np.where(varying, np.ptp(raw.X_train, 0), 1)
    np.testing.assert_allclose(X_te, (raw.X_test - lo) / rng, rtol=0, atol=1e-12)
    # raw values are the scikit-learn data, split stratified
    X_all, y_all = getattr(skd, f"load_{name}")(return_X_y=True)
    assert sorted(map(tuple, np.vstack([raw.X_train, raw.X_test]))) == sorted(map(tuple, X_all))
    counts = np.bincount(y_all)
    assert np.all(np.abs(np.bincount(y_tr, minlength=c) - 0.7 * counts) <= 1)
    # deterministic
    for a, b in zip(ds, load_dataset(name)):
        np.testing.assert_array_equal(a, b)


def test_missing_file_message(tmp_path, monkeypatch):
    home = tmp_path / "home"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("splice", data_home=home)
    msg = str(info.value)
    assert str(home / "libsvm" / "splice") in msg
    assert "RML_DATA" in msg and "download" in msg and "data_home argument" in msg
    assert "rml datasets --download splice" in msg
    monkeypatch.setenv("RML_DATA", str(home))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist")
    msg = str(info.value)
    assert "from the RML_DATA environment variable" in msg and "download" in msg
    for rel in ("mnist/train-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"):
        assert str(home / rel) in msg
    assert not home.exists()  # load_dataset never creates or downloads anything


def test_dataset_status_empty(tmp_path):
    status = dataset_status(data_home=tmp_path)
    assert list(status) == list(DATASET_NAMES)
    for name, entry in status.items():
        assert entry["bundled"] == (name in BUNDLED)
        assert entry["available"] == (name in BUNDLED)
        assert entry["missing"] == entry["files"]
    assert status["usps"]["files"] == [tmp_path / "usps/usps.bz2", tmp_path / "usps/usps.t.bz2"]


def test_dataset_status_shared(shared_data):
    status = dataset_status(data_home=shared_data)
    assert all(entry["available"] for entry in status.values())
    assert all(not entry["missing"] for entry in status.values())


def test_registry_md5_matches_shared_files(shared_data):
    assert {f.dataset for f in REMOTE_FILES.values()} == set(SHARED)
    for rel, remote in REMOTE_FILES.items():
        assert rel == remote.path
        assert md5_file(shared_data / rel, decompress=True) == remote.md5, rel


@pytest.fixture(scope="module", params=sorted(SHARED))
def shared_dataset(request, shared_data):
    """Each shared dataset, loaded once for this module (one held at a time)."""
    return request.param, load_dataset(request.param, data_home=shared_data)


def test_shared_shapes_and_counts(shared_dataset):
    name, (X_tr, y_tr, X_te, y_te) = shared_dataset
    exp = SHARED[name]
    assert X_tr.shape == exp["train"] and X_te.shape == exp["test"]
    assert y_tr.shape == (exp["train"][0],) and y_te.shape == (exp["test"][0],)
    assert X_tr.dtype == X_te.dtype == np.float64 and X_tr.flags.c_contiguous
    assert y_tr.dtype == y_te.dtype == np.int64
    if "total_counts" in exp:
        total = np.bincount(y_tr) + np.bincount(y_te)
        assert total.tolist() == exp["total_counts"]
        assert np.all(np.abs(np.bincount(y_tr) - 0.7 * total) <= 1)
    else:
        assert np.bincount(y_tr).tolist() == exp["train_counts"]
        if exp["test_counts"] is not None:
            assert np.bincount(y_te).tolist() == exp["test_counts"]
        else:
            assert np.unique(y_te).tolist() == list(range(10))


def test_shared_labels_follow_sorted_original_labels(shared_data, shared_dataset):
    name, ds = shared_dataset
    if name == "usps":  # labels 1..10 become 0..9 = digit
        _, y_raw = load_libsvm(shared_data / "usps/usps.t.bz2", n_features=256)
        assert y_raw.min() == 1 and y_raw.max() == 10
        np.testing.assert_array_equal(ds.y_test, y_raw - 1)
    elif name == "splice":  # -1/+1 become 0/1; row order is shuffled by the split
        _, y_raw = load_libsvm(shared_data / "libsvm/splice", n_features=60)
        assert sorted(np.concatenate([ds.y_train, ds.y_test]) * 2 - 1) == sorted(y_raw)
    elif name == "pendigits":  # labels 0..9 = digit already
        _, y_raw = load_libsvm(shared_data / "libsvm/pendigits.t", n_features=16)
        np.testing.assert_array_equal(ds.y_test, y_raw)
    else:  # mnist, fashion-mnist: labels 0..9 already
        y_raw = load_idx(shared_data / name / "t10k-labels-idx1-ubyte.gz")
        np.testing.assert_array_equal(ds.y_test, y_raw)


def test_shared_ranges(shared_dataset):
    name, (X_tr, _, X_te, _) = shared_dataset
    if SHARED[name]["images"]:  # pixels / 255
        for X in (X_tr, X_te):
            assert X.min() == 0.0 and X.max() == 1.0
            pixels = X[:2000] * 255
            np.testing.assert_allclose(pixels, np.round(pixels), rtol=0, atol=1e-9)
    else:  # min-max fitted on the training part
        assert np.all(X_tr.min(0) == 0) and np.all(X_tr.max(0) == 1)
        assert np.isfinite(X_te).all()


@pytest.mark.parametrize("name, lo, hi", [("pendigits", 0, 100), ("splice", 1, 4)])
def test_unscaled(shared_data, name, lo, hi):
    raw = load_dataset(name, data_home=shared_data, scale=False)
    scaled = load_dataset(name, data_home=shared_data)
    assert raw.X_train.min() == lo and raw.X_train.max() == hi
    np.testing.assert_array_equal(raw.X_train, np.round(raw.X_train))
    np.testing.assert_array_equal(raw.y_train, scaled.y_train)
    mn, rng = raw.X_train.min(0), np.ptp(raw.X_train, 0)
    np.testing.assert_allclose(scaled.X_test, (raw.X_test - mn) / rng, atol=1e-12)
    again = load_dataset(name, data_home=shared_data, scale=False)
    for a, b in zip(raw, again):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- download


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; records requests; can cut a response short."""

    requests: list[str]
    cut: dict[str, int]

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path in self.cut:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: self.cut[self.path]])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server serving ``root`` (data-home layout): (base_url, root, handler)."""
    for var in list(os.environ):
        if var.lower().endswith("_proxy"):
            monkeypatch.delenv(var)
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"requests": [], "cut": {}})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _serve(shared_data: Path, root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / rel, root / rel)


@pytest.mark.parametrize("name", ["splice", "pendigits", "usps"])
def test_download_success(shared_data, mirror, tmp_path, name):
    base_url, root, handler = mirror
    rels = [f.path for f in REMOTE_FILES.values() if f.dataset == name]
    _serve(shared_data, root, *rels)
    home = tmp_path / "home"
    got = download_dataset(name, data_home=home, base_url=base_url)
    assert got == [home / rel for rel in rels]
    assert sorted(handler.requests) == sorted("/" + rel for rel in rels)
    assert _files_in(home) == sorted(got)
    for rel in rels:
        assert md5_file(home / rel, decompress=True) == REMOTE_FILES[rel].md5
        assert (home / rel).read_bytes() == (shared_data / rel).read_bytes()
    assert dataset_status(data_home=home)[name]["available"]
    if name != "usps":  # usps is compared byte for byte above; its load is slow
        for a, b in zip(load_dataset(name, data_home=home),
                        load_dataset(name, data_home=shared_data)):
            np.testing.assert_array_equal(a, b)


def test_download_accepts_recompressed_copy(shared_data, mirror, tmp_path):
    base_url, root, _ = mirror
    rels = [f.path for f in REMOTE_FILES.values() if f.dataset == "mnist"]
    _serve(shared_data, root, *rels)
    for rel in rels:
        if "labels" in rel:  # recompress the small files with other settings
            raw = gzip.decompress((shared_data / rel).read_bytes())
            (root / rel).write_bytes(gzip.compress(raw, compresslevel=1, mtime=12345))
            assert _md5((root / rel).read_bytes()) != md5_file(shared_data / rel)
    home = tmp_path / "home"
    assert len(download_dataset("mnist", data_home=home, base_url=base_url + "/")) == 4
    for rel in rels:
        assert md5_file(home / rel, decompress=True) == REMOTE_FILES[rel].md5


def test_download_corrupted(shared_data, mirror, tmp_path):
    base_url, root, _ = mirror
    _serve(shared_data, root, "libsvm/splice")
    data = bytearray((root / "libsvm/splice").read_bytes())
    data[100] ^= 1
    (root / "libsvm/splice").write_bytes(bytes(data))
    home = tmp_path / "home"
    with pytest.raises(ValueError) as info:
        download_dataset("splice", data_home=home, base_url=base_url)
    msg = str(info.value)
    assert "expected md5 c85073261cda810ef68e7b7254737129" in msg
    assert f"received md5 {_md5(bytes(data))}" in msg
    assert f"{base_url}libsvm/splice" in msg and "libsvm/splice" in msg
    assert not (home / "libsvm/splice").exists()
    assert _files_in(tmp_path / "home") == []  # no temporary file left either


def test_download_undecompressable(shared_data, mirror, tmp_path):
    base_url, root, _ = mirror
    _serve(shared_data, root, "usps/usps.bz2", "usps/usps.t.bz2")
    (root / "usps/usps.t.bz2").write_bytes((root / "usps/usps.t.bz2").read_bytes()[:5000])
    home = tmp_path / "home"
    with pytest.raises(ValueError, match="cannot be decompressed") as info:
        download_dataset("usps", data_home=home, base_url=base_url)
    assert "332b79f1732522293af5e102b35e8b23" in str(info.value)
    assert "LIBSVM" in str(info.value)  # the usps caveat
    assert _files_in(home) == [home / "usps/usps.bz2"]


def test_download_404(mirror, tmp_path):
    base_url, _, handler = mirror
    home = tmp_path / "home"
    with pytest.raises(DownloadError) as info:
        download_dataset("splice", data_home=home, base_url=base_url)
    assert isinstance(info.value, OSError)
    assert f"{base_url}libsvm/splice" in str(info.value) and "404" in str(info.value)
    assert handler.requests == ["/libsvm/splice"]
    assert not home.exists() or _files_in(home) == []


def test_download_cut_short(shared_data, mirror, tmp_path):
    base_url, root, handler = mirror
    _serve(shared_data, root, "libsvm/splice")
    handler.cut["/libsvm/splice"] = 5000
    home = tmp_path / "home"
    with pytest.raises(DownloadError, match="5000 of 715000 bytes"):
        download_dataset("splice", data_home=home, base_url=base_url)
    assert not home.exists() or _files_in(home) == []


def test_download_connection_refused(tmp_path, monkeypatch):
    for var in list(os.environ):
        if var.lower().endswith("_proxy"):
            monkeypatch.delenv(var)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DownloadError, match=f"{url}/libsvm/splice"):
        download_dataset("splice", data_home=tmp_path, base_url=url, timeout=5)
    assert _files_in(tmp_path) == []


def test_download_skips_existing_and_force(shared_data, mirror, tmp_path):
    base_url, root, handler = mirror
    home = tmp_path / "home"
    _serve(shared_data, home, "libsvm/splice")  # already present
    _serve(shared_data, root, "libsvm/splice")
    (root / "libsvm/splice").write_bytes(b"corrupt")
    assert download_dataset("splice", data_home=home, base_url=base_url) == []
    assert handler.requests == []
    with pytest.raises(ValueError, match="Checksum mismatch"):
        download_dataset("splice", data_home=home, base_url=base_url, force=True)
    assert md5_file(home / "libsvm/splice") == REMOTE_FILES["libsvm/splice"].md5
    _serve(shared_data, root, "libsvm/splice")
    got = download_dataset("splice", data_home=home, base_url=base_url, force=True)
    assert got == [home / "libsvm/splice"] and len(handler.requests) == 2
    assert _files_in(home) == got


def test_download_bundled_needs_nothing(tmp_path):
    assert download_dataset("digits", data_home=tmp_path / "h", base_url="http://0.0.0.0:9/") == []
    assert not (tmp_path / "h").exists()


def test_default_urls():
    urls = {rel: f.url for rel, f in REMOTE_FILES.items()}
    assert urls["mnist/t10k-labels-idx1-ubyte.gz"] == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz"
    )
    assert urls["fashion-mnist/train-images-idx3-ubyte.gz"] == (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz"
    )
    base = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/"
    assert urls["usps/usps.t.bz2"] == base + "multiclass/usps.t.bz2"
    assert urls["libsvm/pendigits.t"] == base + "multiclass/pendigits.t"
    assert urls["libsvm/splice"] == base + "binary/splice"
    assert len(urls) == 13
    assert rds.__all__ and all(hasattr(rds, n) for n in rds.__all__)
