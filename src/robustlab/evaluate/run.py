"""Run a suite over a dataset: validate everything, stream batches, keep one record per sample,
resume after a crash, and build the :class:`~robustlab.report.Report`.

Per batch and per threat model, every attack runs at every eps on every image (so per-attack
robust accuracy is exact); a black-box baseline (with the checks: Square where the attack
registry has it, else random noise), transfer examples from the suite's source models and
minimal-norm attacks add to the per-sample worst case; certifiers add a certified radius. What is
kept per image and result is small: success, distance in the threat norm, the linf / l2 / l0 norms
of the perturbation and the classification margin at the adversarial point. Finished batches are
written atomically to ``out/records/`` as safetensors (with a manifest naming the suite, data,
model and seed), so ``resume=True`` skips them; the gradient-masking probes are kept in
``out/records/checks.json`` the same way. :func:`robustlab.evaluate.summarize.model_report` turns
the records into the report.

The batches are the units of the one engine, :func:`robustlab.evaluate.shards.run_units` (the
engine of ``certify`` and ``verify`` too), and :class:`robustlab.evaluate.batch.BatchRunner`
computes each. Faults: while a run writes, ``out/.robustlab.lock`` holds its pid, so a second run
into the same folder fails at once (a lock left by a dead process is taken over). Every batch file
carries the hash of its run's configuration (suite, model and data fingerprints, seed, batch size),
and ``resume`` only reuses files of its own configuration; a file that cannot be read or is not its
own is named in a warning and recomputed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from robustlab import distributed
from robustlab._checks import check_images, check_labels, check_logits, check_positive, explain_input_mismatch
from robustlab._io import atomic_write_text
from robustlab.evaluate import checks as checks_mod
from robustlab.evaluate.batch import BatchProgress, BatchRunner
from robustlab.evaluate.model_facts import model_info
from robustlab.evaluate.records import RECORDS_VERSION, Records
from robustlab.evaluate.shards import (CRASH_ENV, LOCK_NAME, OutputLock, check_writable, config_hash,  # noqa: F401
                                       release_memory, run_units, UnitFiles, write_manifest)
from robustlab.evaluate.summarize import model_report
from robustlab.evaluate.summarize import report as make_report
from robustlab.evaluate.suite import Suite, load_suite
from robustlab.model_ops import eval_mode, model_device
from robustlab.report.schema import Report

log = logging.getLogger("robustlab.evaluate")


# -- validation ------------------------------------------------------------------------------------


def _as_data(data: Any) -> tuple[Tensor, Tensor, dict]:
    from robustlab.models.metrics import as_tensors

    images, labels = as_tensors(data)
    info = {"name": str(getattr(data, "name", "tensors")), "split": getattr(data, "split", None),
            "classes": [str(c) for c in getattr(data, "classes", ())]}
    return images, labels, info


def _load_sources(suite: Suite, device: torch.device) -> dict[str, nn.Module]:
    from robustlab import models

    out = {}
    for name, src in suite.transfer.items():
        if isinstance(src, nn.Module):
            out[name] = src
        else:
            out[name] = models.load(src, map_location=device)
    return out


def _probe_model(model: nn.Module, x1: Tensor, what: str, num_classes: Optional[int] = None) -> int:
    with eval_mode(model), torch.no_grad():
        try:
            out = model(x1)
        except RuntimeError as exc:
            why = explain_input_mismatch(model, x1, "the data's images") or str(exc).splitlines()[0]
            raise ValueError(f"{what} cannot process the data's images of shape {tuple(x1.shape[1:])} (C, H, W): "
                             f"{why}") from exc
    check_logits(out, 1, f"the output of {what}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} returns non-finite logits on the first image")
    if num_classes is not None and out.shape[1] != num_classes:
        raise ValueError(f"{what} has {out.shape[1]} classes, the evaluated model {num_classes}")
    return int(out.shape[1])


def _fingerprint(model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, str]:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    d = hashlib.sha256(labels.cpu().numpy().tobytes())
    d.update(images[: min(64, images.shape[0])].cpu().contiguous().numpy().tobytes())
    d.update(str(tuple(images.shape)).encode())
    return {"model": h.hexdigest(), "data": d.hexdigest()}


# -- the public entry point ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """How :func:`run` evaluates; every field is also a keyword of :func:`run`.

    ``batch_size``: images per batch (memory is bounded by it); ``n``: the first ``n`` images;
    ``device``: where the model runs (default: the model's); ``progress``: a progress bar;
    ``out``: folder for the per-batch records and, at the end, the report (``report.json``,
    ``index.html`` unless ``html=False``, figures); ``resume``: reuse the finished batches of an
    interrupted run into ``out`` with the same suite, data, model, batch size and seed; ``seed``:
    seeds every attack, the noise draws and the certifiers; ``name``: the model's name in the
    report (default: its saved name or class); ``norm`` / ``eps``: replace a preset's threat model.
    """

    batch_size: int = 256
    n: Optional[int] = None
    device: "str | torch.device | None" = None
    progress: bool = True
    out: "str | os.PathLike[str] | None" = None
    resume: bool = False
    seed: int = 0
    name: Optional[str] = None
    norm: Optional[str] = None
    eps: Optional[list[float]] = None
    html: bool = True

    def __post_init__(self) -> None:
        check_positive(self.batch_size, "batch_size", integer=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        if self.n is not None:
            check_positive(self.n, "n", integer=True)
        if self.resume and self.out is None:
            raise ValueError("resume=True needs out, the folder of the run to continue")


def run(model: nn.Module, data: Any, suite: "str | Suite | os.PathLike[str]" = "quick",
        config: Optional[RunConfig] = None, **options: Any) -> Report:
    """Evaluate ``model`` on ``data`` with ``suite`` and return the :class:`~robustlab.report.Report`.

    Args:
        model: any ``nn.Module`` mapping images in [0, 1] (N, C, H, W) to logits; never modified
            (with ``device`` set and different from the model's, a copy is moved there).
        data: a :class:`robustlab.data.Dataset` or an ``(images, labels)`` pair of tensors.
        suite: ``"quick"``, ``"standard"``, a ``.toml`` path or a :class:`Suite`.
        config: a :class:`RunConfig`; ``options`` are its fields as keywords (``n=100,
            out="out/ev"``), which replace the config's.

    Everything is validated before any attack runs: the suite (names, radii, options), the data
    (images in [0, 1], labels), the model on one image (shape, classes, finite logits), the
    transfer sources and the output folder.

    In a process group (``torchrun``; :func:`robustlab.distributed.init_from_env`), batch ``b``
    runs on rank ``b mod world`` with the images and seeds it has in one process; the records are
    gathered on rank 0, which runs the checks and writes ``out``; every rank returns the same
    report, whose numbers equal a one-process run's (docs/scale-out.md).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module mapping images to logits, got {type(model).__name__}")
    if config is not None and not isinstance(config, RunConfig):
        raise TypeError(f"config must be a robustlab.evaluate.RunConfig, got {type(config).__name__}")
    try:
        cfg = dataclasses.replace(config or RunConfig(), **options)
    except TypeError as exc:
        raise TypeError(f"{exc}; run() takes the fields of RunConfig: "
                        f"{', '.join(f.name for f in dataclasses.fields(RunConfig))}") from None
    job = _job(model, data, suite, cfg)
    out, resume = cfg.out, cfg.resume
    if out is None:
        return _evaluate(job)
    out_dir = Path(out)
    main = distributed.is_main()
    # Rank 0 owns the folder (lock, manifest, clearing old batches); every rank writes its own batch
    # files. A refusal on rank 0 is broadcast, so all ranks fail with the same message.
    lock = OutputLock(out_dir) if main else None
    problem: Optional[str] = None
    if main:
        try:
            check_writable(out_dir)
            lock.acquire()
            write_manifest(job.records, job.manifest, resume)
            if not resume:
                (job.records / "checks.json").unlink(missing_ok=True)
        except (OSError, ValueError) as exc:
            lock.release()
            problem = f"{type(exc).__name__}: {exc}"
            if not distributed.is_distributed():
                raise
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise (PermissionError if problem.startswith(("PermissionError", "OSError")) else
               FileExistsError if problem.startswith("FileExistsError") else ValueError)(problem.split(": ", 1)[1])
    try:
        report = _evaluate(job)
        if main:
            report.save(out_dir, html=cfg.html)
    finally:
        if lock is not None:
            lock.release()
    return report


@dataclass(frozen=True)
class Job:
    """One evaluation, validated and prepared: what :func:`_evaluate` and :func:`_finish` need."""

    runner: BatchRunner
    model: nn.Module
    images: Tensor
    labels: Tensor
    suite: Suite
    name: str
    data_info: dict
    device: torch.device
    manifest: dict
    cfg: RunConfig

    @property
    def config(self) -> str:
        """The configuration hash every record file of this run carries."""
        return self.manifest["config"]

    @property
    def records(self) -> Optional[Path]:
        """``out/records``, where the batches and the check probes are kept (None without ``out``)."""
        return Path(self.cfg.out) / "records" if self.cfg.out is not None else None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.images.shape[1:])  # type: ignore[return-value]


def _job(model: nn.Module, data: Any, suite: "str | Suite | os.PathLike[str]", cfg: RunConfig) -> Job:
    """Validate the data, the suite, the model, the transfer sources and the attacks' options (in
    that order, before any attack runs) and prepare the run's manifest."""
    images, labels, data_info = _as_data(data)
    if cfg.n is not None:
        images, labels = images[: cfg.n], labels[: cfg.n]
    if images.shape[0] == 0:
        raise ValueError("data is empty; nothing to evaluate")
    check_images(images, "data images")
    check_labels(labels, images.shape[0], "data labels")
    suite = load_suite(suite, cfg.norm, cfg.eps, data_info["name"])
    shape = tuple(int(v) for v in images.shape[1:])
    suite.validate_for_input(shape)
    dev = torch.device(cfg.device) if cfg.device is not None else model_device(model, images.device)
    if model_device(model, dev) != dev:
        model = copy.deepcopy(model).to(dev)
    k = _probe_model(model, images[:1].to(dev), "the model")
    if int(labels.max()) >= k:
        raise ValueError(f"the data has label {int(labels.max())} but the model has {k} classes")
    if not data_info["classes"] or len(data_info["classes"]) != k:
        data_info["classes"] = [str(i) for i in range(k)]
    sources = _load_sources(suite, dev)
    for s, m in sources.items():
        _probe_model(m, images[:1].to(dev), f"transfer source {s!r}", k)
    runner = BatchRunner(model, suite, shape, cfg.seed, sources)  # builds every attack: bad options fail here
    name = cfg.name or str((getattr(model, "metadata", None) or {}).get("name") or type(model).__name__)
    manifest = {
        "records_version": RECORDS_VERSION, "suite": suite.to_dict(), "n": int(images.shape[0]),
        "batch_size": cfg.batch_size, "seed": cfg.seed, "fingerprint": _fingerprint(model, images, labels),
        "sources": {s: _fingerprint(m, images[:1], labels[:1])["model"] for s, m in sources.items()},
        "black_box": runner.black_box_method if suite.checks.enabled else {},
    }
    manifest["config"] = config_hash(manifest)
    return Job(runner, model, images, labels, suite, name, data_info, dev, manifest, cfg)


def _evaluate(job: Job) -> Optional[Report]:
    """The batches, through the engine (:func:`~robustlab.evaluate.shards.run_units`: reused from
    ``job.records`` where ``resume`` finds them intact and of this configuration), then the check
    probes and the report (:func:`_finish`)."""
    t_start = time.perf_counter()
    starts = list(range(0, job.images.shape[0], job.cfg.batch_size))
    world = distributed.world_size()
    desc = f"evaluate {job.name}" + (f" (rank 0 of {world})" if world > 1 else "")
    mine = distributed.round_robin(len(starts))
    bar = tqdm(total=len(mine), desc=desc, unit="batch", disable=not job.cfg.progress or not distributed.is_main())

    def compute(b: int) -> dict[str, Tensor]:
        i = starts[b]
        x, y = job.images[i : i + job.cfg.batch_size].to(job.device), job.labels[i : i + job.cfg.batch_size].to(job.device)
        if bar.disable:
            return job.runner.batch(x, y, i, b)
        return job.runner.batch(x, y, i, b, BatchProgress(bar, job.runner.tasks))

    def check(b: int, rec: dict[str, Tensor]) -> Optional[str]:
        return _wrong_shape(rec, b, min(job.cfg.batch_size, job.images.shape[0] - starts[b]))

    # Log lines (a file that cannot be reused, ...) print above the bar, not into it.
    with logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext():
        files = UnitFiles(job.records, job.config, job.cfg.resume, "batch", lock=False) if job.records else None
        batches = run_units(len(starts), compute, files, done=lambda b: bar.update(1), check=check, everywhere=True)
    bar.close()
    report = _finish(job, batches, t_start)
    return distributed.broadcast_object(report) if world > 1 else report  # rank 0's


def _wrong_shape(rec: dict[str, Tensor], b: int, size: int) -> Optional[str]:
    """Why a batch file's records do not fit batch ``b`` of ``size`` images, or None."""
    label = rec.get("clean|label")
    if label is None or label.shape != (size,) or any(
            t.ndim == 0 or (t.shape[0] != size and not (k.startswith("time|") or k.startswith("ex|")))
            for k, t in rec.items()):
        return f"holds records of the wrong shape for batch {b} ({size} images)"
    return None


def _finish(job: Job, batches: list[dict[str, Tensor]], t_start: float) -> Optional[Report]:
    """The check probes (on the first ``checks.n`` images, reused from ``job.records`` on resume)
    and the report, from every batch's records in order. Under torchrun every rank calls this with
    every record: the probes are dealt to the ranks, and only rank 0 returns a report (None elsewhere)."""
    records = Records.concat(batches)
    del batches  # the per-batch tensors go; the concatenated records stay
    main = distributed.is_main()
    suite, dev = job.suite, job.device

    probes: Optional[dict] = None
    if suite.checks.enabled:
        cpath = job.records / "checks.json" if job.records is not None else None
        if main and job.cfg.resume and cpath is not None and cpath.is_file():
            probes = _load_probes(cpath, job.config)
        if distributed.broadcast_object(probes is None):  # every rank probes, or none does
            m = min(suite.checks.n, job.images.shape[0])
            probes = checks_mod.probe(job.model, job.images[:m].to(dev), job.labels[:m].to(dev), suite, records,
                                      shape=job.shape, seed=job.cfg.seed, run_tasks=distributed.run_json_tasks)
            release_memory()
            if main and cpath is not None:
                atomic_write_text(cpath, json.dumps({"config": job.config, "probes": probes}, indent=1) + "\n")
    if not main:
        return None
    info = {"name": job.name, "model": model_info(job.model),
            "data": {**job.data_info, "n": int(job.images.shape[0]), "shape": list(job.shape)},
            "seed": job.cfg.seed, "batch_size": job.cfg.batch_size, "device": str(dev), "seconds": time.perf_counter() - t_start,
            "sources": job.runner.sources_names, "black_box": job.runner.black_box_method, "kinds": job.runner.kinds}
    return make_report([model_report(suite, records, probes, info)], title=f"robustlab report: {job.name}")


# -- resume: the cached check probes ---------------------------------------------------------------


def _load_probes(path: Path, config: str) -> Optional[dict]:
    """The cached check probes of this ``config``, or ``None`` (with a warning) to recompute them."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        log.warning("%s cannot be read (%s); recomputing the check probes", path, exc)
        return None
    if not isinstance(data, dict) or data.get("config") != config:
        log.warning("%s was written by another run; recomputing the check probes", path)
        return None
    probes = data.get("probes")
    if not isinstance(probes, dict) or probes.get("version") != checks_mod.PROBES_VERSION:
        log.warning("%s holds probes of another layout; recomputing them", path)
        return None
    return probes
