"""Atomic file writes: write a temporary file in the target directory, then ``os.replace``.

A crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: "str | os.PathLike[str]", mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def probe_writable(folder: "str | os.PathLike[str]") -> None:
    """Create ``folder`` (and parents) and write, then delete, a probe file in it; ``OSError`` if
    either fails (the caller names the option or folder in its own error)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def atomic_write_bytes(path: "str | os.PathLike[str]", data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: "str | os.PathLike[str]", text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def json_tensor(value: object) -> "Any":
    """``value`` as UTF-8 JSON bytes in a uint8 tensor: metadata that travels with safetensors
    records (which hold tensors only); :func:`tensor_json` reads it back."""
    import json

    import torch

    return torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).clone()


def tensor_json(t: "Any") -> "Any":
    """The value :func:`json_tensor` stored."""
    import json

    return json.loads(bytes(t.tolist()).decode())
