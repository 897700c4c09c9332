"""CIFAR-10, binary version (Krizhevsky 2009): records of 1 label byte + 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, each 32x32 row-major). The python version is a pickle and is
never read."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_DIR = "cifar-10-batches-bin"


def parse_records(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of whole records -> (images uint8 (N, 3, 32, 32), labels uint8 (N,))."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise ValueError(f"CIFAR-10 file {source} has {len(raw)} bytes, not a positive multiple of the {RECORD}-byte record")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = rec[:, 0].copy()
    if labels.max() > 9:
        raise ValueError(f"CIFAR-10 file {source} holds label {int(labels.max())}; expected 0-9 (is it CIFAR-100?)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a split from the extracted ``cifar-10-batches-bin`` folder or the ``.tar.gz`` beside it."""
    names = TRAIN_FILES if split == "train" else TEST_FILES
    parts = []
    extracted = folder / ARCHIVE_DIR if (folder / ARCHIVE_DIR).is_dir() else folder
    if all((extracted / n).is_file() for n in names):
        parts = [parse_records((extracted / n).read_bytes(), str(extracted / n)) for n in names]
    else:
        archive = folder / ARCHIVE
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for n in names:
                    if n not in members:
                        raise ValueError(f"CIFAR-10 archive {archive} lacks {n}")
                    fh = tar.extractfile(members[n])
                    assert fh is not None
                    parts.append(parse_records(fh.read(), f"{archive}:{n}"))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"cannot read CIFAR-10 archive {archive}: {exc}") from exc
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def present(folder: Path) -> bool:
    """Whether ``folder`` holds CIFAR-10 (extracted binary files or the official archive)."""
    extracted = folder / ARCHIVE_DIR if (folder / ARCHIVE_DIR).is_dir() else folder
    return all((extracted / n).is_file() for n in TRAIN_FILES + TEST_FILES) or (folder / ARCHIVE).is_file()
