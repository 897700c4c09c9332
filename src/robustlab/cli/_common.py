"""What several subcommands share: the options of one vocabulary (:data:`SHARED`: one spelling, one
type, one meaning, one help text in every subcommand that has them), the model options (a saved
model or your own), the device, the output paths (checked before any work is spent) and the
model/data fit (checked before any attack).

Every error is a ``ValueError`` / ``FileNotFoundError`` naming the argument, its value and what
was expected; :func:`robustlab.cli.main` prints it as one line and exits with status 2. Bad option
values (a count of 0, a negative radius, NaN) are refused by argparse itself
(:mod:`robustlab.cli.options`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from robustlab._io import probe_writable
from robustlab.cli.options import (float_list, key_value, memory_size, nonnegative_int, positive_float, positive_int,
                                   positive_list)

MODEL_HELP = ("a saved robustlab model (folder or .safetensors), catalog:NAME (robustlab models list), a TorchScript "
              "(.pt) or ONNX (.onnx) file, or your own factory 'package.module:attr' / 'path/to/file.py:attr' returning "
              "an nn.Module (with --weights)")


@dataclass(frozen=True)
class Option:
    """One option of the shared vocabulary: its flags (the spelling first), how its value is parsed
    and what it means (the start of its help in every subcommand)."""

    flags: tuple[str, ...]
    help: str
    type: Optional[Callable[[str], Any]] = None
    action: Optional[str] = None
    choices: Optional[tuple[str, ...]] = None
    metavar: Optional[str] = None


#: The shared options (issue 21, "one vocabulary"), by argparse dest. A subcommand adds one with
#: :func:`add_option`, which may only set its default, append a note to the help, keep an old
#: alias or mark an old spelling deprecated; tests/test_cli_options.py walks the parsers against it.
SHARED: dict[str, Option] = {
    "model": Option(("--model",), MODEL_HELP),
    "dataset": Option(("--dataset",), "a dataset name, a .npz file, an image folder (one sub-folder per class) or "
                                      "CIFAR-10/100 binary files"),
    "split": Option(("--split",), "dataset split", choices=("train", "test")),
    "root": Option(("--root",), "folder to look for the dataset in first (default $ROBUSTLAB_DATA, then the cache "
                                "and offline sources)"),
    "n_images": Option(("--n-images",), "use the first N images of the split", type=positive_int, metavar="N"),
    "samples": Option(("--samples",), "Monte Carlo noise samples per image", type=positive_int, metavar="N"),
    "dp_eps": Option(("--dp-eps",), "PixelDP epsilon, in (0, 1] for Gaussian noise", type=positive_float),
    "device": Option(("--device",), "cpu, cuda, cuda:1, mps, ... (default cpu; under torchrun cuda means "
                                    "cuda:LOCAL_RANK)"),
    "batch_size": Option(("--batch-size",), "batch size", type=positive_int, metavar="N"),
    "seed": Option(("--seed",), "seed of every random draw (noise, random starts, sampling)", type=nonnegative_int),
    "resume": Option(("--resume",), "continue an interrupted run with the same arguments from what it left in --out",
                     action="store_true"),
    "no_progress": Option(("--no-progress",), "no progress bar", action="store_true"),
    "out": Option(("--out",), "where the results go"),
}


class _Store(argparse.Action):
    """argparse's ``store``, with a note when an old spelling (``deprecated``) is used: on stderr
    (``<prog>: warning: ...``) and as a :class:`DeprecationWarning`, once per parser (and so once per
    command line: :func:`robustlab.cli.main` builds its parser afresh)."""

    def __init__(self, option_strings: Sequence[str], dest: str, deprecated: Sequence[str] = (), **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.deprecated = tuple(deprecated)
        self._noted = False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        if option_string in self.deprecated and not self._noted:
            self._noted = True
            note = (f"{option_string} is deprecated and will be removed in the next release; write "
                    f"{self.option_strings[0]}")
            print(f"{parser.prog}: warning: {note}", file=sys.stderr)
            warnings.warn(note, DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


_UNSET: Any = object()


def add_option(p: "argparse.ArgumentParser | argparse._ArgumentGroup", dest: str, *, default: Any = _UNSET,
               required: bool = False, note: str = "", aliases: Sequence[str] = (),
               deprecated: Sequence[str] = ()) -> argparse.Action:
    """Add the shared option ``dest`` (:data:`SHARED`) to ``p``, the same way in every subcommand.

    ``note`` is appended to the shared help (the subcommand's default, what exactly it writes);
    ``aliases`` are other spellings that keep working (``--n`` for ``--n-images``); ``deprecated``
    ones work for one more release with a note on stderr."""
    opt = SHARED[dest]
    help_text = opt.help + (f" ({note})" if note else "")
    if aliases:
        help_text += (f" [{', '.join(aliases)}: the same; under torchrun write {opt.flags[0]}, torchrun reads a "
                      f"bare --n as an option of its own]" if "--n" in aliases else f" [also {', '.join(aliases)}]")
    if deprecated:
        help_text += f" [{', '.join(deprecated)}: old spelling, deprecated]"
    flags = (*opt.flags, *aliases, *deprecated)
    if opt.action == "store_true":
        return p.add_argument(*flags, dest=dest, action="store_true", help=help_text)
    kwargs: dict[str, Any] = {"dest": dest, "help": help_text, "type": opt.type, "choices": opt.choices,
                              "metavar": opt.metavar, "required": required}
    if default is not _UNSET:
        kwargs["default"] = default
    if deprecated:
        kwargs.update(action=_Store, deprecated=tuple(deprecated))
    return p.add_argument(*flags, **kwargs)


def add_data_args(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    """``--dataset`` (default: the model's), ``--split`` (default test) and ``--root``."""
    add_option(p, "dataset", default=None, note="default: the dataset in the model's metadata")
    if split:
        add_option(p, "split", default="test", note="default test")
    add_option(p, "root", default=None)


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model`` and the bring-your-own-model options."""
    add_option(p, "model", required=required)
    byo = p.add_argument_group("your own model (docs/byo.md)")
    byo.add_argument("--weights", default=None,
                     help="state dict for a factory --model: .safetensors, or a torch.save(state_dict) file read "
                          "with torch.load(weights_only=True); other pickles are refused")
    byo.add_argument("--mean", type=float_list, default=None,
                     help="per-channel mean the network expects its inputs standardised with (pixel units in [0, 1], "
                          "e.g. 0.4914,0.4822,0.4465); wraps the model in robustlab's Normalize. Omit it when the "
                          "network normalises inside")
    byo.add_argument("--std", type=positive_list, default=None, help="per-channel std, with --mean")
    byo.add_argument("--model-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="keyword argument of the factory, e.g. --model-option num_classes=10 (repeatable)")


#: Images with at least this many values get their batch size checked against the memory budget even
#: without --max-memory (a 64x64 colour image; MNIST and CIFAR batches are far below any machine's memory).
MEMORY_CHECK_FROM = 64 * 64 * 3


def add_memory_arg(p: argparse.ArgumentParser) -> None:
    """``--max-memory``: caps the batch size (robustlab.memory)."""
    p.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE",
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
        probe_writable(folder)
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
