"""Bring your own model: a Python factory, TorchScript, or ONNX (optional), with your own weights.

A model robustlab did not train is any ``nn.Module`` mapping images in [0, 1] (N, C, H, W) to
logits; once loaded it is evaluated exactly like a robustlab model. Sources:

- a **factory**, ``"package.module:attr"`` (imported like any module) or ``"path/to/file.py:attr"``
  (the file is executed as a module: only name files you trust, as with ``python file.py``):
  ``attr`` is a callable returning an ``nn.Module`` (a function or a class, called with
  ``kwargs``) or an ``nn.Module`` instance;
- a **TorchScript** file (``torch.jit.save``; read with ``torch.jit.load``, which rebuilds
  TorchScript code and tensors only, never arbitrary Python objects);
- an **ONNX** file, converted by robustlab's own converter (:mod:`robustlab.models.onnx`; the
  optional ``onnx`` extra installs the ``onnx`` package it reads files with). The module takes
  the file's declared input shape (any input with as many values per sample is reshaped to it).

Weights (``weights=``) are a state dict in a ``.safetensors`` file (any safetensors file; a
robustlab model folder works too) or a ``torch.save`` state dict read with
``torch.load(weights_only=True)`` (tensors and plain containers only: no code runs). Anything
else pickled is refused. Names must match exactly: missing and unexpected keys are listed.
A ``"state_dict"`` / ``"model_state_dict"`` entry of a training checkpoint and the ``module.``
prefix that ``DataParallel`` adds are unwrapped.

Input normalisation: if the network expects standardised inputs, pass ``mean`` / ``std`` (one
value per channel, in [0, 1] pixel units) and it is wrapped in :class:`Normalize`, so attacks and
radii stay in pixel space; a network that normalises internally needs neither.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from robustlab.data.download import sha256_file
from robustlab.models.checkpoint import (
    FORMAT,
    METADATA,
    _read_safetensors,
    load,
    load_state_dict_into,
)
from robustlab.models.normalize import Normalize

PathLike = Union[str, "os.PathLike[str]"]
ONNX_INSTALL = "pip install 'robustlab[onnx]' (the onnx package)"



def _split_spec(spec: str) -> tuple[str, str]:
    """``"pkg.mod:attr"`` / ``"dir/file.py:attr"`` -> (module part, attribute path)."""
    if ":" not in spec:
        raise ValueError(f"model factory {spec!r} must be 'package.module:attr' or 'path/to/file.py:attr'")
    where, attr = spec.rsplit(":", 1)
    if not where or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ValueError(f"model factory {spec!r} must be 'package.module:attr' or 'path/to/file.py:attr' "
                         f"with a Python name after the colon, got attribute {attr!r}")
    return where, attr


def _import_file(file: Path) -> Any:
    if not file.is_file():
        raise FileNotFoundError(f"model factory file {file} does not exist")
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    name = f"robustlab_user_model_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"model factory file {file} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling-free helpers look modules up by name
    folder = str(file.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)  # so the file can import its sibling modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            sys.path.remove(folder)
    return module


def resolve_factory(spec: str) -> Any:
    """The object ``spec`` (``"package.module:attr"`` or ``"path/to/file.py:attr"``) names."""
    if not isinstance(spec, str):
        raise TypeError(f"model factory must be a 'module:attr' string, got {type(spec).__name__}")
    where, attr = _split_spec(spec)
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _import_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise ValueError(f"model factory {spec!r}: no module named {exc.name!r} (is the package installed "
                                 f"or on PYTHONPATH? a file needs its path, e.g. 'models/net.py:{attr}')") from exc
            raise
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ValueError(f"model factory {spec!r}: {where} has no attribute {attr!r} "
                             f"(it defines {', '.join(public[:12]) or 'nothing public'})")
        obj = getattr(obj, part)
    return obj


def _check_normalization(mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
                         ) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(f"mean and std go together: got mean={mean!r}, std={std!r}")
    try:
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"mean and std must be sequences of numbers, got mean={mean!r}, std={std!r}") from exc
    if len(m) != len(s) or not m:
        raise ValueError(f"mean and std need one value per channel, got {len(m)} and {len(s)} values")
    if not all(math.isfinite(v) for v in m + s) or any(v <= 0 for v in s):
        raise ValueError(f"mean must be finite and std finite and > 0, got mean={m}, std={s}")
    return m, s


def read_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: safetensors (any file, or a robustlab model folder) or a
    ``torch.save`` state dict read with ``torch.load(weights_only=True)``; never a general pickle."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no weights at {p}")
    if p.is_dir():
        from robustlab.models.checkpoint import read_state

        return dict(read_state(p)[0])
    with open(p, "rb") as fh:
        head = fh.read(9)
    size = p.stat().st_size
    if p.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"
                                       and 8 + int.from_bytes(head[:8], "little") <= size):
        return dict(_read_safetensors(p)[0])
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... for anything but plain tensors
        raise ValueError(
            f"cannot read weights {p}: it is neither safetensors nor a weights-only torch.save state dict "
            f"({str(exc).splitlines()[0][:200]}); robustlab refuses to unpickle anything else because unpickling "
            "can run arbitrary code. Save the weights with torch.save(model.state_dict(), path) or safetensors"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]  # a training checkpoint holding the state dict under a key
            break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {p} hold a {type(state).__name__}, not a state dict of tensors "
                         "(expected what model.state_dict() returns)")
    return {str(k): v for k, v in state.items()}


def _strip_prefix(state: dict[str, torch.Tensor], own: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DataParallel/DDP adds when the model's own names lack it."""
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _apply_weights(net: nn.Module, weights: PathLike, strict: bool) -> str:
    state = _strip_prefix(read_weights(weights), net.state_dict())
    load_state_dict_into(net, state, strict=strict, source=f"weights {weights}")
    return sha256_file(Path(weights)) if Path(weights).is_file() else ""


def _finish(net: nn.Module, norm: Optional[tuple[tuple[float, ...], tuple[float, ...]]], meta: dict,
            map_location: "str | torch.device") -> nn.Module:
    if norm is not None:
        net = Normalize(net, *norm)
        meta["normalization"] = {"mean": list(norm[0]), "std": list(norm[1]), "by": "robustlab Normalize"}
    else:
        meta.setdefault("normalization", "inside the model (none declared)")
    net.metadata = meta  # type: ignore[assignment]
    return net.to(map_location).eval()


def from_factory(
    factory: "str | Callable[..., nn.Module] | nn.Module",
    *,
    weights: Optional[PathLike] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    kwargs: Optional[Mapping[str, Any]] = None,
    strict: bool = True,
    map_location: "str | torch.device" = "cpu",
) -> nn.Module:
    """Build a model with ``factory(**kwargs)``, load ``weights`` into it, wrap it in
    :class:`Normalize` when ``mean`` / ``std`` are given; returns it in eval mode with ``.metadata``.

    ``factory``: ``"package.module:attr"``, ``"path/to/file.py:attr"``, a callable or a module.
    """
    norm = _check_normalization(mean, std)
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a dict of factory arguments, got {type(kwargs).__name__}")
    label = factory if isinstance(factory, str) else getattr(factory, "__qualname__", type(factory).__name__)
    obj = resolve_factory(factory) if isinstance(factory, str) else factory
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ValueError(f"model factory {label!r} is an nn.Module instance; it takes no arguments, got {dict(kwargs)}")
        net = obj
    elif callable(obj):
        try:
            net = obj(**dict(kwargs or {}))
        except TypeError as exc:
            raise ValueError(f"model factory {label!r} cannot be called with arguments {dict(kwargs or {})}: {exc}") from exc
        if not isinstance(net, nn.Module):
            raise TypeError(f"model factory {label!r} returned a {type(net).__name__}; expected a torch.nn.Module")
    else:
        raise TypeError(f"model factory {label!r} is a {type(obj).__name__}; expected a callable returning an "
                        "nn.Module (a function or class) or an nn.Module")
    meta: dict[str, Any] = {"source": "factory", "factory": str(label), "factory_kwargs": dict(kwargs or {})}
    if weights is not None:
        meta["weights"] = str(weights)
        meta["weights_sha256"] = _apply_weights(net, weights, strict)
    return _finish(net, norm, meta, map_location)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with ``code/`` entries; a torch.save archive has none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def load_torchscript(path: PathLike, *, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                     map_location: "str | torch.device" = "cpu") -> nn.Module:
    """A TorchScript model (``torch.jit.save``) read with ``torch.jit.load``."""
    p = Path(path)
    norm = _check_normalization(mean, std)
    if not p.is_file():
        raise FileNotFoundError(f"no TorchScript model at {p}")
    if not _is_torchscript(p):
        raise ValueError(f"{p} is not a TorchScript archive (torch.jit.save); a torch.save file is a pickle, which "
                         "robustlab does not load as a model: give the factory that builds the network "
                         "(--model pkg.mod:build or file.py:build) and the state dict as --weights")
    try:
        with warnings.catch_warnings():  # torch 2.13 marks torch.jit deprecated; loading still works
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(p), map_location="cpu")
    except RuntimeError as exc:
        raise ValueError(f"cannot load TorchScript model {p}: {str(exc).splitlines()[0]}") from exc
    meta = {"source": "torchscript", "file": str(p), "weights_sha256": sha256_file(p)}
    return _finish(net, norm, meta, map_location)


def load_onnx(path: PathLike, *, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
              map_location: "str | torch.device" = "cpu") -> nn.Module:
    """An ONNX model converted to an ``nn.Module`` by :func:`robustlab.models.onnx.convert` (the
    ``onnx`` package reads the file; no torchvision)."""
    p = Path(path)
    norm = _check_normalization(mean, std)
    if not p.is_file():
        raise FileNotFoundError(f"no ONNX model at {p}")
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"loading ONNX model {p} needs the onnx package: {ONNX_INSTALL}") from exc
    from robustlab.models.onnx import convert

    net = convert(p)
    meta = {"source": "onnx", "file": str(p), "weights_sha256": sha256_file(p), "input_shape": list(net.input_shape),
            "opset": net.opset}
    return _finish(net, norm, meta, map_location)


def _is_robustlab_model(p: Path) -> bool:
    if p.is_dir():
        return (p / METADATA).is_file()
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        _, meta = _read_safetensors(p)
    except ValueError:
        return False
    return meta.get("format") == FORMAT


def looks_like_factory(spec: str) -> bool:
    """Whether a ``--model`` value names a factory (``x:attr`` that is not an existing path)."""
    if Path(spec).exists() or ":" not in spec:
        return False
    where, attr = spec.rsplit(":", 1)
    return bool(where) and bool(attr) and not (len(where) == 1 and where.isalpha())  # not a Windows drive


def load_external(
    model: "str | os.PathLike[str]",
    *,
    weights: Optional[PathLike] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    kwargs: Optional[Mapping[str, Any]] = None,
    strict: bool = True,
    map_location: "str | torch.device" = "cpu",
) -> nn.Module:
    """Any model a user points at, by what ``model`` is:

    - ``"catalog:NAME"``: a model of :mod:`robustlab.models.catalog` (fetched on first use);
    - a saved robustlab model (folder or ``.safetensors`` with robustlab metadata): :func:`load`;
    - ``"package.module:attr"`` / ``"path/to/file.py:attr"``: :func:`from_factory` (with ``weights``);
    - a ``.onnx`` file: :func:`load_onnx`; any other file: :func:`load_torchscript`.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or a 'module:attr' string, got {type(model).__name__}")
    spec = str(model)
    if spec.startswith("catalog:"):  # a catalogue model (robustlab.models.catalog): weights and normalisation pinned
        from robustlab.models import catalog

        if weights is not None or mean is not None or std is not None or kwargs:
            raise ValueError(f"{spec} is a catalogue model with its own weights and normalisation; drop "
                             "--weights / --mean / --std / --model-option")
        return catalog.load(spec, map_location=map_location)
    if looks_like_factory(spec):
        return from_factory(spec, weights=weights, mean=mean, std=std, kwargs=kwargs, strict=strict,
                            map_location=map_location)
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"no model at {spec} (expected a robustlab model folder, a TorchScript or ONNX file, "
                                "or a factory 'package.module:attr' / 'path/to/file.py:attr')")
    if kwargs:
        raise ValueError(f"model arguments {dict(kwargs)} only apply to a factory ('module:attr'), not to {spec}")
    if _is_robustlab_model(p):
        if weights is not None:
            raise ValueError(f"{spec} is a saved robustlab model with its own weights; --weights applies to a factory")
        if mean is not None or std is not None:
            raise ValueError(f"{spec} is a saved robustlab model, whose normalisation is recorded inside it; "
                             "mean/std apply to external models")
        return load(p, map_location=map_location, strict=strict)
    if weights is not None:
        raise ValueError(f"weights {weights} need a factory that builds the network ('module:attr'); {spec} is a "
                         "complete model file")
    if p.suffix.lower() == ".onnx":
        return load_onnx(p, mean=mean, std=std, map_location=map_location)
    if p.is_dir():
        raise ValueError(f"{spec} is a folder without {METADATA}; expected a robustlab model folder")
    if p.suffix == ".safetensors":
        raise ValueError(f"{spec} holds weights only (no robustlab metadata): give the factory that builds the network "
                         f"as the model and this file as the weights (--model pkg.mod:build --weights {spec})")
    return load_torchscript(p, mean=mean, std=std, map_location=map_location)
