"""One training loop for every defence: the adversary decides what each batch's loss is.

``train(model, data, adversary=...)`` runs seeded mini-batch SGD or Adam with a learning-rate
schedule, evaluates after every epoch, keeps the best epoch (by robust validation accuracy when an
``evaluate_fn`` reports one, else clean accuracy), checkpoints every epoch atomically and resumes
exactly where it stopped: same seed, same weights, bit for bit on the CPU.

Randomness: the shuffling order and the adversary's generator of epoch ``e`` are drawn from
``torch.Generator`` seeded with ``(seed, e)``, so resuming needs no saved RNG state and the global
RNG is never touched.

Checkpoint layout under ``out/``: the final model (``model.safetensors`` + ``metadata.json``);
``checkpoint/`` with the last finished epoch's model, optimizer state (safetensors) and
``train_state.json``; ``best/`` with the best epoch's model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from robustlab._checks import check_logits, check_positive
from robustlab._io import atomic_write_text
from robustlab.defenses.adversaries import Adversary, Standard
from robustlab.models.checkpoint import read_state, save
from robustlab.models.metrics import accuracy, as_tensors

log = logging.getLogger("robustlab.train")

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step", "onecycle")
EvaluateFn = Callable[[nn.Module, Any], dict]


@dataclass
class TrainResult:
    """What a training run produced: the model (best epoch if selected), per-epoch history and
    the final metrics written into the model's metadata."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    metrics: dict = field(default_factory=dict)
    out: Optional[Path] = None
    stopped_early: bool = False


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` of ``total``.

    cosine: ``(1 + cos(pi t)) / 2``; step: x0.1 at 50% and 75%; onecycle: linear up to the peak at
    40% then linearly down to 0 (the schedule of Wong et al. 2020); constant: 1.
    """
    t = step / max(total, 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.01 if t >= 0.75 else 0.1 if t >= 0.5 else 1.0
    if schedule == "onecycle":
        return t / 0.4 if t < 0.4 else max(0.0, (1.0 - t) / 0.6)
    return 1.0


def _make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _save_optimizer(opt: torch.optim.Optimizer, folder: Path) -> None:
    """Optimizer state without pickle: tensors to safetensors, the rest to JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    save_file(tensors, str(folder / "optimizer.safetensors"))
    atomic_write_text(folder / "optimizer.json", json.dumps({"scalars": scalars, "param_groups": sd["param_groups"]}))


def _load_optimizer(opt: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict] = {}
    for key, val in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + epoch) * 7 + stream)


def _validate_setup(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> int:
    """One forward pass before any epoch: logits shape and channel count must fit."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"training images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    arch = getattr(model, "arch_config", None)
    if arch is not None and arch.get("in_channels") not in (None, images.shape[1]):
        raise ValueError(
            f"the data has {images.shape[1]} channels but the model was built for {arch['in_channels']} "
            f"(dataset and architecture do not match)"
        )
    probe = images[:2].to(device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except RuntimeError as exc:
        raise ValueError(f"the model cannot process inputs of shape {tuple(probe.shape[1:])}: {exc}") from exc
    finally:
        model.train(was)
    check_logits(out, probe.shape[0], "the model's output")
    k = out.shape[1]
    if int(labels.max()) >= k or int(labels.min()) < 0:
        raise ValueError(f"labels range over [{int(labels.min())}, {int(labels.max())}] but the model has {k} outputs")
    return k


def train(
    model: nn.Module,
    train_data: Any,
    *,
    adversary: Optional[Adversary] = None,
    epochs: int = 1,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: Optional[float] = None,
    momentum: float = 0.9,
    weight_decay: Optional[float] = None,
    schedule: str = "cosine",
    val_data: Any = None,
    evaluate_fn: Optional[EvaluateFn] = None,
    select_best: bool = True,
    out: "str | os.PathLike[str] | None" = None,
    resume: bool = False,
    seed: int = 0,
    eps_warmup_epochs: float = 0.0,
    progress: bool = True,
    device: "str | torch.device | None" = None,
    metadata: Optional[dict] = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` (a Dataset or ``(images, labels)``) in place.

    Args:
        adversary: how each batch's loss is made (:class:`Standard` when None).
        optimizer: ``"adam"`` (default lr 1e-3, no weight decay) or ``"sgd"`` (lr 0.1, Nesterov
            momentum, weight decay 5e-4).
        schedule: ``"cosine"``, ``"step"``, ``"onecycle"`` or ``"constant"``, per optimisation step.
        val_data: evaluated after every epoch (clean accuracy), and by ``evaluate_fn``.
        evaluate_fn: ``f(model, val_data) -> dict``; a ``"robust_accuracy"`` entry selects the best
            epoch, ``"stop": True`` ends training (e.g. catastrophic overfitting), keeping the best.
        out: directory for checkpoints and the final model; ``resume`` continues from it.
        eps_warmup_epochs: ramp the adversary's eps linearly from 0 over this many epochs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive(epochs, "epochs", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    check_positive(eps_warmup_epochs, "eps_warmup_epochs", allow_zero=True)
    if resume and out is None:
        raise ValueError("resume=True needs the out directory of the run to continue")
    adversary = adversary if adversary is not None else Standard()
    if not isinstance(adversary, Adversary):
        raise TypeError(f"adversary must be a robustlab.defenses.Adversary, got {type(adversary).__name__}")
    images, labels = as_tensors(train_data)
    dev = torch.device(device) if device is not None else next(iter(model.parameters()), images).device
    model.to(dev)
    _validate_setup(model, images, labels, dev)

    lr = float(lr) if lr is not None else (1e-3 if optimizer == "adam" else 0.1)
    wd = float(weight_decay) if weight_decay is not None else (0.0 if optimizer == "adam" else 5e-4)
    opt = _make_optimizer(model, optimizer, lr, momentum, wd)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    config = {
        "adversary": adversary.config(), "epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "lr": lr,
        "momentum": momentum, "weight_decay": wd, "schedule": schedule, "seed": seed, "eps_warmup_epochs": eps_warmup_epochs,
        "train_size": n, "dataset": getattr(train_data, "name", "tensors"),
    }

    out_dir = Path(out) if out is not None else None
    history: list[dict] = []
    start_epoch, best_epoch, best_score = 0, -1, -math.inf
    best_state: Optional[dict] = None
    ck = _latest_checkpoint(out_dir) if resume and out_dir is not None else None
    if ck is not None:
        state, _ = read_state(ck)
        model.load_state_dict(state)
        _load_optimizer(opt, ck)
        saved = json.loads((ck / "train_state.json").read_text())
        if saved["config"]["seed"] != seed or saved["config"]["batch_size"] != batch_size:
            raise ValueError(f"cannot resume {out_dir}: it was started with a different seed or batch size ({saved['config']})")
        start_epoch, history = saved["epoch"] + 1, saved["history"]
        best_epoch, best_score = saved["best_epoch"], saved["best_score"]
        if (out_dir / "best").is_dir():
            best_state = read_state(out_dir / "best")[0]
        log.info("resuming %s from epoch %d of %d", out_dir, start_epoch + 1, epochs)

    stopped_early = False
    t_start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        train_loss = _run_epoch(model, opt, adversary, images, labels, epoch, seed, batch_size, lr, schedule,
                                total_steps, steps_per_epoch, eps_warmup_epochs, dev, progress, epochs)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "seconds": time.perf_counter() - t0}
        if val_data is not None:
            record["val_accuracy"] = accuracy(model, _on_device(val_data, dev))
        extra = evaluate_fn(model, val_data) if evaluate_fn is not None else {}
        record.update({k: v for k, v in extra.items() if k not in ("stop", "reason")})
        history.append(record)
        score = record.get("robust_accuracy", record.get("val_accuracy", -train_loss))
        if score >= best_score:
            best_epoch, best_score = epoch + 1, score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out_dir is not None:
                save(model, out_dir / "best", {"training": config, "epoch": epoch + 1})
        log.info("epoch %d/%d %s", epoch + 1, epochs, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch"))
        if out_dir is not None:
            _checkpoint(model, opt, out_dir, epoch, history, best_epoch, best_score, config)
        if extra.get("stop"):
            stopped_early = True
            log.warning("stopping after epoch %d: %s; keeping the best epoch %d", epoch + 1,
                        extra.get("reason", "evaluate_fn asked to stop"), best_epoch)
            break

    if select_best and best_state is not None and best_epoch != len(history):
        model.load_state_dict(best_state)
    final = history[best_epoch - 1] if select_best and best_epoch >= 1 else (history[-1] if history else {})
    metrics = {k: v for k, v in final.items() if k not in ("seconds",)}
    metrics["train_seconds"] = sum(h["seconds"] for h in history)
    result = TrainResult(model, history, best_epoch, metrics, out_dir, stopped_early)
    if out_dir is not None:
        meta = dict(metadata or {})
        meta.update(training=config, history=history, metrics=metrics, best_epoch=best_epoch, stopped_early=stopped_early)
        meta.setdefault("dataset", getattr(train_data, "name", None) or getattr(model, "metadata", {}).get("dataset"))
        save(model, out_dir, meta)
    log.info("training done in %.1f s", time.perf_counter() - t_start)
    model.eval()
    return result


def _on_device(data: Any, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_tensors(data)
    return x.to(dev), y.to(dev)


def _run_epoch(model, opt, adversary, images, labels, epoch, seed, batch_size, lr, schedule, total_steps,
               steps_per_epoch, warmup, dev, progress, epochs) -> float:
    model.train()
    order = torch.randperm(images.shape[0], generator=_epoch_generator(seed, epoch, 0, torch.device("cpu")))
    gen = _epoch_generator(seed, epoch, 1, dev)
    total, count = torch.zeros((), device=dev), 0
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
    for i in bar:
        idx = order[i * batch_size : (i + 1) * batch_size]
        x, y = images[idx].to(dev, non_blocking=True), labels[idx].to(dev, non_blocking=True)
        step = epoch * steps_per_epoch + i
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(schedule, step, total_steps)
        eps_scale = min(1.0, (epoch + i / steps_per_epoch) / warmup) if warmup > 0 else 1.0
        loss = adversary.loss(model, x, y, generator=gen, eps_scale=eps_scale)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)} at epoch {epoch + 1}, step {i + 1}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * y.shape[0]
        count += y.shape[0]
    opt.zero_grad(set_to_none=True)
    return float(total) / max(count, 1)


def _checkpoint(model, opt, out_dir: Path, epoch: int, history, best_epoch, best_score, config) -> None:
    """Write the whole checkpoint into a fresh folder, then swap it in with renames, so a crash
    leaves the previous complete checkpoint (``checkpoint`` or, mid-swap, ``.checkpoint.old``)."""
    tmp, old, ck = out_dir / ".checkpoint.tmp", out_dir / ".checkpoint.old", out_dir / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp, {"training": config, "epoch": epoch + 1})
    _save_optimizer(opt, tmp)
    atomic_write_text(tmp / "train_state.json", json.dumps({
        "epoch": epoch, "history": history, "best_epoch": best_epoch, "best_score": best_score, "config": config,
    }, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if ck.exists():
        os.replace(ck, old)
    os.replace(tmp, ck)
    shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(out_dir: Path) -> Optional[Path]:
    for folder in (out_dir / "checkpoint", out_dir / ".checkpoint.old"):
        if (folder / "train_state.json").is_file():
            return folder
    return None
