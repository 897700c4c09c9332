"""One training loop for every defence: the adversary decides what each batch's loss is.

``train(model, data, adversary=...)`` runs seeded mini-batch SGD or Adam with a per-step
learning-rate schedule, evaluates after every epoch, keeps the best epoch (by a robust score when
an ``evaluate_fn`` reports one, else clean validation accuracy), checkpoints every epoch
atomically and resumes where it stopped: same seed, same weights, bit for bit on the CPU.

Randomness. Nothing is drawn from an unseeded source and the caller's global RNG is left as it
was. Epoch ``e`` uses three streams derived from ``(seed, e)``: a CPU ``torch.Generator`` for the
shuffling order, a generator on the model's device passed to the adversary (noise, random
starts), and the global RNG seeded inside ``torch.random.fork_rng`` for the epoch (so dropout and
other global draws inside the model are reproducible too, and the caller's RNG state is restored
afterwards). A checkpoint after epoch ``e`` therefore needs no RNG state to replay epoch ``e + 1``
exactly; the scheme is recorded in ``train_state.json``.

Checkpoint layout under ``out/`` (written by the main process only, ``is_main``):

- ``model.safetensors`` + ``metadata.json``: the final model (the best epoch when selected),
  with training configuration, history and metrics in the metadata;
- ``checkpoint/``: the last finished epoch: its model, ``train_state.safetensors`` (optimizer
  tensors) and ``train_state.json`` (epoch, optimisation step, history, best epoch, the rest of
  the optimizer state, configuration). Written into a temporary folder and swapped in with
  renames, so a crash leaves the previous complete checkpoint;
- ``best/``: the best epoch's model (same swap).

The pieces are separate functions: :func:`epoch_order`, :func:`iterate_batches`,
:func:`train_step`, :func:`run_epoch`, :func:`evaluate_epoch`, :func:`save_checkpoint` /
:func:`load_checkpoint`.

Many processes (``torchrun``; :mod:`robustlab.distributed`): the same ``train()`` call trains
data-parallel with DDP. Every rank walks the same seeded global batches and trains on its shard
with a loss weight that makes the all-reduced gradient the global batch's; adversarial examples are
crafted on the bare module (eval mode), the loss passes go through DDP; rank 0's buffers are
broadcast after every step; metrics are summed over ranks; rank 0 validates (result broadcast) and
alone writes; every rank loads the checkpoint on resume. Per-rank noise streams come from
``(seed, epoch, rank)``, rank 0's being the single-process ones. Details: ``docs/training.md``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab._checks import check_images, check_labels, check_logits, check_positive
from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.attacks.base import eval_mode
from robustlab.defenses.adversaries import Adversary, Standard
from robustlab.models.checkpoint import load_state_dict_into, read_state, save
from robustlab.models.metrics import accuracy, as_tensors

_logger = logging.getLogger("robustlab.train")

#: Optimizers and their default (learning rate, weight decay).
OPTIMIZERS: dict[str, tuple[float, float]] = {"adam": (1e-3, 0.0), "sgd": (0.1, 5e-4)}
SCHEDULES = ("cosine", "step", "onecycle", "constant")
CHECKPOINT, BEST = "checkpoint", "best"
TRAIN_STATE = "train_state"
#: Configuration entries that must match to resume a run (``epochs`` may change).
RESUME_KEYS = ("adversary", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "seed",
               "eps_warmup_epochs", "train_size")

EvaluateFn = Callable[[nn.Module, Any], Mapping[str, Any]]
"""``evaluate_fn(model, val_data) -> dict`` run after every epoch (model in eval mode inside a
no-RNG-side-effect context). Numeric entries go into the epoch's history; ``"score"`` (or else
``"robust_accuracy"``) selects the best epoch instead of the clean validation accuracy;
``"stop": True`` ends training after this epoch (``"reason"`` is logged), keeping the best."""


@dataclass
class TrainResult:
    """What a training run produced.

    ``model`` (trained in place; the best epoch's weights when ``select_best``), ``history`` (one
    dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy`` when the adversary exposes its
    logits, ``val_accuracy``, the ``evaluate_fn`` entries such as ``robust_accuracy``, ``lr``,
    ``seconds``), ``best_epoch`` (1-based), ``metrics`` (the selected epoch's entries plus
    ``test_accuracy``, ``train_seconds``, ``wall_seconds``), ``config`` (the training
    configuration incl. ``adversary.config()``), ``out`` and ``stopped_early``.
    """

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    out: Optional[Path] = None
    stopped_early: bool = False


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based) of ``total``.

    With ``t = step / total``: cosine ``(1 + cos(pi t)) / 2`` (Loshchilov & Hutter 2017,
    arXiv:1608.03983, without restarts); step: x0.1 from 50% and x0.01 from 75% of training;
    onecycle: linear from ``1/total`` up to 1 at 40% of the steps, then linear down to 0 (the
    triangular schedule of Wong et al. 2020, arXiv:2001.03994; the first step is not wasted at
    lr 0); constant: 1.
    """
    total = max(int(total), 1)
    t = step / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.01 if t >= 0.75 else 0.1 if t >= 0.5 else 1.0
    if schedule == "onecycle":
        peak = 0.4 * total
        return min(1.0, (step + 1) / peak) if step < peak else max(0.0, (total - step) / (total - peak))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum (when ``momentum > 0``), over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True); nothing to train")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# Randomness and batches


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """The seed of random stream ``stream`` (0 shuffling, 1 adversary, 2 global/dropout) of
    0-based ``epoch``: distinct for every (epoch, stream) of a run."""
    return ((int(seed) * 1_000_003 + int(epoch)) * 7 + int(stream)) % (2**63)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled sample order of ``epoch`` (a permutation of 0..n-1, drawn on the CPU so it is
    the same on every device and every rank)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, 0)))


def iterate_batches(images: Tensor, labels: Tensor, order: Tensor, batch_size: int,
                    device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches in ``order`` on ``device``; the last batch may be smaller."""
    for i in range(0, order.shape[0], batch_size):
        idx = order[i : i + batch_size].to(images.device)
        yield images[idx].to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)


@contextlib.contextmanager
def _global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """The global RNG (CPU, and CUDA when training there) seeded with ``seed`` inside the
    context and restored to the caller's state afterwards."""
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------
# One step, one epoch, evaluation


class _RouteDDP(nn.Module):
    """What the adversary sees in a distributed run: train-mode forwards go through the
    DistributedDataParallel wrapper (so the backward pass all-reduces the gradients), eval-mode
    forwards (adversarial crafting, which ``eval_mode`` puts the model in) go to the bare module,
    so the attack's input-gradient passes never touch DDP's reducer or broadcast buffers."""

    def __init__(self, ddp: nn.Module) -> None:
        super().__init__()
        self.ddp = ddp

    def forward(self, x: Tensor) -> Tensor:
        return self.ddp(x) if self.training else self.ddp.module(x)


def _autocast(device: torch.device, amp: Optional[str]) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()


def train_step(model: nn.Module, opt: torch.optim.Optimizer, adversary: Adversary, x: Tensor, y: Tensor, *,
               generator: torch.Generator, eps_scale: float, weight: float = 1.0,
               amp: Optional[str] = None) -> tuple[Tensor, Optional[Tensor]]:
    """One optimisation step on the adversary's loss. Returns the loss (detached, a 0-dim tensor
    on the device: no synchronisation) and the number of correct predictions on the trained
    inputs (None when the adversary exposes no logits).

    ``weight`` multiplies the loss before the backward pass (a distributed rank's share of an
    unevenly split batch, see :func:`run_epoch`); ``amp="bf16"`` runs the adversary (crafting
    and loss) under bfloat16 autocast, the parameters and their gradients stay float32."""
    with _autocast(x.device, amp):
        loss, logits = adversary.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)
    opt.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()
    opt.step()
    correct = None if logits is None else (logits.detach().argmax(1) == y).sum()
    return loss.detach(), correct


def rank_seed(seed: int, rank: int) -> int:
    """Rank ``rank``'s version of a stream seed: rank 0 keeps ``seed`` (a single process is rank
    0), the others get distinct derived seeds, so ranks draw independent noise for their shards."""
    return int(seed) if rank == 0 else epoch_seed(seed, rank, 3)


#: Test hook: ``RANK:EPOCH:BATCHES`` makes process ``RANK`` exit hard (``os._exit``) after
#: ``BATCHES`` batches of 1-based epoch ``EPOCH`` (only in a first attempt, not in a torchrun restart).
CRASH_ENV = "ROBUSTLAB_TEST_CRASH"


def _crash_point(rank: int, epoch: int) -> Optional[int]:
    spec = os.environ.get(CRASH_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return None
    r, e, b = (int(v) for v in spec.split(":"))
    return b if (r, e) == (rank, epoch + 1) else None


def run_epoch(model: nn.Module, opt: torch.optim.Optimizer, adversary: Adversary, images: Tensor, labels: Tensor, *,
              epoch: int, epochs: int, seed: int, batch_size: int, lr: float, schedule: str, eps_warmup_epochs: float,
              device: torch.device, progress: bool, rank: int = 0, world: int = 1, amp: Optional[str] = None,
              channels_last: bool = False) -> dict:
    """Train one epoch (0-based ``epoch``); returns ``train_loss``, ``train_accuracy`` (when
    available) and the last ``lr``. Raises FloatingPointError if the loss became NaN/Inf.

    Distributed (``world`` > 1, ``model`` the DDP route): every rank walks the same seeded
    global order in global batches of ``batch_size`` and trains on its contiguous shard
    (:func:`robustlab.distributed.shard`). Its mean loss is weighted by
    ``n_rank * world / n_batch`` before the backward pass, so DDP's gradient average is exactly
    the gradient of the global batch's mean loss, even for an uneven last batch (a rank with no
    sample trains on one sample with weight 0, so every rank joins every all-reduce). After every
    step rank 0's buffers (BatchNorm running statistics) are broadcast, so every rank crafts and
    evaluates with the same model. Metrics are summed over ranks at the end of the epoch."""
    from robustlab import distributed

    model.train()
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    order = epoch_order(n, seed, epoch)
    gen = torch.Generator(device=device).manual_seed(rank_seed(epoch_seed(seed, epoch, 1), rank))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct_sum: Optional[Tensor] = torch.zeros((), dtype=torch.int64, device=device)
    seen, step_lr = 0, lr
    crash_after = _crash_point(rank, epoch)
    buffers = list(model.buffers()) if world > 1 else []
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False,
               unit="batch", dynamic_ncols=True)
    try:
        for i in range(steps_per_epoch):
            if crash_after is not None and i == crash_after:
                os._exit(17)  # the test hook: die without cleanup, as a killed worker does
            idx = order[i * batch_size : (i + 1) * batch_size]
            n_batch, weight = idx.shape[0], 1.0
            if world > 1:
                part = idx[distributed.shard(n_batch, rank, world)]
                weight = part.shape[0] * world / n_batch
                idx = part if part.shape[0] > 0 else idx[:1]
            idx = idx.to(images.device)
            x = images[idx].to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            step_lr = lr * lr_factor(schedule, epoch * steps_per_epoch + i, total_steps)
            for group in opt.param_groups:
                group["lr"] = step_lr
            t = epoch + i / steps_per_epoch
            eps_scale = min(1.0, t / eps_warmup_epochs) if eps_warmup_epochs > 0 else 1.0
            loss, correct = train_step(model, opt, adversary, x, y, generator=gen, eps_scale=eps_scale, weight=weight,
                                       amp=amp)
            if buffers:  # BatchNorm running statistics: rank 0's, on every rank, before the next crafting
                distributed.broadcast_tensors(buffers)
            if weight == 0.0:
                bar.update(1)
                continue
            loss_sum += loss.double() * y.shape[0]
            seen += y.shape[0]
            if correct is None or correct_sum is None:
                correct_sum = None
            else:
                correct_sum += correct
            bar.update(1)
            if progress and (i % 50 == 49 or i == steps_per_epoch - 1):
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", refresh=False)
    finally:
        bar.close()
        opt.zero_grad(set_to_none=True)
    if world > 1:
        has_correct = correct_sum is not None
        totals = torch.stack([loss_sum, (correct_sum if has_correct else torch.zeros((), device=device)).double(),
                              torch.tensor(float(seen), dtype=torch.float64, device=device)])
        distributed.all_reduce_sum(totals)
        loss_sum, seen = totals[0], int(round(float(totals[2])))
        correct_sum = totals[1] if has_correct else None
    train_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"the training loss became {train_loss} in epoch {epoch + 1} (lr {lr}); lower the learning rate. "
            "The last checkpoint (if any) holds the previous epoch."
        )
    out = {"train_loss": train_loss, "lr": step_lr}
    if correct_sum is not None:
        out["train_accuracy"] = float(correct_sum) / max(seen, 1)
    return out


def evaluate_epoch(model: nn.Module, val_data: Any, evaluate_fn: Optional[EvaluateFn], *,
                   batch_size: int = 512) -> tuple[dict, dict]:
    """Clean ``val_accuracy`` on ``val_data`` and the ``evaluate_fn`` entries. Returns
    ``(numeric entries for the history, control entries: stop / reason / score)``."""
    record: dict = {}
    control: dict = {}
    if val_data is not None:
        record["val_accuracy"] = accuracy(model, val_data, batch_size)
    if evaluate_fn is not None:
        with eval_mode(model):
            extra = evaluate_fn(model, val_data)
        if not isinstance(extra, Mapping):
            raise TypeError(f"evaluate_fn must return a dict, got {type(extra).__name__}")
        for key, value in extra.items():
            if key in ("stop", "reason", "score"):
                control[key] = value
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"evaluate_fn returned {key}={value!r}; history entries must be numbers")
            else:
                record[key] = float(value)
        if "score" in control:
            control["score"] = float(control["score"])
    return record, control


def _score(record: dict, control: dict) -> float:
    """Higher is better: evaluate_fn's score, else robust accuracy, else val accuracy, else -loss."""
    for value in (control.get("score"), record.get("robust_accuracy"), record.get("val_accuracy")):
        if value is not None:
            return float(value)
    return -float(record["train_loss"])


# ----------------------------------------------------------------------------------------------
# Checkpoints (no pickle: optimizer tensors in safetensors, everything else in JSON)


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


# ----------------------------------------------------------------------------------------------
# Validation before the first epoch


def _expected_channels(model: nn.Module) -> Optional[int]:
    arch = getattr(model, "arch_config", None)
    if isinstance(arch, Mapping) and arch.get("in_channels"):
        return int(arch["in_channels"])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def _check_data(data: Any, what: str, channels: Optional[int], image_shape: Optional[tuple]) -> tuple[Tensor, Tensor]:
    images, labels = as_tensors(data)
    check_images(images, f"{what} images")
    check_labels(labels, images.shape[0], f"{what} labels")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{what} has {images.shape[1]} channels (images {tuple(images.shape[1:])}) but the model "
                         f"expects {channels}: the dataset and the architecture do not match")
    if image_shape is not None and tuple(images.shape[1:]) != image_shape:
        raise ValueError(f"{what} images have shape {tuple(images.shape[1:])}, the training images {image_shape}")
    return images, labels


def _probe(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device, classes: Any = None) -> int:
    """One eval-mode forward pass on two images: the output must be (N, K) logits covering the
    labels, with K the dataset's number of classes when it names them."""
    probe = images[:2].to(device)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(probe)
    except RuntimeError as exc:
        raise ValueError(f"the model cannot process training images of shape {tuple(probe.shape[1:])}: {exc}") from exc
    check_logits(out, probe.shape[0], "the model's output")
    k = int(out.shape[1])
    if int(labels.max()) >= k:
        raise ValueError(f"the labels go up to {int(labels.max())} but the model has {k} outputs (classes 0..{k - 1})")
    if classes is not None and len(classes) != k:
        raise ValueError(f"the dataset has {len(classes)} classes but the model has {k} outputs: the model was "
                         "built for another dataset")
    return k


def _check_amp(device: torch.device, amp: Optional[str]) -> None:
    if amp is None:
        return
    available = getattr(torch.amp.autocast_mode, "is_autocast_available", lambda t: t in ("cpu", "cuda"))
    if not available(device.type):
        raise ValueError(f"amp={amp!r}: this PyTorch has no autocast for device type {device.type!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp={amp!r}: the GPU {torch.cuda.get_device_name(device)} does not support bfloat16")


def _check_adversary(adversary: Adversary, images: Tensor) -> None:
    """A threat model must fit the data: its box holds the images, its radius is not larger
    than the box itself (for l2 / l1 the box's diameter depends on the image size)."""
    tm = getattr(adversary, "threat", None)
    if tm is None or not hasattr(tm, "norm"):
        return
    lo, hi = float(images.min()), float(images.max())
    if lo < tm.lower or hi > tm.upper:
        raise ValueError(f"the training images lie in [{lo:.4g}, {hi:.4g}], outside the threat model's box "
                         f"[{tm.lower}, {tm.upper}]")
    d = images[0].numel()
    width = tm.upper - tm.lower
    diameter = {"linf": width, "l2": width * math.sqrt(d), "l1": width * d}.get(tm.norm)
    if diameter is not None and tm.eps > diameter:
        raise ValueError(f"eps={tm.eps} for norm {tm.norm} exceeds the diameter {diameter:.4g} of the image box "
                         f"({d} values in [{tm.lower}, {tm.upper}]): every image could become any other")


# ----------------------------------------------------------------------------------------------
# The loop


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
    test_data: Any = None,
    evaluate_fn: Optional[EvaluateFn] = None,
    select_best: bool = True,
    out: "str | os.PathLike[str] | None" = None,
    resume: bool = False,
    seed: int = 0,
    eps_warmup_epochs: float = 0.0,
    progress: bool = True,
    device: "str | torch.device | None" = None,
    log: Optional[Callable[[dict], None]] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    is_main: Optional[bool] = None,
    amp: Optional[str] = None,
    channels_last: bool = False,
    sync_batchnorm: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` (a Dataset or ``(images, labels)``, images in [0, 1]).

    Args:
        adversary: how each batch's loss is made (:class:`~robustlab.defenses.Standard` when None).
        epochs, batch_size: at least 1; the last batch of an epoch may be smaller.
        optimizer: ``"adam"`` (default lr 1e-3, weight decay 0) or ``"sgd"`` (lr 0.1, Nesterov
            momentum ``momentum``, weight decay 5e-4); ``lr`` / ``weight_decay`` override.
        schedule: ``"cosine"``, ``"step"``, ``"onecycle"`` or ``"constant"``, set every step.
        val_data: evaluated after every epoch (clean accuracy) and passed to ``evaluate_fn``.
        test_data: evaluated once at the end on the returned model (``metrics["test_accuracy"]``).
        evaluate_fn: ``f(model, val_data) -> dict`` after every epoch (see :data:`EvaluateFn`),
            e.g. :func:`robustlab.defenses.robust_validation` for adversarial training.
        select_best: return (and save) the best epoch's weights rather than the last.
        out: folder for checkpoints and the final model; ``resume=True`` continues the run in it
            from its last finished epoch (the configuration must match, ``epochs`` may grow).
        seed: seeds every random choice (see the module docstring); the global RNG is untouched.
        eps_warmup_epochs: ramp the adversary's eps linearly from 0 over this many epochs.
        progress: tqdm bar per epoch. ``log``: called with each epoch's history record (default:
            the ``robustlab.train`` logger). ``metadata``: extra entries for the saved model.
        device: where to train (default: the model's device; ``"cuda"`` under torchrun means
            ``cuda:LOCAL_RANK``). ``is_main``: whether this process writes and logs (default:
            rank 0 of a distributed run, or the single process).
        amp: ``"bf16"`` for bfloat16 autocast of the training forward/backward passes (the
            adversary's crafting included; validation stays float32). Default None (float32).
        channels_last: train with the model and the batches in ``torch.channels_last`` memory
            format (faster convolutions on recent GPUs; same results up to rounding).
        sync_batchnorm: CUDA only (refused on other devices): in a distributed run convert
            BatchNorm layers to ``torch.nn.SyncBatchNorm`` so batch statistics are those of the
            global batch; a no-op in a single process.

    Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) or in an initialised
    process group, the same call trains data-parallel with DDP: each rank trains on its shard of
    every global batch (``batch_size`` is the global batch, as in a single process), metrics are
    summed over ranks, validation runs on rank 0 and is broadcast, only rank 0 writes and logs,
    and every rank loads the checkpoint on ``resume`` (so ``out`` must be on a file system every
    rank sees). See ``docs/training.md``.

    Returns:
        :class:`TrainResult`; the model is left in eval mode with no ``.grad`` on its parameters
        and ``model.metadata`` updated with the run.
    """
    # --- arguments, before any work ---
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive(epochs, "epochs", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    default_lr, default_wd = OPTIMIZERS[optimizer]
    lr = float(check_positive(lr, "lr")) if lr is not None else default_lr
    wd = float(check_positive(weight_decay, "weight_decay", allow_zero=True)) if weight_decay is not None else default_wd
    momentum = float(check_positive(momentum, "momentum", allow_zero=True))
    check_positive(eps_warmup_epochs, "eps_warmup_epochs", allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if resume and out is None:
        raise ValueError("resume=True needs the out directory of the run to continue")
    if log is not None and not callable(log):
        raise TypeError(f"log must be a callable taking each epoch's record, got {log!r}")
    adversary = adversary if adversary is not None else Standard()
    if not isinstance(adversary, Adversary):
        raise TypeError(f"adversary must be a robustlab.defenses.Adversary, got {type(adversary).__name__}")
    if amp not in (None, "bf16"):
        hint = " (float16 needs loss scaling; bfloat16 does not)" if amp in ("fp16", "float16") else ""
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}{hint}")
    if is_main is not None and not isinstance(is_main, bool):
        raise TypeError(f"is_main must be a bool or None, got {is_main!r}")

    # --- data and model must fit (one forward pass), before the first epoch ---
    channels = _expected_channels(model)
    images, labels = _check_data(train_data, "train_data", channels, None)
    shape = tuple(images.shape[1:])
    if val_data is not None:
        _check_data(val_data, "val_data", channels, shape)
    if test_data is not None:
        _check_data(test_data, "test_data", channels, shape)
    params = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (params.device if params is not None else images.device)
    _check_amp(dev, amp)
    _check_adversary(adversary, images)

    # --- one process or many: the process group named by the environment (torchrun) ---
    from robustlab import distributed

    info = distributed.init_from_env(dev)
    world, rank = info.world_size, info.rank
    if world > 1:
        dev = info.device  # on CUDA: cuda:LOCAL_RANK, one GPU per process
    if is_main is None:
        is_main = rank == 0
    if world > 1 and batch_size < world:
        raise ValueError(f"batch_size={batch_size} is the global batch and must be >= the number of processes "
                         f"({world}); each rank trains on batch_size / {world} samples per step")
    if sync_batchnorm and dev.type != "cuda":
        raise ValueError(f"sync_batchnorm needs CUDA devices (torch's SyncBatchNorm is GPU-only), got device {dev}")
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    _probe(model, images, labels, dev, getattr(train_data, "classes", None))

    opt = make_optimizer(model, optimizer, lr, momentum, wd)
    config = {
        "adversary": adversary.config(), "epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "lr": lr,
        "momentum": momentum, "weight_decay": wd, "schedule": schedule, "seed": seed,
        "eps_warmup_epochs": float(eps_warmup_epochs), "train_size": int(images.shape[0]),
        "dataset": getattr(train_data, "name", None) or "tensors", "select_best": bool(select_best),
        "val_size": None if val_data is None else int(as_tensors(val_data)[1].shape[0]),
        "evaluate_fn": getattr(evaluate_fn, "config", None) if evaluate_fn is not None else None,
        "amp": amp, "channels_last": bool(channels_last), "world_size": world,
        "sync_batchnorm": bool(sync_batchnorm and world > 1),
    }
    emit = log if log is not None else _log_record

    # --- resume ---
    out_dir = Path(out) if out is not None else None
    history: list[dict] = []
    start, best_epoch, best_score = 0, -1, -math.inf
    best_state: Optional[dict[str, Tensor]] = None
    if resume and out_dir is not None:
        saved = load_checkpoint(out_dir, model, opt)
        if saved is None:
            _logger.warning("nothing to resume in %s (no checkpoint); starting from epoch 1", out_dir)
        else:
            _check_resumable(out_dir, saved["config"], config)
            start, history = int(saved["epoch"]), list(saved["history"])
            best_epoch, best_score = int(saved["best_epoch"]), float(saved["best_score"])
            if select_best and best_epoch == start:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif select_best and best_epoch >= 1:
                if not (out_dir / BEST).is_dir():
                    raise ValueError(f"cannot resume {out_dir}: its best epoch {best_epoch} has no {BEST}/ folder")
                best_state = read_state(out_dir / BEST)[0]
            if start > epochs:
                raise ValueError(f"cannot resume {out_dir} to {epochs} epochs: it has already finished {start}")
            if saved["config"].get("world_size", 1) != world and is_main:
                _logger.warning("resuming %s on %d processes instead of %s: the same global batches, but other "
                                "per-rank noise streams (not bit-identical to an uninterrupted run)", out_dir, world,
                                saved["config"].get("world_size", 1))
            if is_main:
                _logger.info("resuming %s after epoch %d of %d", out_dir, start, epochs)

    if start == 0 and out_dir is not None and is_main:
        shutil.rmtree(out_dir / BEST, ignore_errors=True)  # a fresh run: no best epoch from an older run

    # --- data parallel: DDP for the train-mode passes, the bare module for crafting ---
    net: nn.Module = model
    if world > 1:
        distributed.barrier()  # every rank has read the checkpoint before rank 0 writes again
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # broadcast_buffers=False: DDP would overwrite the buffers in place at every train-mode
        # forward, which breaks adversaries with two forwards per step (FGSM-reg, TRADES: the
        # first graph saved them). run_epoch broadcasts rank 0's buffers after every step instead.
        ddp_cls = nn.parallel.DistributedDataParallel
        no_sync_buffers = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(ddp_cls.__init__).parameters
                           else {"broadcast_buffers": False})  # the name before torch 2.13
        ddp = ddp_cls(model, device_ids=[dev.index] if dev.type == "cuda" else None, **no_sync_buffers)
        net = _RouteDDP(ddp)

    # --- epochs ---
    stopped_early = False
    t_wall = time.perf_counter()
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        with _global_rng(dev, epoch_seed(seed, epoch, 2)):
            record: dict[str, Any] = {"epoch": epoch + 1}
            record.update(run_epoch(net, opt, adversary, images, labels, epoch=epoch, epochs=epochs, seed=seed,
                                    batch_size=batch_size, lr=lr, schedule=schedule,
                                    eps_warmup_epochs=float(eps_warmup_epochs), device=dev,
                                    progress=progress and is_main, rank=rank, world=world, amp=amp,
                                    channels_last=channels_last))
            if world == 1:
                evaluated, control = evaluate_epoch(model, val_data, evaluate_fn)
            else:
                # Rank 0 evaluates (evaluate_fn may keep state); every rank gets its answer.
                done = evaluate_epoch(model, val_data, evaluate_fn) if rank == 0 else None
                evaluated, control = distributed.broadcast_object(done)
        record.update(evaluated)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        score = _score(record, control)
        if score >= best_score:  # ties go to the later epoch
            best_epoch, best_score = epoch + 1, score
            if select_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if out_dir is not None and is_main:
                    _save_best(out_dir, model, config, epoch + 1)
        if out_dir is not None and is_main:
            save_checkpoint(out_dir, model, opt, {
                "epoch": epoch + 1, "step": (epoch + 1) * math.ceil(images.shape[0] / batch_size),
                "history": history, "best_epoch": best_epoch, "best_score": best_score, "config": config,
                "rng": {"scheme": "per-epoch streams from epoch_seed(seed, epoch, stream)", "seed": seed},
            })
        if is_main:
            emit(dict(record))  # after the checkpoint: what is logged is on disk
        if control.get("stop"):
            stopped_early = True
            if is_main:
                _logger.warning("stopping after epoch %d: %s; keeping epoch %d", epoch + 1,
                                control.get("reason", "evaluate_fn asked to stop"), best_epoch)
            break

    # --- final model, metrics, metadata ---
    selected = len(history)
    if select_best and best_epoch >= 1:
        selected = best_epoch
        if best_epoch != len(history) and best_state is not None:
            model.load_state_dict(best_state)
    metrics = {k: v for k, v in history[selected - 1].items() if k not in ("seconds", "lr")} if history else {}
    metrics["train_seconds"] = sum(float(h.get("seconds", 0.0)) for h in history)
    metrics["wall_seconds"] = time.perf_counter() - t_wall
    if test_data is not None:
        if test_data is val_data and "val_accuracy" in metrics:
            metrics["test_accuracy"] = metrics["val_accuracy"]
        else:
            test_acc = accuracy(model, test_data) if rank == 0 else None
            metrics["test_accuracy"] = distributed.broadcast_object(test_acc)
    model.eval()
    run_meta = dict(metadata or {})
    run_meta.update(training=config, history=history, metrics=metrics, best_epoch=selected, stopped_early=stopped_early)
    known = getattr(model, "metadata", None) or {}
    run_meta.setdefault("dataset", known.get("dataset") or config["dataset"])
    model.metadata = {**known, **run_meta}
    if out_dir is not None and is_main:
        save(model, out_dir)
        _logger.info("saved %s (epoch %d, %.1f s of training)", out_dir, selected, metrics["train_seconds"])
    distributed.barrier()  # the files are written before any rank returns
    return TrainResult(model, history, selected, metrics, config, out_dir, stopped_early)


def _save_best(out_dir: Path, model: nn.Module, config: dict, epoch: int) -> None:
    tmp = out_dir / f".{BEST}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp, {"training": config, "epoch": epoch})
    _swap_in(tmp, out_dir / BEST)


def _check_resumable(out_dir: Path, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    diff = [f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != now.get(k)]
    if diff:
        raise ValueError(f"cannot resume {out_dir}: the run was started with a different configuration "
                         f"({'; '.join(diff)}); use the same settings or another out directory")
    if saved.get("epochs") != now.get("epochs"):
        _logger.warning("resuming %s with epochs=%s instead of %s: the learning-rate schedule is stretched",
                        out_dir, now.get("epochs"), saved.get("epochs"))


def _log_record(record: dict) -> None:
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch")
    _logger.info("epoch %d: %s", record["epoch"], text)
