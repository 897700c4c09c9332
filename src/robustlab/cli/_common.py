"""What several subcommands share: the model options (a saved model or your own), the device, the
output paths (checked before any work is spent) and the model/data fit (checked before any attack).

Every error is a ``ValueError`` / ``FileNotFoundError`` naming the argument, its value and what
was expected; :func:`robustlab.cli.main` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from robustlab.cli.evaluate import parse_floats

MODEL_HELP = ("a saved robustlab model (folder or .safetensors), catalog:NAME (robustlab models list), a TorchScript "
              "(.pt) or ONNX (.onnx) file, or your own factory 'package.module:attr' / 'path/to/file.py:attr' returning "
              "an nn.Module (with --weights)")


def parse_model_option(text: str) -> tuple[str, Any]:
    from robustlab.cli.attack import parse_option

    return parse_option(text)


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model`` and the bring-your-own-model options."""
    p.add_argument("--model", required=required, help=MODEL_HELP)
    byo = p.add_argument_group("your own model (docs/byo.md)")
    byo.add_argument("--weights", default=None,
                     help="state dict for a factory --model: .safetensors, or a torch.save(state_dict) file read "
                          "with torch.load(weights_only=True); other pickles are refused")
    byo.add_argument("--mean", type=parse_floats, default=None,
                     help="per-channel mean the network expects its inputs standardised with (pixel units in [0, 1], "
                          "e.g. 0.4914,0.4822,0.4465); wraps the model in robustlab's Normalize. Omit it when the "
                          "network normalises inside")
    byo.add_argument("--std", type=parse_floats, default=None, help="per-channel std, with --mean")
    byo.add_argument("--model-option", type=parse_model_option, action="append", default=[], metavar="KEY=VALUE",
                     help="keyword argument of the factory, e.g. --model-option num_classes=10 (repeatable)")


#: Images with at least this many values get their batch size checked against the memory budget even
#: without --max-memory (a 64x64 colour image; MNIST and CIFAR batches are far below any machine's memory).
MEMORY_CHECK_FROM = 64 * 64 * 3


def add_memory_arg(p: argparse.ArgumentParser) -> None:
    """``--max-memory``: caps the batch size (robustlab.memory)."""
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget for a batch, e.g. 8G: the batch size is lowered to what fits, measured with a "
                        "probe pass (default: half the machine's memory, 80%% of a GPU's; checked for images from "
                        "64x64x3 up, or whenever this is given)")


def fit_batch(args: argparse.Namespace, model: Any, shape: "tuple[int, ...]", device: Any, *, grad: bool = True) -> int:
    """``--batch-size`` lowered to what ``--max-memory`` (or the default budget) holds, with a note on stderr."""
    import math
    import sys

    from robustlab.memory import optional_fit, parse_size

    budget = getattr(args, "max_memory", None)
    if budget is not None:
        parse_size(budget)  # a malformed size is an error even where no probe runs
    if budget is None and math.prod(shape) < MEMORY_CHECK_FROM:
        return int(args.batch_size)
    size, note = optional_fit(model, tuple(shape), int(args.batch_size), budget, grad=grad, device=device)
    if note:
        print(f"robustlab: {note}", file=sys.stderr)
    return size


def resolve_device(value: Optional[str], arg: str = "--device") -> "Any":
    """The ``torch.device`` that ``value`` names (default cpu); one-line errors for malformed names and
    devices this machine does not have."""
    import torch

    if value is None:
        return torch.device("cpu")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{arg} {value!r} is not a device name; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{arg} {value!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                             "expected cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{arg} {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"expected cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{arg} {value!r}: MPS is not available on this machine; expected cpu")
    elif dev.type != "cpu":
        raise ValueError(f"{arg} {value!r}: robustlab runs on cpu, cuda or mps; got device type {dev.type!r}")
    return dev


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_dir(folder: Path, arg: str, value: str) -> None:
    """Create ``folder`` (and parents) and write and delete a probe file in it."""
    anchor = _nearest_existing(folder)
    if anchor.exists() and not anchor.is_dir():
        raise ValueError(f"{arg} {value}: {anchor} is a file, not a folder; expected a path inside a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{arg} {value}: cannot write in {folder} ({exc.strerror or exc}); expected a writable "
                         "location") from None


def check_out_dir(value: "str | os.PathLike[str]", arg: str = "--out") -> Path:
    """An output folder: not an existing file, creatable and writable. Checked before any work."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} {value} is an existing file; expected a folder (new or existing)")
    _probe_dir(path, arg, str(value))
    return path


def check_out_file(value: "str | os.PathLike[str]", arg: str = "--out", suffix: Optional[str] = None) -> Path:
    """An output file: not a folder, its folder creatable and writable. Checked before any work."""
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"{arg} {value} is a folder; expected a file name{f' ending in {suffix}' if suffix else ''}")
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{arg} must name a {suffix} file, got {value}")
    _probe_dir(path.parent if str(path.parent) else Path("."), arg, str(value))
    return path


def load_model(args: argparse.Namespace, device: Any = "cpu") -> Any:
    """The model ``--model`` (and ``--weights``, ``--mean``/``--std``, ``--model-option``) describe."""
    from robustlab.models.external import load_external

    if (args.mean is None) != (args.std is None):
        raise ValueError(f"--mean and --std go together; got --mean {args.mean} and --std {args.std}")
    if args.weights is not None and not Path(args.weights).exists():
        raise FileNotFoundError(f"--weights {args.weights}: no such file")
    return load_external(args.model, weights=args.weights, mean=args.mean, std=args.std,
                         kwargs=dict(args.model_option) or None, map_location=device).eval()


def dataset_name(args: argparse.Namespace, model: Any) -> str:
    name = args.dataset or (getattr(model, "metadata", None) or {}).get("dataset")
    if not name:
        raise ValueError(f"--model {args.model} records no dataset; pass --dataset (a name, a .npz file, an image "
                         "folder or CIFAR binary files)")
    return str(name)


def check_model_data(model: Any, dataset: Any, device: Any = "cpu") -> int:
    """Run the model on the first image and compare it with the data: channels, dtype and size
    (named by :func:`robustlab._checks.explain_input_mismatch`), logits, number of classes.
    Returns the number of classes. Runs before any attack."""
    import torch

    from robustlab._checks import check_logits, explain_input_mismatch

    arch = (getattr(model, "metadata", None) or {}).get("architecture")
    if isinstance(arch, dict) and "in_channels" in arch and "input_size" in arch:
        want = (int(arch["in_channels"]), *(int(v) for v in arch["input_size"]))
        if tuple(dataset.shape) != want:
            raise ValueError(f"the data set {dataset.name!r} has images of shape {tuple(dataset.shape)} (C, H, W) but "
                             f"the model ({arch.get('name')}) was built for {want}")
    x1 = dataset.images[:1].to(device)
    try:
        with torch.no_grad():
            out = model(x1)
    except RuntimeError as exc:
        why = explain_input_mismatch(model, x1, f"the data set {dataset.name!r}")
        raise ValueError(f"the model cannot take the images of {dataset.name!r} (C, H, W = {tuple(x1.shape[1:])}): "
                         f"{why or str(exc).splitlines()[0]}") from None
    check_logits(out, 1, "the model's output")
    k = int(out.shape[1])
    top = int(dataset.labels.max())
    if top >= k:
        raise ValueError(f"the data set {dataset.name!r} has label {top} but the model outputs {k} logits "
                         f"(classes 0..{k - 1})")
    if str(getattr(dataset, "source", "")).startswith("image folder") and dataset.num_classes != k:
        raise ValueError(f"the image folder {dataset.name!r} has {dataset.num_classes} class folders but the model "
                         f"outputs {k} logits; label k is the k-th folder name in sorted order, so they must match")
    return k


def run_distributed(args: "Any", body: "Any") -> int:
    """``body(args, info)`` inside the process group ``torchrun`` describes (one process: rank 0 of 1,
    nothing initialised): the group is joined here and left at the end when this command created it;
    INFO logging on rank 0, warnings only elsewhere, each line tagged with its rank."""
    import logging

    from robustlab import distributed

    if getattr(args, "device", None) is not None:
        resolve_device(args.device)  # a one-line error for a malformed or absent device, before any process group
    joined = not distributed.is_distributed()
    info = distributed.init_from_env(getattr(args, "device", None))
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format="%(message)s" if not info.distributed else f"[rank {info.rank}] %(message)s")
    try:
        return body(args, info)
    finally:
        if joined:  # leave a process group only when this command created it
            distributed.cleanup()
