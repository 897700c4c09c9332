"""Model files: safetensors weights plus JSON metadata. Never a pickle.

A model directory holds ``model.safetensors`` (every parameter and buffer) and ``metadata.json``
(architecture, dataset, normalisation, training configuration, metrics, versions and the SHA-256
of the weights). A single ``.safetensors`` file may carry the same metadata in its header.
Loading rebuilds the architecture from the metadata, checks the hash and the tensor names and
shapes, and reports any problem with the file's name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from robustlab._io import atomic_write_bytes, atomic_write_text

WEIGHTS = "model.safetensors"
METADATA = "metadata.json"
FORMAT = "robustlab-model"
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _state_bytes(model: nn.Module) -> bytes:
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return st_save(state)


def build_metadata(model: nn.Module, metadata: Optional[dict]) -> dict:
    from robustlab import __version__

    meta = dict(getattr(model, "metadata", None) or {})
    meta.update(metadata or {})
    arch = getattr(model, "arch_config", None)
    if arch is not None:
        meta["architecture"] = dict(arch)
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        robustlab_version=__version__,
        torch_version=torch.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return meta


def save(model: nn.Module, path: "str | os.PathLike[str]", metadata: Optional[dict] = None) -> Path:
    """Write ``model`` to ``path`` (a directory, or a file ending in ``.safetensors``), atomically."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    meta = build_metadata(model, metadata)
    if path.suffix == ".safetensors":
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        atomic_write_bytes(path, st_save(state, metadata={"robustlab": json.dumps(meta, default=_json_default)}))
        return path
    blob = _state_bytes(model)
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / WEIGHTS, blob)
    atomic_write_text(path / METADATA, json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def _refuse_pickles(file: Path) -> None:
    head = file.read_bytes()[:4] if file.is_file() else b""
    if file.suffix in _PICKLE_SUFFIXES or head[:1] == b"\x80" or head[:2] == b"PK":
        raise ValueError(
            f"{file} looks like a pickle / torch.save file; robustlab only reads safetensors (unpickling can run "
            "arbitrary code). Convert a trusted state dict with robustlab.models.import_state_dict(model, path), "
            "which uses torch.load(weights_only=True)"
        )


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict]:
    _refuse_pickles(file)
    raw = file.read_bytes()
    try:
        state = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{file} is not a valid safetensors file ({exc}); it may be truncated or corrupt") from exc
    header_meta: dict = {}
    try:
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        if "robustlab" in header.get("__metadata__", {}):
            header_meta = json.loads(header["__metadata__"]["robustlab"])
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{file} has an unreadable metadata header: {exc}") from exc
    return state, header_meta


def load_metadata(path: "str | os.PathLike[str]") -> dict:
    """The metadata of a saved model (directory or ``.safetensors`` file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.is_dir():
        meta_file = path / METADATA
        if not meta_file.is_file():
            raise ValueError(f"model directory {path} has no {METADATA}")
        try:
            meta = json.loads(meta_file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta_file} is not valid JSON: {exc}") from exc
    else:
        _, meta = _read_safetensors(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} has no robustlab metadata (expected format {FORMAT!r})")
    return meta


def read_state(path: "str | os.PathLike[str]") -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and metadata of a saved model, with the weights' SHA-256 checked."""
    path = Path(path)
    meta = load_metadata(path)
    if path.is_dir():
        weights = path / WEIGHTS
        if not weights.is_file():
            raise ValueError(f"model directory {path} has no {WEIGHTS}")
        _refuse_pickles(weights)
        blob = weights.read_bytes()
        want = meta.get("weights_sha256")
        got = hashlib.sha256(blob).hexdigest()
        if want is not None and got != want:
            raise ValueError(f"{weights} has SHA-256 {got}, but {METADATA} records {want}: the file was changed or corrupted")
        state, _ = _read_safetensors(weights)
    else:
        state, _ = _read_safetensors(path)
    return state, meta


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> nn.Module:
    """Load ``state`` into ``model``, turning name/shape mismatches into errors that name ``source``."""
    own = model.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{source} does not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{source} has tensors of the wrong shape: {'; '.join(bad[:5])}")
    model.load_state_dict(state, strict=strict)
    return model


def import_state_dict(model: nn.Module, path: "str | os.PathLike[str]", strict: bool = True) -> nn.Module:
    """Load a trusted ``torch.save`` state dict into ``model`` with ``torch.load(weights_only=True)``
    (tensors and plain containers only; no code runs), e.g. to convert it with :func:`save`."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise ValueError(f"cannot read {path} as a weights-only state dict: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return load_state_dict_into(model, state, str(path), strict)
