"""The IDX format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number -- two zero bytes, a type code (0x08 = unsigned byte), the
number of dimensions -- then one big-endian uint32 per dimension, then the data in C order.
Files whose name ends in ``.gz`` are gzip-compressed. Only unsigned bytes are read and written:
that is what every MNIST-family file holds.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from robustlab._io import atomic_write_bytes

UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"cannot decompress IDX file {path}: {exc} (the file is corrupt or truncated)") from exc


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a read-only uint8 array of the announced
    shape; ValueError naming ``source`` for a bad magic number or a size that disagrees with the header."""
    if len(raw) < 4:
        raise ValueError(f"IDX file {source} is too short ({len(raw)} bytes) to hold a header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code != UBYTE or not 1 <= ndim <= 4:
        raise ValueError(
            f"IDX file {source} has magic {raw[:4].hex()}; expected 000008 followed by 01-04 "
            f"(unsigned bytes, 1 to 4 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {source} is truncated inside its header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {source} holds {len(raw) - header} data bytes, but its header {dims} announces {expected}"
            + (" (truncated)" if len(raw) - header < expected else " (trailing bytes)")
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: "str | os.PathLike[str]", ndim: "int | None" = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or not) into a read-only uint8 array. ValueError naming the file
    when it is corrupt, truncated, or (with ``ndim``) has another number of dimensions."""
    path = Path(path)
    arr = parse_idx(_read_bytes(path), str(path))
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"IDX file {path} has {arr.ndim} dimensions {arr.shape}; expected {ndim}")
    return arr


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of a uint8 array with 1 to 4 dimensions."""
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8 or not 1 <= arr.ndim <= 4:
        raise ValueError(f"IDX needs a uint8 array with 1-4 dimensions, got {arr.dtype} with shape {arr.shape}")
    return struct.pack(">HBB", 0, UBYTE, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: "str | os.PathLike[str]", array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzip-compressed if the name ends in ``.gz``, atomically
    (temporary sibling + ``os.replace``). Returns the path."""
    path = Path(path)
    payload = idx_bytes(array)
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write_bytes(path, payload)
    return path
