"""Checkpoints of a training run, without pickle: optimizer tensors in safetensors, the rest in JSON.

Layout under ``out/`` (written by the main process only):

- ``checkpoint/``: the last finished epoch: its model, ``train_state.safetensors`` (optimizer
  tensors) and ``train_state.json`` (epoch, optimisation step, history, best epoch, the rest of
  the optimizer state, configuration). Written into a temporary folder and swapped in with
  renames, so a crash leaves the previous complete checkpoint;
- ``best/``: the best epoch's model (same swap).

:func:`check_resumable` refuses to continue a run whose configuration differs in one of
:data:`RESUME_KEYS` (``epochs`` may change).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.models.checkpoint import load_state_dict_into, read_state, save

_logger = logging.getLogger("robustlab.train")

CHECKPOINT, BEST = "checkpoint", "best"
TRAIN_STATE = "train_state"
#: Configuration entries that must match to resume a run (``epochs`` may change).
RESUME_KEYS = ("adversary", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "seed",
               "eps_warmup_epochs", "train_size")


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """``opt.state_dict()`` split into tensors (``"<param id>.<name>"`` -> CPU tensor) and a JSON
    part (the non-tensor per-parameter values and the param groups)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    values: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"{pid}.{key}"] = val.detach().to("cpu").contiguous().clone()
            else:
                values[f"{pid}.{key}"] = val
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"values": values, "param_groups": groups}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_state` (tuples such as Adam's ``betas`` are restored)."""
    state: dict[int, dict] = {}
    for key, val in list(tensors.items()) + list(meta["values"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    groups = []
    for saved, current in zip(meta["param_groups"], opt.state_dict()["param_groups"]):
        groups.append({k: (tuple(v) if isinstance(current.get(k), tuple) else v) for k, v in saved.items()})
    if len(groups) != len(opt.param_groups):
        raise ValueError(f"the checkpoint has {len(meta['param_groups'])} parameter groups, the optimizer "
                         f"{len(opt.param_groups)}")
    opt.load_state_dict({"state": state, "param_groups": groups})


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace folder ``target`` with the complete folder ``tmp`` by renames: at every moment
    either ``target`` or ``.<name>.old`` is a complete copy."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(out: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> Path:
    """Write ``out/checkpoint/``: the model, ``train_state.safetensors`` (optimizer tensors) and
    ``train_state.json`` (``state`` plus the optimizer's JSON part), swapped in atomically."""
    tmp = out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp, {"training": state["config"], "epoch": state["epoch"]})
    tensors, opt_meta = optimizer_state(opt)
    atomic_write_bytes(tmp / f"{TRAIN_STATE}.safetensors", st_save(tensors))
    atomic_write_text(tmp / f"{TRAIN_STATE}.json", json.dumps({**state, "optimizer": opt_meta}, indent=1) + "\n")
    _swap_in(tmp, out / CHECKPOINT)
    return out / CHECKPOINT


def _find_checkpoint(out: Path) -> Optional[Path]:
    for folder in (out / CHECKPOINT, out / f".{CHECKPOINT}.old"):
        if (folder / f"{TRAIN_STATE}.json").is_file():
            return folder
    return None


def load_checkpoint(out: Path, model: nn.Module, opt: torch.optim.Optimizer) -> Optional[dict]:
    """Restore model and optimizer from ``out``'s last checkpoint; returns its train state
    (``epoch`` = finished epochs, ``history``, ...) or None when there is none."""
    folder = _find_checkpoint(out)
    if folder is None:
        return None
    state_file = folder / f"{TRAIN_STATE}.json"
    try:
        state = json.loads(state_file.read_text())
        tensors = st_load((folder / f"{TRAIN_STATE}.safetensors").read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resume from {folder}: {exc}") from exc
    weights, _ = read_state(folder)
    load_state_dict_into(model, weights, source=str(folder))
    load_optimizer_state(opt, tensors, state.pop("optimizer"))
    return state


def save_best(out_dir: Path, model: nn.Module, config: dict, epoch: int) -> None:
    """Write ``out_dir/best/`` (the model of 1-based ``epoch``), swapped in atomically."""
    tmp = out_dir / f".{BEST}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp, {"training": config, "epoch": epoch})
    _swap_in(tmp, out_dir / BEST)


def check_resumable(out_dir: Path, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume when a :data:`RESUME_KEYS` entry differs; warn when ``epochs`` does."""
    diff = [f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"cannot resume {out_dir}: the run was started with a different configuration "
                         f"({'; '.join(diff)}); use the same settings or another out directory")
    if saved.get("epochs") != now.get("epochs"):
        _logger.warning("resuming %s with epochs=%s instead of %s: the learning-rate schedule is stretched",
                        out_dir, now.get("epochs"), saved.get("epochs"))
