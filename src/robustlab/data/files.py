"""Bring your own data: a ``.npz`` file, a folder of class sub-folders of images, CIFAR binary files.

:func:`load_path` turns a path into a :class:`~robustlab.data.Dataset` (images float32 (N, C, H, W)
in [0, 1], labels int64 (N,)); :func:`robustlab.data.load` calls it for any name that is a path.

- ``.npz`` (``numpy.savez``; read with ``allow_pickle=False``): ``images``/``labels`` or ``x``/``y``,
  or per split ``x_train``/``y_train``/``x_test``/``y_test`` (Keras' layout). Images uint8 (0-255)
  or float in [0, 1]; (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; labels integers
  (N,) or (N, 1); an optional ``classes`` array of names.
- an **image folder** (torchvision's ImageFolder layout): ``root/<class>/<image>.png|jpg|jpeg``,
  classes in sorted order of the folder names (label k is the k-th name), read with Pillow. All
  images must have the same size; they are read as grayscale when every image is, else as RGB
  (alpha dropped). ``root/train/<class>/...`` and ``root/test/<class>/...`` give the two splits.
- **CIFAR-10** (``data_batch_*.bin``, ``test_batch.bin``) and **CIFAR-100** (``train.bin``,
  ``test.bin``; fine labels, or coarse with ``labels="coarse"``) binary files: a folder or one file.

A path without train/test structure is one set: its ``split`` is ``"all"``, whatever split is asked.
Per-channel mean/std are the images' own. Every problem (shape, dtype, value range, labels,
image sizes, unreadable files) is a ``ValueError`` naming the file and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from robustlab.data import cifar
from robustlab.data.dataset import Dataset, from_tensors
from robustlab.data.specs import spec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "test")


def is_path(name: object) -> bool:
    """Whether a dataset argument names a file or folder (exists, or looks like a path)."""
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str):
        return False
    return Path(name).exists() or "/" in name or os.sep in name or name.lower().endswith((".npz", ".bin"))


def _to_nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) / (N, C, H, W) / (N, H, W, C) -> (N, C, H, W), C in {1, 3}."""
    if arr.ndim == 3:
        return arr[:, None]  # (N, H, W) -> (N, C=1, H, W)
    if arr.ndim != 4:
        raise ValueError(f"{where}: images of shape {arr.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if arr.shape[1] in (1, 3):
        return arr
    if arr.shape[3] in (1, 3):
        return arr.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    raise ValueError(f"{where}: images of shape {arr.shape} have no channel axis of size 1 or 3 "
                     "(expected (N, C, H, W) or (N, H, W, C) with C = 1 or 3)")


def _images_from_array(arr: np.ndarray, where: str) -> torch.Tensor:
    """uint8 (0-255) or float in [0, 1] -> float32 (N, C, H, W) in [0, 1]."""
    if arr.dtype == np.uint8:
        scale = 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 1.0
        if arr.size and not np.isfinite(arr).all():
            raise ValueError(f"{where}: images contain NaN or Inf; expected finite values in [0, 1]")
        if arr.size and (float(arr.min()) < 0.0 or float(arr.max()) > 1.0):
            raise ValueError(f"{where}: float images have values in [{float(arr.min()):.4g}, {float(arr.max()):.4g}]; "
                             "expected [0, 1] (divide 0-255 images by 255, or store them as uint8)")
    else:
        raise ValueError(f"{where}: images of dtype {arr.dtype}; expected uint8 (0-255) or float in [0, 1]")
    arr = _to_nchw(arr, where)
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: no images (shape {arr.shape})")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).div_(scale)


def _labels_from_array(arr: np.ndarray, n: int, where: str) -> torch.Tensor:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # (N, 1) -> (N,)
    if arr.ndim != 1 or arr.shape[0] != n:
        hint = " (one-hot labels: store labels.argmax(1))" if arr.ndim == 2 else ""
        raise ValueError(f"{where}: labels of shape {arr.shape}; expected ({n},) integers, one per image{hint}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{where}: labels of dtype {arr.dtype}; expected integer class indices")
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"{where}: label {int(arr.min())} is negative; expected class indices 0..K-1")
    return torch.from_numpy(arr.astype(np.int64))


def load_npz(path: "str | os.PathLike[str]", split: str = "test") -> Dataset:
    """A dataset from a ``.npz`` file (see the module docstring for the keys)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise ValueError(f"{p}: cannot read it without unpickling ({exc}); store plain numeric arrays "
                         "(and classes as a string array)") from exc
    except (OSError, EOFError) as exc:
        raise ValueError(f"{p} is not a readable .npz file ({exc})") from exc
    keys = sorted(arrays)
    if f"x_{split}" in arrays and f"y_{split}" in arrays:
        xk, yk, got_split = f"x_{split}", f"y_{split}", split
    elif any(k.startswith(("x_train", "x_test")) for k in keys):
        raise ValueError(f"{p} has keys {keys} but no x_{split}/y_{split} for split {split!r}")
    elif "images" in arrays and "labels" in arrays:
        xk, yk, got_split = "images", "labels", "all"
    elif "x" in arrays and "y" in arrays:
        xk, yk, got_split = "x", "y", "all"
    else:
        raise ValueError(f"{p} has keys {keys}; expected images/labels, x/y, or x_train/y_train/x_test/y_test")
    where = f"{p} [{xk}]"
    images = _images_from_array(arrays[xk], where)
    labels = _labels_from_array(arrays[yk], images.shape[0], f"{p} [{yk}]")
    classes: Optional[tuple[str, ...]] = None
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "USi":
            raise ValueError(f"{p} [classes]: expected a 1-D array of class names, got dtype {names.dtype} "
                             f"shape {names.shape}")
        classes = tuple(str(c) for c in names.tolist())
        if labels.numel() and int(labels.max()) >= len(classes):
            raise ValueError(f"{p}: label {int(labels.max())} but [classes] names only {len(classes)} classes")
    d = from_tensors(images, labels, name=p.stem, split=got_split, classes=classes)
    return _with_source(d, f"npz file {p}")


def _with_source(d: Dataset, source: str) -> Dataset:
    from dataclasses import replace

    return replace(d, source=source)


def _class_dirs(root: Path) -> list[Path]:
    return sorted((c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")), key=lambda c: c.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not f.name.startswith("."))


def load_image_folder(path: "str | os.PathLike[str]", split: str = "all") -> Dataset:
    """A dataset from ``path/<class>/<image>`` (PNG/JPEG, read with Pillow), classes sorted by name."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = _class_dirs(root)
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders; expected {root}/<class name>/<image>.png|jpg")
    files: list[tuple[Path, int]] = []
    for k, c in enumerate(classes):
        found = _image_files(c)
        if not found:
            raise ValueError(f"class folder {c} holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images")
        files.extend((f, k) for f in found)
    pictures = []
    first_size: Optional[tuple[int, int]] = None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                mode = im.mode
                pic = im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"cannot read image {f}: {exc}") from exc
        if first_size is None:
            first_size = pic.size
        elif pic.size != first_size:
            raise ValueError(f"image {f} is {pic.size[0]}x{pic.size[1]} but {files[0][0]} is "
                             f"{first_size[0]}x{first_size[1]} (width x height); every image must have the same size "
                             "(resize them first)")
        pictures.append((pic, mode))
    for (pic, mode), (f, _) in zip(pictures, files):
        if mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr") and not mode.startswith("I;16"):
            raise ValueError(f"image {f} has Pillow mode {mode!r}; expected 8-bit grayscale or RGB(A), or 16-bit "
                             "grayscale")
    gray = all(mode in ("1", "L", "LA") or mode.startswith("I;16") for _, mode in pictures)
    arrays = []
    for pic, mode in pictures:
        if gray and mode.startswith("I;16"):
            arrays.append(np.asarray(pic, dtype=np.float32)[None] / 65535.0)  # (H, W) -> (1, H, W)
        elif gray:
            arrays.append(np.asarray(pic.convert("L"), dtype=np.float32)[None] / 255.0)  # (H, W) -> (1, H, W)
        else:
            arrays.append(np.asarray(pic.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)  # HWC -> CHW
    images = torch.from_numpy(np.stack(arrays)).clamp_(0.0, 1.0)  # (N, C, H, W)
    labels = torch.tensor([k for _, k in files], dtype=torch.int64)
    d = from_tensors(images, labels, name=root.name if split == "all" else root.parent.name, split=split,
                     classes=[c.name for c in classes])
    return _with_source(d, f"image folder {root} ({len(files)} images, {len(classes)} classes)")


def _has_split_folders(root: Path) -> bool:
    return all((root / s).is_dir() and _class_dirs(root / s) for s in SPLIT_NAMES)


def _cifar_dataset(images: np.ndarray, labels: np.ndarray, name: str, split: str, classes: tuple[str, ...],
                   source: str) -> Dataset:
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    d = from_tensors(x, y, name=name, split=split, classes=classes)
    return _with_source(d, source)


def load_cifar_binary(path: "str | os.PathLike[str]", split: str = "test", *, labels: str = "fine") -> Dataset:
    """CIFAR-10 or CIFAR-100 from their binary files: a folder (both splits) or one ``.bin`` file.

    CIFAR-100 files carry a coarse and a fine label per image; ``labels`` picks one.
    """
    p = Path(path)
    c10 = spec("cifar10").classes
    if p.is_dir():
        if cifar.present(p) or all((cifar.extracted_dir(p) / n).is_file() for n in cifar.split_files(split)):
            images, y = cifar.read_split(p, split)
            return _cifar_dataset(images, y, "cifar10", split, c10, f"CIFAR-10 binary files in {p}")
        if cifar.present_100(p):
            images, y = cifar.read_split_100(p, split, labels)
            return _cifar_dataset(images, y, "cifar100" if labels == "fine" else "cifar100-coarse", split,
                                  cifar.class_names_100(p, labels), f"CIFAR-100 binary files in {p} ({labels} labels)")
        raise ValueError(f"{p} holds no CIFAR-10 (data_batch_1..5.bin, test_batch.bin) or CIFAR-100 "
                         "(train.bin, test.bin) binary files")
    if not p.is_file():
        raise FileNotFoundError(f"dataset file {p} does not exist")
    raw = p.read_bytes()
    is100 = p.name in cifar.FILES_100.values() or (len(raw) % cifar.RECORD_100 == 0 and len(raw) % cifar.RECORD != 0)
    if is100:
        images, y = cifar.parse_records_100(raw, str(p), labels)
        return _cifar_dataset(images, y, "cifar100", "all", cifar.class_names_100(p.parent, labels),
                              f"CIFAR-100 binary file {p} ({labels} labels)")
    images, y = cifar.parse_records(raw, str(p))
    return _cifar_dataset(images, y, "cifar10", "all", c10, f"CIFAR-10 binary file {p}")


def load_path(path: "str | os.PathLike[str]", split: str = "test", *, labels: str = "fine") -> Dataset:
    """A dataset from a path, by what it is: ``.npz``, CIFAR binary files, or an image folder
    (with ``train/`` and ``test/`` sub-folders, the one of ``split``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset path {p} does not exist (expected a .npz file, an image folder or CIFAR "
                                "binary files)")
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return load_npz(p, split)
        if p.suffix.lower() == ".bin":
            return load_cifar_binary(p, split, labels=labels)
        raise ValueError(f"dataset file {p}: unknown format {p.suffix!r}; expected .npz, CIFAR .bin files, or a folder "
                         "of class sub-folders of images")
    names = {f.name for f in p.iterdir()}
    cifar_like = (cifar.ARCHIVE_DIR in names or cifar.ARCHIVE_DIR_100 in names or cifar.ARCHIVE in names
                  or {"test_batch.bin", "test.bin"} & names)
    if cifar_like:
        return load_cifar_binary(p, split, labels=labels)
    if _has_split_folders(p):
        return load_image_folder(p / split, split)
    return load_image_folder(p, "all")
