"""Model files: safetensors weights plus JSON metadata. Never a pickle.

Two forms:

- a directory ``path/`` with ``model.safetensors`` (every parameter and buffer, contiguous CPU
  tensors) and ``metadata.json`` (architecture, dataset, normalisation, training configuration,
  metrics, robustlab and torch versions, creation time and ``weights_sha256``, the SHA-256 of
  the weights file);
- a single ``path.safetensors`` whose header metadata holds the same JSON under the key
  ``"robustlab"``, with ``data_sha256`` the SHA-256 of the tensor data (the bytes after the header).

Every file is written atomically (temporary sibling + ``os.replace``). Loading rebuilds the
architecture from the metadata through the registry, checks the hash, the tensor names and
shapes, and names the file and the problem in every error. Pickles (``torch.save`` files) are
refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.models.metadata import check_metadata

WEIGHTS = "model.safetensors"
METADATA = "metadata.json"
FORMAT = "robustlab-model"
FORMAT_VERSION = 1
HEADER_KEY = "robustlab"
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"})

PathLike = Union[str, "os.PathLike[str]"]
StateDict = dict[str, torch.Tensor]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0:
        return obj.item()  # numpy scalars
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"metadata value {obj!r} of type {type(obj).__name__} is not JSON serialisable")


def _dumps(meta: Mapping[str, Any], **kwargs: Any) -> str:
    try:
        return json.dumps(meta, default=_json_default, **kwargs)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON serialisable: {exc}") from exc


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (same state-dict names)."""
    inner = getattr(model, "module", None)
    wrapped = type(model).__name__ in ("DistributedDataParallel", "DataParallel")
    return inner if wrapped and isinstance(inner, nn.Module) else model


def cpu_state(model: nn.Module) -> StateDict:
    """The state dict (parameters and buffers) as contiguous CPU tensors that own their memory
    (tied or shared tensors are copied apart, as safetensors requires)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in _unwrap(model).state_dict().items()}


def _header(raw: bytes) -> tuple[int, dict]:
    """(header length, parsed header) of safetensors bytes; ValueError when malformed."""
    if len(raw) < 8:
        raise ValueError("shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if 8 + n > len(raw):
        raise ValueError(f"the header claims {n} bytes but the file has {len(raw) - 8} after the length")
    header = json.loads(raw[8 : 8 + n])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return n, header


def build_metadata(model: nn.Module, metadata: Optional[Mapping[str, Any]]) -> dict:
    """The metadata :func:`save` writes: the model's own ``.metadata``, updated with ``metadata``,
    its ``arch_config`` as ``"architecture"`` and the format / version / time stamps."""
    from robustlab import __version__

    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    inner = _unwrap(model)
    meta = dict(getattr(inner, "metadata", None) or {})
    meta.update(metadata or {})
    arch = getattr(inner, "arch_config", None)
    if arch is not None:
        meta["architecture"] = dict(arch)
        meta["normalization"] = {"mean": list(arch["mean"]), "std": list(arch["std"])}
    for key in ("weights_sha256", "data_sha256"):
        meta.pop(key, None)
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        robustlab_version=__version__,
        torch_version=torch.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return meta


def save(model: nn.Module, path: PathLike, metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically; returns ``path``.

    ``path`` is a directory (created; ``model.safetensors`` + ``metadata.json``) or a file whose
    name ends in ``.safetensors`` (metadata in its header). Any ``nn.Module`` can be saved;
    :func:`load` rebuilds those with a registered architecture (models from
    :func:`~robustlab.models.create`), others are loaded with :func:`load_state_dict_into`.
    ``metadata`` (JSON-serialisable) is merged over the model's own ``.metadata``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    meta = build_metadata(model, metadata)
    state = cpu_state(model)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"refusing to write {path}: robustlab writes safetensors; use a directory or a .safetensors name")
    if path.suffix == ".safetensors":
        plain = st_save(state)
        n, _ = _header(plain)
        meta["data_sha256"] = hashlib.sha256(plain[8 + n :]).hexdigest()
        atomic_write_bytes(path, st_save(state, metadata={HEADER_KEY: _dumps(meta, sort_keys=True)}))
        return path
    blob = st_save(state)
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    text = _dumps(meta, indent=2, sort_keys=True) + "\n"
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / WEIGHTS, blob)
    atomic_write_text(path / METADATA, text)
    return path


def _refuse_pickle(file: Path) -> None:
    """ValueError if ``file`` is (named like) a pickle or a ``torch.save`` zip archive.

    A safetensors file starts with its header length (8 bytes, little endian) followed by ``{``;
    a pickle starts with 0x80 (protocol >= 2) and a ``torch.save`` archive with ``PK\\x03\\x04``.
    The safetensors layout is checked first, since a header length can itself end in 0x80.
    """
    head = b""
    size = 0
    if file.is_file():
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(9)
    looks_safetensors = len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size
    pickled = not looks_safetensors and (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04")
    if file.suffix.lower() in PICKLE_SUFFIXES or pickled:
        raise ValueError(
            f"{file} looks like a pickle / torch.save file; robustlab only reads safetensors, because unpickling "
            "can run arbitrary code. If you trust it and it holds a plain state dict, convert it with "
            "robustlab.models.import_state_dict(model, path) (torch.load(weights_only=True)) and then "
            "robustlab.models.save(model, 'out/')"
        )


def _read_safetensors(file: Path, raw: Optional[bytes] = None) -> tuple[StateDict, dict]:
    """Tensors and robustlab header metadata ({} if none) of a ``.safetensors`` file (whose
    bytes may already have been read into ``raw``)."""
    _refuse_pickle(file)
    raw = file.read_bytes() if raw is None else raw
    try:
        n, header = _header(raw)
        state = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not a valid safetensors file ({exc}); it may be truncated or corrupt") from exc
    meta: dict = {}
    text = (header.get("__metadata__") or {}).get(HEADER_KEY)
    if text is not None:
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{file} has unreadable robustlab metadata in its header: {exc}") from exc
        want = meta.get("data_sha256")
        if want is not None:
            got = hashlib.sha256(raw[8 + n :]).hexdigest()
            if got != want:
                raise ValueError(
                    f"{file}: the tensor data has SHA-256 {got}, but its header records {want}: the file was changed "
                    "or corrupted"
                )
    return state, meta


def load_metadata(path: PathLike) -> dict:
    """The metadata of a saved model (directory or ``.safetensors`` file), without the weights check."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.is_dir():
        meta_file = path / METADATA
        if not meta_file.is_file():
            raise ValueError(f"model directory {path} has no {METADATA} (a robustlab model directory holds {WEIGHTS} "
                             f"and {METADATA})")
        try:
            meta = json.loads(meta_file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta_file} is not valid JSON: {exc}") from exc
    else:
        _, meta = _read_safetensors(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} has no robustlab metadata (expected format {FORMAT!r}); for plain safetensors "
                         "weights use robustlab.models.load_state_dict_into(model, path)")
    return check_metadata(meta, str(path / METADATA if path.is_dir() else path))


def read_state(path: PathLike) -> tuple[StateDict, dict]:
    """Weights and metadata of a saved model, with the SHA-256 checked."""
    path = Path(path)
    if path.is_dir():
        meta = load_metadata(path)
        weights = path / WEIGHTS
        if not weights.is_file():
            raise ValueError(f"model directory {path} has no {WEIGHTS}")
        _refuse_pickle(weights)
        blob = weights.read_bytes()
        want = meta.get("weights_sha256")
        got = hashlib.sha256(blob).hexdigest()
        if want is not None and got != want:
            raise ValueError(f"{weights} has SHA-256 {got}, but {METADATA} records {want}: the file was changed "
                             "or corrupted")
        state, _ = _read_safetensors(weights, blob)
        return state, meta
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    state, meta = _read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has no robustlab metadata (expected format {FORMAT!r}); for plain safetensors "
                         "weights use robustlab.models.load_state_dict_into(model, path)")
    return state, check_metadata(meta, str(path))


def _read_any_state(path: Path) -> StateDict:
    """Tensors of a robustlab model directory or of any ``.safetensors`` file."""
    if path.is_dir():
        return read_state(path)[0]
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}")
    return _read_safetensors(path)[0]


def load_state_dict_into(
    model: nn.Module,
    state: "Mapping[str, torch.Tensor] | PathLike",
    *,
    strict: bool = True,
    source: Optional[str] = None,
) -> nn.Module:
    """Copy weights into ``model`` (any ``nn.Module``, e.g. one robustlab cannot rebuild) from a
    state dict or a path (a model directory or a ``.safetensors`` file). Missing or unexpected
    names (when ``strict``) and shape mismatches raise ValueError naming the source."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(state, (str, os.PathLike)):
        source = source or str(state)
        state = _read_any_state(Path(state))
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"state must be a path or a mapping of names to tensors, got {type(state).__name__}")
    source = source or "the state dict"
    target = _unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(
            f"{source} does not match the model: {len(missing)} missing tensors {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}"
        )
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{source} has {len(bad)} tensors of the wrong shape: {'; '.join(bad[:5])}")
    target.load_state_dict(dict(state), strict=strict)
    return model


def import_state_dict(model: nn.Module, path: PathLike, *, strict: bool = True) -> nn.Module:
    """Load a trusted ``torch.save`` state dict into ``model`` with ``torch.load(weights_only=True)``
    (tensors and plain containers only; no arbitrary code runs), e.g. to convert it with :func:`save`."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, ...) for bad files
        raise ValueError(f"cannot read {path} as a weights-only state dict: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a common training-checkpoint layout
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return load_state_dict_into(model, state, strict=strict, source=str(path))


def load(path: PathLike, *, map_location: "str | torch.device" = "cpu", strict: bool = True) -> nn.Module:
    """Rebuild a saved model from its metadata and weights.

    The architecture must be known to the registry (:func:`~robustlab.models.architectures`);
    returns the model on ``map_location``, in eval mode, with ``.metadata`` (the saved dict).
    """
    from robustlab.models.registry import ARCHITECTURES, create

    state, meta = read_state(path)
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
        name = arch.get("name") if isinstance(arch, dict) else None
        raise ValueError(
            f"{path}: its metadata names no architecture robustlab can rebuild ({name!r}; known: "
            f"{', '.join(ARCHITECTURES)}). Build your nn.Module and use "
            "robustlab.models.load_state_dict_into(model, path), or register the builder with "
            "robustlab.models.register_architecture"
        )
    try:
        model = create(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                       input_size=arch["input_size"], mean=arch["mean"], std=arch["std"])
    except KeyError as exc:
        raise ValueError(f"{path}: its metadata's architecture record lacks the field {exc} "
                         f"(it has {sorted(arch)})") from exc
    weights = Path(path) / WEIGHTS if Path(path).is_dir() else Path(path)
    load_state_dict_into(model, state, strict=strict, source=str(weights))
    model.metadata = meta
    return model.to(map_location).eval()
