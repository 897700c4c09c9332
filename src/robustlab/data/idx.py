"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), read and written strictly.

Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension; the data follow in C order. ``.gz`` files are (de)compressed on
the fly.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from robustlab._io import atomic_write_bytes


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc} (the file is corrupt or truncated)") from exc


def read_idx(path: "str | os.PathLike[str]") -> np.ndarray:
    """Parse an IDX file of unsigned bytes into a uint8 array; ValueError naming the file when it is
    corrupt (bad magic number, wrong size)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is too short ({len(raw)} bytes) to hold a header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise ValueError(
            f"IDX file {path} has magic {raw[:4].hex()}; expected 0000 08 0n (unsigned bytes, 1-4 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {path} holds {len(raw) - header} data bytes, but its header {dims} announces {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: "str | os.PathLike[str]", array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed if the name ends in .gz), atomically."""
    path = Path(path)
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8 or not 1 <= arr.ndim <= 4:
        raise ValueError(f"write_idx needs a uint8 array with 1-4 dimensions, got {arr.dtype} with shape {arr.shape}")
    payload = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write_bytes(path, payload)
    return path
