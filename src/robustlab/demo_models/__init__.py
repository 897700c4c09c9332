"""The demo's three trained MNIST models, shipped inside the package: ``robustlab demo`` goes
straight to evaluation on a fresh machine.

One ``<name>.safetensors`` file per model (weights and metadata in the safetensors header, the
single-file form of :func:`robustlab.models.save`), all ``small-cnn`` (166 k parameters, 666 kB in
float32):

- ``mnist-standard``: standard training;
- ``mnist-robust``: PGD-10 adversarial training at linf eps 0.3 (Madry et al. 2018);
- ``mnist-noise``: Gaussian-noise training at sigma 0.25, the base model of randomized smoothing;

each also as ``<name>-quick``, trained with the demo's quick recipe (10,000 images, fewer epochs):
``robustlab demo --quick`` evaluates those with its quick suite, whose FGSM and PGD-40 the checks
find too weak for the fully trained robust model (the black-box Square breaks images they miss),
so the quick page keeps the verdicts it had when it trained its own models.

Each file records how it was made: ``training`` (the full training configuration), ``demo`` (the
demo's recipe), ``metrics`` (``test_accuracy`` on the 10,000 MNIST test images, measured when it
was trained) and ``provenance`` (the data with the SHA-256 of its files, the robustlab version
and commit, the command). ``SHA256SUMS`` (``sha256sum`` format) pins every file: :func:`load`
checks it before reading, and the model loader checks the tensors against the header's
``data_sha256``. ``robustlab demo [--quick] --retrain --export src/robustlab/demo_models`` remakes them.

A data package: it imports :mod:`robustlab.models` and nothing above it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

__all__ = ["FULL", "NAMES", "QUICK_SUFFIX", "SUMS", "load", "path", "pinned_sha256", "read_sums", "write"]

#: The demo's models (the full recipe), and the same three with the quick recipe.
FULL = ("mnist-standard", "mnist-robust", "mnist-noise")
QUICK_SUFFIX = "-quick"
NAMES = FULL + tuple(name + QUICK_SUFFIX for name in FULL)
#: The file of pins, one ``<sha256>  <file name>`` line per model.
SUMS = "SHA256SUMS"
_HERE = Path(__file__).resolve().parent


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown demo model {name!r}; expected one of {', '.join(NAMES)}")
    return name


def path(name: str, folder: "Path | None" = None) -> Path:
    """The file of demo model ``name`` (in this package, or in ``folder``)."""
    return Path(folder or _HERE) / f"{_check_name(name)}.safetensors"


def read_sums(folder: "Path | None" = None) -> dict[str, str]:
    """``{file name: sha256}`` of ``SHA256SUMS`` (in this package, or in ``folder``)."""
    sums_file = Path(folder or _HERE) / SUMS
    sums: dict[str, str] = {}
    for number, line in enumerate(sums_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, file = line.partition("  ")
        if len(digest) != 64 or not file:
            raise ValueError(f"{sums_file}:{number}: expected '<sha256>  <file name>', got {line!r}")
        sums[file] = digest
    return sums


def pinned_sha256(name: str, folder: "Path | None" = None) -> str:
    """The SHA-256 that ``SHA256SUMS`` pins for demo model ``name``."""
    file = path(name, folder).name
    sums = read_sums(folder)
    if file not in sums:
        raise ValueError(f"{Path(folder or _HERE) / SUMS} pins no {file}")
    return sums[file]


def load(name: str, folder: "Path | None" = None) -> nn.Module:
    """Demo model ``name`` in eval mode, with ``.metadata``, after checking the whole file against
    its pinned SHA-256 (a damaged or replaced file is refused, naming both digests)."""
    from robustlab.models import load as load_saved

    file = path(name, folder)
    retrain = f"`robustlab demo{' --quick' if name.endswith(QUICK_SUFFIX) else ''} --retrain`"
    if not file.is_file():
        raise FileNotFoundError(f"the demo model {name} is missing ({file}); reinstall robustlab or run {retrain}")
    want = pinned_sha256(name, folder)
    raw = file.read_bytes()
    got = hashlib.sha256(raw).hexdigest()
    if got != want:
        raise ValueError(f"{file} has SHA-256 {got}, but {SUMS} pins {want}: the file was changed or damaged; "
                         f"reinstall robustlab or run {retrain}")
    return load_saved(file)


def write(model: nn.Module, name: str, folder: "str | Path") -> Path:
    """Write ``model`` (with its ``.metadata``) as demo model ``name`` into ``folder`` in the shipped
    form and pin it in ``folder``'s ``SHA256SUMS`` (the other lines kept); returns the file."""
    from robustlab._io import atomic_write_text
    from robustlab.models import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = save(model, path(name, folder))
    sums = read_sums(folder) if (folder / SUMS).is_file() else {}
    sums[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    atomic_write_text(folder / SUMS, "".join(f"{sums[f]}  {f}\n" for f in sorted(sums)))
    return file
