"""CIFAR-10, binary version (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html).

Each file is a sequence of 3,073-byte records: 1 label byte (0-9), then 3,072 pixel bytes --
1,024 red, 1,024 green, 1,024 blue, each a 32x32 image in row-major order -- so a record maps to
(3, 32, 32) directly. ``data_batch_1.bin`` .. ``data_batch_5.bin`` hold the 50,000 training images,
``test_batch.bin`` the 10,000 test images. They are read from the extracted
``cifar-10-batches-bin/`` folder or straight from the official ``cifar-10-binary.tar.gz`` (one
streaming pass, nothing extracted to disk). The python version is a pickle and is never read.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_DIR = "cifar-10-batches-bin"


def parse_records(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of whole records -> (images uint8 (N, 3, 32, 32), labels uint8 (N,)); ValueError
    naming ``source`` when the length is not a positive multiple of the record or a label exceeds 9."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise ValueError(
            f"CIFAR-10 file {source} has {len(raw)} bytes, not a positive multiple of the {RECORD}-byte record "
            f"(1 label byte + 3072 pixel bytes); is it truncated, or the python (pickle) version?"
        )
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)  # (N, 3073)
    labels = rec[:, 0]
    if int(labels.max()) > 9:
        raise ValueError(f"CIFAR-10 file {source} holds label {int(labels.max())}; expected 0-9 (is it CIFAR-100?)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels  # (N, 3072) -> (N, C=3, H=32, W=32)


def split_files(split: str) -> tuple[str, ...]:
    return TRAIN_FILES if split == "train" else TEST_FILES


def extracted_dir(folder: Path) -> Path:
    """``folder/cifar-10-batches-bin`` if it exists, else ``folder`` itself."""
    return folder / ARCHIVE_DIR if (folder / ARCHIVE_DIR).is_dir() else folder


def read_archive_members(archive: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Read the members called ``names`` (matched by base name) from the .tar.gz in one streaming
    pass; only regular files are read, nothing is written to disk."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in names and member.isfile() and base not in found:
                    fh = tar.extractfile(member)
                    if fh is not None:
                        found[base] = fh.read()
                    if len(found) == len(names):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(f"cannot read CIFAR-10 archive {archive}: {exc} (corrupt or truncated?)") from exc
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"CIFAR-10 archive {archive} lacks {', '.join(missing)}")
    return found


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``split`` ("train" or "test") as read-only views (images uint8 (N, 3, 32, 32), labels
    uint8 (N,)) over the concatenated record bytes; each file is validated on its own first."""
    names = split_files(split)
    ext = extracted_dir(folder)
    if all((ext / n).is_file() for n in names):
        raws = [((ext / n).read_bytes(), str(ext / n)) for n in names]
    else:
        archive = folder / ARCHIVE
        members = read_archive_members(archive, names)
        raws = [(members[n], f"{archive}:{n}") for n in names]
    for raw, source in raws:
        parse_records(raw, source)
    if len(raws) == 1:
        return parse_records(*raws[0])
    return parse_records(b"".join(r for r, _ in raws), f"{folder} ({split})")


def present(folder: Path) -> bool:
    """Whether ``folder`` holds CIFAR-10: all six extracted binary files, or the official archive."""
    ext = extracted_dir(folder)
    return all((ext / n).is_file() for n in TRAIN_FILES + TEST_FILES) or (folder / ARCHIVE).is_file()


# -- CIFAR-100, binary version -------------------------------------------------------------------
# Each record is 3,074 bytes: the coarse label (0-19, superclass), the fine label (0-99), then the
# 3,072 pixel bytes laid out as in CIFAR-10. ``cifar-100-binary/train.bin`` holds 50,000 records and
# ``test.bin`` 10,000; ``fine_label_names.txt`` / ``coarse_label_names.txt`` name the classes.

RECORD_100 = 2 + 3 * 32 * 32
FILES_100 = {"train": "train.bin", "test": "test.bin"}
ARCHIVE_DIR_100 = "cifar-100-binary"
LABELS_100 = {"coarse": (0, 20), "fine": (1, 100)}


def parse_records_100(raw: bytes, source: str, labels: str = "fine") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 record bytes -> (images uint8 (N, 3, 32, 32), labels uint8 (N,)) with the ``"fine"``
    (100 classes) or ``"coarse"`` (20 superclasses) label; ValueError naming ``source`` otherwise."""
    if labels not in LABELS_100:
        raise ValueError(f"labels must be 'fine' or 'coarse' for CIFAR-100, got {labels!r}")
    if len(raw) == 0 or len(raw) % RECORD_100:
        raise ValueError(
            f"CIFAR-100 file {source} has {len(raw)} bytes, not a positive multiple of the {RECORD_100}-byte record "
            "(coarse label byte + fine label byte + 3072 pixel bytes); is it truncated, or CIFAR-10?"
        )
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_100)  # (N, 3074)
    for kind, (col, k) in LABELS_100.items():
        if int(rec[:, col].max()) >= k:
            raise ValueError(f"CIFAR-100 file {source} holds {kind} label {int(rec[:, col].max())}; expected 0-{k - 1}")
    col = LABELS_100[labels][0]
    return rec[:, 2:].reshape(-1, 3, 32, 32), rec[:, col]  # (N, 3072) -> (N, C=3, H=32, W=32)


def extracted_dir_100(folder: Path) -> Path:
    """``folder/cifar-100-binary`` if it exists, else ``folder`` itself."""
    return folder / ARCHIVE_DIR_100 if (folder / ARCHIVE_DIR_100).is_dir() else folder


def present_100(folder: Path) -> bool:
    """Whether ``folder`` holds the CIFAR-100 binary files (train.bin and test.bin)."""
    ext = extracted_dir_100(folder)
    return all((ext / n).is_file() for n in FILES_100.values())


def class_names_100(folder: Path, labels: str = "fine") -> tuple[str, ...]:
    """Class names from ``<labels>_label_names.txt`` next to the binary files, else the
    official names (:mod:`robustlab.data.classes`)."""
    from robustlab.data.classes import CIFAR100_COARSE, CIFAR100_FINE

    k = LABELS_100[labels][1]
    names_file = extracted_dir_100(folder) / f"{labels}_label_names.txt"
    if names_file.is_file():
        names = tuple(n.strip() for n in names_file.read_text(errors="replace").splitlines() if n.strip())
        if len(names) == k:
            return names
    return CIFAR100_FINE if labels == "fine" else CIFAR100_COARSE


def read_split_100(folder: Path, split: str, labels: str = "fine") -> tuple[np.ndarray, np.ndarray]:
    """Read ``split`` ("train" or "test") of the CIFAR-100 binary version in ``folder``."""
    file = extracted_dir_100(folder) / FILES_100[split]
    if not file.is_file():
        raise FileNotFoundError(f"CIFAR-100 {split} file {file} does not exist")
    return parse_records_100(file.read_bytes(), str(file), labels)
