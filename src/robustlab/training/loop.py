"""One training loop for every defence: the adversary decides what each batch's loss is.

``train(model, data, adversary=...)`` (or ``config=TrainConfig(...)``) runs seeded mini-batch SGD
or Adam with a per-step learning-rate schedule, evaluates after every epoch, keeps the best epoch
(by a robust score when an ``evaluate_fn`` reports one, else clean validation accuracy),
checkpoints every epoch atomically and resumes where it stopped: same seed, same weights, bit for
bit on the CPU.

Randomness. Nothing is drawn from an unseeded source and the caller's global RNG is left as it
was. Epoch ``e`` uses three streams derived from ``(seed, e)``: a CPU ``torch.Generator`` for the
shuffling order, a generator on the model's device passed to the adversary (noise, random
starts), and the global RNG seeded inside ``torch.random.fork_rng`` for the epoch (so dropout and
other global draws inside the model are reproducible too, and the caller's RNG state is restored
afterwards). A checkpoint after epoch ``e`` therefore needs no RNG state to replay epoch ``e + 1``
exactly; the scheme is recorded in ``train_state.json``.

Output under ``out/`` (written by the main process only, ``is_main``): ``model.safetensors`` +
``metadata.json``, the final model (the best epoch when selected) with training configuration,
history and metrics in the metadata; ``checkpoint/`` and ``best/`` (:mod:`.checkpointing`).

The pieces live apart: settings in :class:`~robustlab.training.config.TrainConfig`, checks before
the first epoch in :mod:`.preflight`, checkpoints in :mod:`.checkpointing`, the DDP wrapper in
:mod:`.parallel`; here :func:`epoch_order`, :func:`train_step`, :func:`run_epoch`,
:func:`evaluate_epoch` and the loop :func:`train`.

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
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attacks.base import eval_mode
from robustlab.training import preflight
from robustlab.training.augment import augment
from robustlab.training.base import Adversary
from robustlab.training.checkpointing import (  # noqa: F401  (re-exported: the checkpoint API's old home)
    BEST,
    CHECKPOINT,
    RESUME_KEYS,
    TRAIN_STATE,
    check_resumable,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    save_best,
    save_checkpoint,
)
from robustlab.training.config import OPTIMIZERS, SCHEDULES, TrainConfig
from robustlab.training.parallel import RouteDDP, wrap_ddp
from robustlab.models.checkpoint import read_state, save
from robustlab.models.metrics import accuracy, as_tensors

_logger = logging.getLogger("robustlab.train")

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


def run_epoch(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, images: Tensor, labels: Tensor, *,
              epoch: int, device: torch.device, progress: bool, rank: int = 0, world: int = 1) -> dict:
    """Train one epoch (0-based ``epoch``) with the settings ``cfg``; returns ``train_loss``,
    ``train_accuracy`` (when available) and the last ``lr``. Raises FloatingPointError if the
    loss became NaN/Inf. Before every batch the adversary gets ``set_progress(t / epochs, t)``
    with ``t = epoch + i / batches`` the epochs done, and ``eps_scale = min(1, t / eps_warmup_epochs)``.

    Distributed (``world`` > 1, ``model`` the DDP route): every rank walks the same seeded
    global order in global batches of ``batch_size`` and trains on its contiguous shard
    (:func:`robustlab.distributed.shard`). Its mean loss is weighted by
    ``n_rank * world / n_batch`` before the backward pass, so DDP's gradient average is exactly
    the gradient of the global batch's mean loss, even for an uneven last batch (a rank with no
    sample trains on one sample with weight 0, so every rank joins every all-reduce). After every
    step rank 0's buffers (BatchNorm running statistics) are broadcast, so every rank crafts and
    evaluates with the same model. Metrics are summed over ranks at the end of the epoch."""
    from robustlab import distributed

    assert cfg.adversary is not None and cfg.lr is not None
    adversary, batch_size, lr, epochs = cfg.adversary, cfg.batch_size, cfg.lr, cfg.epochs
    model.train()
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    order = epoch_order(n, cfg.seed, epoch)
    gen = torch.Generator(device=device).manual_seed(rank_seed(epoch_seed(cfg.seed, epoch, 1), rank))
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
            if cfg.augment is not None:
                x = augment(x, cfg.augment, gen)
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            step_lr = lr * lr_factor(cfg.schedule, epoch * steps_per_epoch + i, total_steps)
            for group in opt.param_groups:
                group["lr"] = step_lr
            t = epoch + i / steps_per_epoch
            warmup = cfg.eps_warmup_epochs
            eps_scale = min(1.0, t / warmup) if warmup > 0 else 1.0
            adversary.set_progress(t / epochs, t)
            loss, correct = train_step(model, opt, adversary, x, y, generator=gen, eps_scale=eps_scale, weight=weight,
                                       amp=cfg.amp)
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
# The loop

@dataclass
class _Run:
    """Where and on what this process trains (fixed by the preflight checks)."""

    images: Tensor
    labels: Tensor
    device: torch.device
    rank: int
    world: int
    is_main: bool


@dataclass
class _Progress:
    """The loop's state across epochs (restored on resume)."""

    start: int = 0
    history: list = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    best_state: Optional[dict] = None


def train(
    model: nn.Module,
    train_data: Any,
    *,
    config: Optional[TrainConfig] = None,
    val_data: Any = None,
    test_data: Any = None,
    evaluate_fn: Optional[EvaluateFn] = None,
    out: "str | os.PathLike[str] | None" = None,
    resume: bool = False,
    log: Optional[Callable[[dict], None]] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    is_main: Optional[bool] = None,
    **settings: Any,
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` (a Dataset or ``(images, labels)``, images in [0, 1]).

    Args:
        config: the settings (:class:`~robustlab.training.config.TrainConfig`: adversary,
            epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule, select_best,
            seed, eps_warmup_epochs, progress, device, amp, channels_last, sync_batchnorm, augment).
        **settings: the same settings as keywords (``train(model, data, epochs=5, adversary=...)``),
            used when ``config`` is None; giving both is an error.
        val_data: evaluated after every epoch (clean accuracy) and passed to ``evaluate_fn``.
        test_data: evaluated once at the end on the returned model (``metrics["test_accuracy"]``).
        evaluate_fn: ``f(model, val_data) -> dict`` after every epoch (see :data:`EvaluateFn`),
            e.g. :func:`robustlab.training.robust_validation` for adversarial training.
        out: folder for checkpoints and the final model; ``resume=True`` continues the run in it
            from its last finished epoch (the configuration must match, ``epochs`` may grow).
        log: called with each epoch's history record (default: the ``robustlab.train`` logger).
        metadata: extra entries for the saved model.
        is_main: whether this process writes and logs (default: rank 0 of a distributed run, or
            the single process).

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = _resolve_config(config, settings)
    if resume and out is None:
        raise ValueError("resume=True needs the out directory of the run to continue")
    if log is not None and not callable(log):
        raise TypeError(f"log must be a callable taking each epoch's record, got {log!r}")
    if is_main is not None and not isinstance(is_main, bool):
        raise TypeError(f"is_main must be a bool or None, got {is_main!r}")
    run = _prepare(model, train_data, val_data, test_data, cfg, is_main)
    assert cfg.lr is not None and cfg.weight_decay is not None and cfg.adversary is not None
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    record_cfg = cfg.record(
        train_size=int(run.images.shape[0]), dataset=getattr(train_data, "name", None) or "tensors",
        val_size=None if val_data is None else int(as_tensors(val_data)[1].shape[0]),
        evaluate_fn=getattr(evaluate_fn, "config", None) if evaluate_fn is not None else None,
        world_size=run.world, sync_batchnorm=bool(cfg.sync_batchnorm and run.world > 1),
    )
    out_dir = Path(out) if out is not None else None
    state = _resume(out_dir, model, opt, cfg, record_cfg, run) if resume and out_dir is not None else _Progress()
    if state.start == 0 and out_dir is not None and run.is_main:
        shutil.rmtree(out_dir / BEST, ignore_errors=True)  # a fresh run: no best epoch from an older run
    net: nn.Module = model
    if run.world > 1:
        from robustlab import distributed

        distributed.barrier()  # every rank has read the checkpoint before rank 0 writes again
        model, net = wrap_ddp(model, run.device, sync_batchnorm=cfg.sync_batchnorm)
    emit = log if log is not None else _log_record

    stopped_early = False
    t_wall = time.perf_counter()
    try:
        for epoch in range(state.start, cfg.epochs):
            record, control = _train_epoch(net, model, opt, cfg, run, epoch, val_data, evaluate_fn)
            state.history.append(record)
            score = _score(record, control)
            if score >= state.best_score:  # ties go to the later epoch
                state.best_epoch, state.best_score = epoch + 1, score
                if cfg.select_best:
                    state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if out_dir is not None and run.is_main:
                        save_best(out_dir, model, record_cfg, epoch + 1)
            if out_dir is not None and run.is_main:
                save_checkpoint(out_dir, model, opt, {
                    "epoch": epoch + 1, "step": (epoch + 1) * math.ceil(run.images.shape[0] / cfg.batch_size),
                    "history": state.history, "best_epoch": state.best_epoch, "best_score": state.best_score,
                    "config": record_cfg,
                    "rng": {"scheme": "per-epoch streams from epoch_seed(seed, epoch, stream)", "seed": cfg.seed},
                })
            if run.is_main:
                emit(dict(record))  # after the checkpoint: what is logged is on disk
            if control.get("stop"):
                stopped_early = True
                if run.is_main:
                    _logger.warning("stopping after epoch %d: %s; keeping epoch %d", epoch + 1,
                                    control.get("reason", "evaluate_fn asked to stop"), state.best_epoch)
                break
    finally:
        if isinstance(net, RouteDDP):
            net.close()  # DDP freed while the process group lives (see RouteDDP.close)
    return _finish(model, cfg, run, state, record_cfg, out_dir, val_data, test_data, metadata, stopped_early,
                   time.perf_counter() - t_wall)


def _resolve_config(config: Optional[TrainConfig], settings: dict[str, Any]) -> TrainConfig:
    """``config`` itself, or a config built from ``train()``'s keyword settings (not both)."""
    if config is None:
        return TrainConfig.from_kwargs(settings)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a robustlab.training.TrainConfig, got {type(config).__name__}")
    if settings:
        raise ValueError(f"pass the settings either in config= or as keywords, not both; got config and "
                         f"{', '.join(sorted(settings))}")
    return config


def _prepare(model: nn.Module, train_data: Any, val_data: Any, test_data: Any, cfg: TrainConfig,
             is_main: Optional[bool]) -> _Run:
    """Preflight (data, model, device, adversary fit together: one forward pass) and the process
    group named by the environment (torchrun); moves the model to its device."""
    from robustlab import distributed

    channels = preflight.expected_channels(model)
    images, labels = preflight.check_data(train_data, "train_data", channels, None)
    shape = tuple(images.shape[1:])
    if val_data is not None:
        preflight.check_data(val_data, "val_data", channels, shape)
    if test_data is not None:
        preflight.check_data(test_data, "test_data", channels, shape)
    params = next(iter(model.parameters()), None)
    dev = torch.device(cfg.device) if cfg.device is not None else (params.device if params is not None else images.device)
    preflight.check_amp(dev, cfg.amp)
    assert cfg.adversary is not None
    preflight.check_adversary(cfg.adversary, images)

    info = distributed.init_from_env(dev)
    world, rank = info.world_size, info.rank
    if world > 1:
        dev = info.device  # on CUDA: cuda:LOCAL_RANK, one GPU per process
    if world > 1 and cfg.batch_size < world:
        raise ValueError(f"batch_size={cfg.batch_size} is the global batch and must be >= the number of processes "
                         f"({world}); each rank trains on batch_size / {world} samples per step")
    if cfg.sync_batchnorm and dev.type != "cuda":
        raise ValueError(f"sync_batchnorm needs CUDA devices (torch's SyncBatchNorm is GPU-only), got device {dev}")
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    preflight.probe(model, images, labels, dev, getattr(train_data, "classes", None))
    return _Run(images, labels, dev, rank, world, rank == 0 if is_main is None else is_main)


def _resume(out_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, record_cfg: dict,
            run: _Run) -> _Progress:
    """The state after the last finished epoch in ``out_dir`` (model and optimizer restored)."""
    state = _Progress()
    saved = load_checkpoint(out_dir, model, opt)
    if saved is None:
        _logger.warning("nothing to resume in %s (no checkpoint); starting from epoch 1", out_dir)
        return state
    check_resumable(out_dir, saved["config"], record_cfg)
    state.start, state.history = int(saved["epoch"]), list(saved["history"])
    state.best_epoch, state.best_score = int(saved["best_epoch"]), float(saved["best_score"])
    if cfg.select_best and state.best_epoch == state.start:
        state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    elif cfg.select_best and state.best_epoch >= 1:
        if not (out_dir / BEST).is_dir():
            raise ValueError(f"cannot resume {out_dir}: its best epoch {state.best_epoch} has no {BEST}/ folder")
        state.best_state = read_state(out_dir / BEST)[0]
    if state.start > cfg.epochs:
        raise ValueError(f"cannot resume {out_dir} to {cfg.epochs} epochs: it has already finished {state.start}")
    if saved["config"].get("world_size", 1) != run.world and run.is_main:
        _logger.warning("resuming %s on %d processes instead of %s: the same global batches, but other "
                        "per-rank noise streams (not bit-identical to an uninterrupted run)", out_dir, run.world,
                        saved["config"].get("world_size", 1))
    if run.is_main:
        _logger.info("resuming %s after epoch %d of %d", out_dir, state.start, cfg.epochs)
    return state


def _train_epoch(net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, run: _Run,
                 epoch: int, val_data: Any, evaluate_fn: Optional[EvaluateFn]) -> tuple[dict, dict]:
    """One epoch and its evaluation, under the epoch's seeded global RNG: ``(record, control)``."""
    from robustlab import distributed

    t0 = time.perf_counter()
    with _global_rng(run.device, epoch_seed(cfg.seed, epoch, 2)):
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update(run_epoch(net, opt, cfg, run.images, run.labels, epoch=epoch, device=run.device,
                                progress=cfg.progress and run.is_main, rank=run.rank, world=run.world))
        assert cfg.adversary is not None
        judged = cfg.adversary.evaluation_model(model)  # the classifier the weights make (PixelDP: with its noise)
        if run.world == 1:
            evaluated, control = evaluate_epoch(judged, val_data, evaluate_fn)
        else:
            # Rank 0 evaluates (evaluate_fn may keep state); every rank gets its answer.
            done = evaluate_epoch(judged, val_data, evaluate_fn) if run.rank == 0 else None
            evaluated, control = distributed.broadcast_object(done)
    record.update(evaluated)
    record["seconds"] = time.perf_counter() - t0
    return record, control


def _finish(model: nn.Module, cfg: TrainConfig, run: _Run, state: _Progress, record_cfg: dict,
            out_dir: Optional[Path], val_data: Any, test_data: Any, metadata: Optional[Mapping[str, Any]],
            stopped_early: bool, wall_seconds: float) -> TrainResult:
    """Select the best epoch, compute the final metrics, write the model and its metadata."""
    from robustlab import distributed

    assert cfg.adversary is not None
    history = state.history
    selected = len(history)
    if cfg.select_best and state.best_epoch >= 1:
        selected = state.best_epoch
        if state.best_epoch != len(history) and state.best_state is not None:
            model.load_state_dict(state.best_state)
    metrics = {k: v for k, v in history[selected - 1].items() if k not in ("seconds", "lr")} if history else {}
    metrics["train_seconds"] = sum(float(h.get("seconds", 0.0)) for h in history)
    metrics["wall_seconds"] = wall_seconds
    if test_data is not None:
        if test_data is val_data and "val_accuracy" in metrics:
            metrics["test_accuracy"] = metrics["val_accuracy"]
        else:
            test_acc = accuracy(cfg.adversary.evaluation_model(model), test_data) if run.rank == 0 else None
            metrics["test_accuracy"] = distributed.broadcast_object(test_acc)
    model.eval()
    run_meta = dict(metadata or {})
    run_meta.update(cfg.adversary.model_metadata(model))  # e.g. PixelDP's noise layer, which certify checks
    run_meta.update(training=record_cfg, history=history, metrics=metrics, best_epoch=selected,
                    stopped_early=stopped_early)
    # A PixelDP record describes the training that made the weights: a new run without the noise drops it.
    known = {k: v for k, v in (getattr(model, "metadata", None) or {}).items() if k != "pixeldp"}
    run_meta.setdefault("dataset", known.get("dataset") or record_cfg["dataset"])
    model.metadata = {**known, **run_meta}
    if out_dir is not None and run.is_main:
        save(model, out_dir)
        _logger.info("saved %s (epoch %d, %.1f s of training)", out_dir, selected, metrics["train_seconds"])
    distributed.barrier()  # the files are written before any rank returns
    return TrainResult(model, history, selected, metrics, record_cfg, out_dir, stopped_early)

def _log_record(record: dict) -> None:
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch")
    _logger.info("epoch %d: %s", record["epoch"], text)
