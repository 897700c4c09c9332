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

Faults: while a run writes, ``out/.robustlab.lock`` holds its pid, so a second run into the same
folder fails at once (a lock left by a dead process is taken over). Every batch file carries the
hash of its run's configuration (suite, model and data fingerprints, seed, batch size), and
``resume`` only reuses files of its own configuration; a file that cannot be read or is not its own
is named in a warning and recomputed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from robustlab._checks import check_images, check_labels, check_logits, check_positive, explain_input_mismatch
from robustlab import distributed
from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.attacks.base import eval_mode, model_device
from robustlab.attacks.registry import UnknownOption
from robustlab.evaluate import checks as checks_mod
from robustlab.evaluate.metrics import perturbation_norms
from robustlab.evaluate.records import RECORDS_VERSION, UNBOUNDED, Records, attack_kind, key  # noqa: F401
from robustlab.evaluate.shards import counting_forwards, read_record, release_memory
from robustlab.evaluate.summarize import model_report
from robustlab.evaluate.summarize import report as make_report
from robustlab.evaluate.suite import Suite, Threat, certifier, load_suite, unbounded_eps  # noqa: F401
from robustlab.losses import margin
from robustlab.report.schema import Report
from robustlab.threat import ThreatModel

log = logging.getLogger("robustlab.evaluate")
LOCK_NAME = ".robustlab.lock"
#: Test hook: ``RANK:BATCHES`` makes process ``RANK`` exit hard (``os._exit(17)``) after writing
#: ``BATCHES`` batch files (only in a first attempt, not in a torchrun restart).
CRASH_ENV = "ROBUSTLAB_TEST_EVAL_CRASH"


def black_box_label(method: str) -> str:
    """The name of the black-box baseline ``method`` ("square" or "noise") in the report."""
    return "square (black-box)" if method == "square" else "random noise"


def display_sources(suite: Suite) -> list[str]:
    """Names of what can produce the images of the report's grids (first threat model)."""
    t = suite.threats[0]
    names = [*suite.attacks_for(t), *(f"{a} (minimal)" for a in suite.minimal)]
    if suite.checks.enabled:
        names.append(black_box_label(checks_mod.black_box_method(t.norm)))
    names += [f"transfer from {s}" for s in suite.transfer]
    return names


# -- the per-batch work ----------------------------------------------------------------------------


class _Show:
    """Per image of a batch, the adversarial point the report would show: the smallest-distance
    adversarial example found, else the failed attempt with the smallest margin at the largest eps."""

    def __init__(self, x: Tensor, pred: Tensor, conf: Tensor) -> None:
        n = x.shape[0]
        self.adv = x.clone()
        self.success = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.dist = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        self.margin = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        self.eps = torch.zeros(n, dtype=torch.float64, device=x.device)
        self.src = torch.full((n,), -1, dtype=torch.long, device=x.device)
        self.pred, self.conf = pred.clone(), conf.clone()

    def update(self, x_adv: Tensor, success: Tensor, dist: Tensor, marg: Tensor, pred: Tensor, conf: Tensor,
               eps: float, src: int, attempt: bool) -> None:
        dist, marg = dist.double(), marg.double()
        take = success & (~self.success | (dist < self.dist))
        if attempt:
            take |= ~success & ~self.success & (marg < self.margin)
        if bool(take.any()):
            self.adv[take] = x_adv[take]
            self.success[take] = success[take]
            self.dist[take] = torch.where(success[take], dist[take], torch.full_like(dist[take], math.inf))
            self.margin[take] = marg[take]
            self.eps[take] = eps
            self.src[take] = src
            self.pred[take], self.conf[take] = pred[take], conf[take]

    def candidates(self, x: Tensor, y: Tensor, correct: Tensor, clean_pred: Tensor, clean_conf: Tensor, start: int,
                   k: int) -> dict[str, Tensor]:
        """The ``k`` least and most robust correct images of the batch, with what to show."""
        big = 1e12
        least = torch.where(correct & self.success, self.dist, torch.full_like(self.dist, math.inf))
        most = torch.where(self.success, self.dist, big + self.margin.clamp(-1e6, 1e6))
        most = torch.where(correct, most, torch.full_like(most, -math.inf))
        out: dict[str, Tensor] = {}
        for kind, score, descending in (("least", least, False), ("most", most, True)):
            order = score.argsort(descending=descending)
            valid = torch.isfinite(score[order])
            idx = order[valid][:k]
            fields = {
                "index": torch.arange(start, start + x.shape[0], device=x.device)[idx],
                "score": score[idx].double(), "x": x[idx].float(), "adv": self.adv[idx].float(), "label": y[idx],
                "clean_pred": clean_pred[idx], "clean_conf": clean_conf[idx].float(), "adv_pred": self.pred[idx],
                "adv_conf": self.conf[idx].float(), "eps": self.eps[idx], "src": self.src[idx],
                "success": self.success[idx], "dist": torch.nan_to_num(self.dist[idx], posinf=-1.0),
            }
            out.update({f"ex|{kind}|{name}": v.detach().cpu().contiguous() for name, v in fields.items()})
        return out


class _BatchProgress:
    """Progress inside a batch, on the bar's postfix: the task (threat model, eps, attack) of how
    many, and the model's forward passes so far in this batch (every attack step, query or
    certifier draw costs at least one; counted by a forward hook removed when the batch ends)."""

    def __init__(self, bar: Any, tasks: int) -> None:
        self.bar, self.tasks = bar, tasks
        self.i, self.forwards, self.label, self.shown = 0, 0, "", 0.0

    def task(self, label: str) -> None:
        self.i += 1
        self.label = label
        self._show(force=True)

    def _count(self) -> None:
        self.forwards += 1
        self._show()

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.shown > 0.5:
            self.shown = now
            self.bar.set_postfix_str(f"{self.label} [{self.i}/{self.tasks}], {self.forwards} forward passes",
                                     refresh=True)

    @contextlib.contextmanager
    def watching(self, model: nn.Module) -> Iterator["_BatchProgress"]:
        """Count ``model``'s forward passes while the block runs."""
        self.i, self.forwards = 0, 0
        with counting_forwards(model, self._count):
            yield self


class _Runner:
    """Everything prepared (and validated) before the first batch."""

    def __init__(self, model: nn.Module, suite: Suite, shape: tuple[int, int, int], seed: int,
                 sources: Mapping[str, nn.Module]) -> None:
        self.model, self.suite, self.shape, self.seed, self.sources = model, suite, shape, seed, dict(sources)
        self.attacks = {}
        self.minimal = {}
        self.transfer = {}
        self.black_box: dict[tuple[str, float], Any] = {}  # Square per (norm, eps) where available
        self.black_box_method = {t.norm: checks_mod.black_box_method(t.norm) for t in suite.threats}
        queries = checks_mod.SQUARE_QUERIES_PER_DRAW * suite.checks.noise_draws
        for t in suite.threats:
            for e in t.eps:
                tm = ThreatModel(t.norm, e)
                for a in suite.attacks_for(t):
                    self.attacks[(t.norm, e, a)] = suite.build_attack(a, tm, seed)
                if suite.checks.enabled and self.black_box_method[t.norm] == "square":
                    self.black_box[(t.norm, e)] = suite.build_attack("square", tm, seed, queries=queries)
                if e in suite.transfer_at(t):
                    for s in self.sources:
                        self.transfer[(t.norm, e, s)] = _transfer_attack(suite, tm, seed)
            for a in suite.minimal:
                self.minimal[(t.norm, a)] = suite.build_minimal(a, t.norm, shape, seed)
        self.kinds = {t.norm: {a: attack_kind(self.attacks[(t.norm, t.eps[0], a)])
                               for a in suite.attacks_for(t)} for t in suite.threats}
        for t in suite.threats:
            for a in suite.minimal:
                self.kinds[t.norm].setdefault(a, attack_kind(self.minimal[(t.norm, a)]))
        self.certs = [(i, spec, certifier(spec.method), spec.resolved()) for i, spec in enumerate(suite.certifiers)]
        self.sources_names = display_sources(suite)
        checked = sum(len(t.eps) for t in suite.threats) if suite.checks.enabled else 0
        self.tasks = len(self.attacks) + checked + len(self.transfer) + len(self.minimal) + len(self.certs)

    def _store(self, rec: dict, show: Optional[_Show], kind: str, t: Threat, eps: Optional[float], name: str,
               x: Tensor, y: Tensor, x_adv: Tensor, seconds: float, attempt: bool, src: int) -> None:
        with eval_mode(self.model), torch.no_grad():
            logits = self.model(x_adv)  # (B, K)
        probs = logits.softmax(dim=1)
        pred = logits.argmax(dim=1)
        success = pred != y
        dist = ThreatModel(t.norm, 0.0).distance(x_adv, x)
        marg = margin(logits, y)
        rec[key(kind, t.norm, eps, name, "success")] = success.cpu()
        rec[key(kind, t.norm, eps, name, "distance")] = dist.float().cpu()
        rec[key(kind, t.norm, eps, name, "margin")] = marg.float().cpu()
        for norm, v in perturbation_norms(x_adv, x).items():
            rec[key(kind, t.norm, eps, name, norm)] = v.float().cpu()
        rec["time|" + key(kind, t.norm, eps, name, "seconds")] = torch.tensor([seconds], dtype=torch.float64)
        if show is not None:
            show.update(x_adv, success, dist, marg, pred, probs.amax(dim=1), float(eps) if eps is not None else -1.0,
                        src, attempt)

    def batch(self, x: Tensor, y: Tensor, start: int, b: int,
              progress: Optional[_BatchProgress] = None) -> dict[str, Tensor]:
        """Every result of one batch (images ``start..``, batch index ``b``: its seeds)."""
        def task(label: str) -> None:  # before each attack: the last one's freed memory goes back first
            release_memory()
            if progress is not None:
                progress.task(label)

        if progress is None:
            return self._batch(x, y, start, b, task)
        with progress.watching(self.model):
            return self._batch(x, y, start, b, task)

    def _batch(self, x: Tensor, y: Tensor, start: int, b: int, task: Any) -> dict[str, Tensor]:
        model, suite = self.model, self.suite
        with eval_mode(model), torch.no_grad():
            logits = model(x)
        clean_pred = logits.argmax(dim=1)
        clean_conf = logits.softmax(dim=1).amax(dim=1)
        rec: dict[str, Tensor] = {
            "clean|label": y.cpu(), "clean|pred": clean_pred.cpu(), "clean|conf": clean_conf.float().cpu(),
            "clean|index": torch.arange(start, start + x.shape[0]),
        }
        k = suite.exemplars
        show = _Show(x, clean_pred, clean_conf) if k > 0 else None
        gen = torch.Generator(device=x.device).manual_seed(_mix(self.seed, b))
        for ti, t in enumerate(suite.threats):
            s_show = show if ti == 0 else None
            names = suite.attacks_for(t)
            for e in t.eps:
                last = e == t.eps[-1]
                for a in names:
                    task(f"{t.norm} eps {e:g}: {a}")
                    t0 = time.perf_counter()
                    res = self.attacks[(t.norm, e, a)].attack(model, x, y)
                    self._store(rec, s_show, "attack", t, e, a, x, y, res.x_adv, time.perf_counter() - t0, last,
                                self.sources_names.index(a) if ti == 0 else -1)
                    if "broken_by" in res.info:  # a worst case over members: which member broke each image
                        rec[key("attack", t.norm, e, a, "broken_by")] = res.info["broken_by"].long().cpu()
                if suite.checks.enabled:
                    task(f"{t.norm} eps {e:g}: {black_box_label(self.black_box_method[t.norm])}")
                    t0 = time.perf_counter()
                    if (t.norm, e) in self.black_box:  # score-based Square, a modest query budget
                        x_noise = self.black_box[(t.norm, e)].attack(model, x, y).x_adv
                    else:
                        x_noise = _noise(model, x, y, ThreatModel(t.norm, e), suite.checks.noise_draws, gen)
                    label = black_box_label(self.black_box_method[t.norm])
                    self._store(rec, s_show, "noise", t, e, "noise", x, y, x_noise, time.perf_counter() - t0, False,
                                self.sources_names.index(label) if ti == 0 else -1)
                for s, source in (self.sources.items() if e in suite.transfer_at(t) else ()):
                    task(f"{t.norm} eps {e:g}: transfer from {s}")
                    t0 = time.perf_counter()
                    x_adv = self.transfer[(t.norm, e, s)].attack(source, x, y).x_adv
                    self._store(rec, s_show, "transfer", t, e, s, x, y, x_adv, time.perf_counter() - t0, False,
                                self.sources_names.index(f"transfer from {s}") if ti == 0 else -1)
            for a in suite.minimal:
                task(f"{t.norm}: {a} (minimal)")
                t0 = time.perf_counter()
                x_adv = self.minimal[(t.norm, a)].attack(model, x, y).x_adv
                self._store(rec, s_show, "minimal", t, UNBOUNDED, a, x, y, x_adv, time.perf_counter() - t0, False,
                            self.sources_names.index(f"{a} (minimal)") if ti == 0 else -1)
        for i, spec, entry, opts in self.certs:
            task(f"certify: {spec.method}")
            t0 = time.perf_counter()
            cert = entry.certify(model, x, opts, _mix(self.seed, b, i + 1))
            rec[f"cert|{i}|prediction"] = cert.prediction.long().cpu()
            rec[f"cert|{i}|radius"] = cert.radius.float().cpu()
            rec[f"cert|{i}|abstain"] = cert.abstain.bool().cpu()
            rec[f"time|cert|{i}|seconds"] = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if show is not None:
            rec.update(show.candidates(x, y, clean_pred == y, clean_pred, clean_conf, start, k))
        return rec


def _mix(*values: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    h = hashlib.sha256(",".join(str(int(v)) for v in values).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _transfer_attack(suite: Suite, tm: ThreatModel, seed: int):
    """The suite's transfer attack, running all its steps where it can (higher-confidence examples
    transfer better, Carlini & Wagner 2017); attacks without ``early_stop`` are built as they are."""
    try:
        return suite.build_attack(suite.transfer_attack, tm, seed, early_stop=False)
    except UnknownOption:
        return suite.build_attack(suite.transfer_attack, tm, seed)


def _noise(model: nn.Module, x: Tensor, y: Tensor, tm: ThreatModel, draws: int, gen: torch.Generator) -> Tensor:
    """Random points of the ball (linf: random vertices ``x + eps * sign(u)``; other norms: uniform
    in the ball), ``draws`` per image; returns the first that is misclassified, else the last draw."""
    out = x.clone()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with eval_mode(model), torch.no_grad():
        for _ in range(draws):
            if tm.norm == "linf":
                signs = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
                xn = tm.project(x + tm.eps * signs, x)
            else:
                xn = tm.random_start(x, gen)
            new = (model(xn).argmax(dim=1) != y) & ~fooled
            keep = new | ~fooled
            out[keep] = xn[keep]
            fooled |= new
    return out


# -- validation ------------------------------------------------------------------------------------


def _as_data(data: Any) -> tuple[Tensor, Tensor, dict]:
    from robustlab.models.metrics import as_tensors

    images, labels = as_tensors(data)
    info = {"name": str(getattr(data, "name", "tensors")), "split": getattr(data, "split", None),
            "classes": [str(c) for c in getattr(data, "classes", ())]}
    return images, labels, info


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"output directory {out} is not writable: {exc}") from exc


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


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def model_info(model: nn.Module) -> dict[str, Any]:
    """What a report says about a model: its class and parameter count, and its saved metadata
    (architecture, dataset, training configuration, metrics) without the per-epoch history."""
    meta = getattr(model, "metadata", None) or {}
    info = {"class": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters()))}
    keep = ("architecture", "dataset", "training", "metrics", "created", "robustlab_version", "weights_sha256",
            "description", "url", "homepage", "paper", "source")  # the page escapes them and links only http(s)
    info.update(_jsonable({k: meta[k] for k in keep if k in meta}))
    return info


# -- the public entry point ------------------------------------------------------------------------


def run(
    model: nn.Module,
    data: Any,
    suite: "str | Suite | os.PathLike[str]" = "quick",
    *,
    batch_size: int = 256,
    n: Optional[int] = None,
    device: "str | torch.device | None" = None,
    progress: bool = True,
    out: "str | os.PathLike[str] | None" = None,
    resume: bool = False,
    seed: int = 0,
    name: Optional[str] = None,
    norm: Optional[str] = None,
    eps: Optional[list[float]] = None,
    html: bool = True,
) -> Report:
    """Evaluate ``model`` on ``data`` with ``suite`` and return the :class:`~robustlab.report.Report`.

    Args:
        model: any ``nn.Module`` mapping images in [0, 1] (N, C, H, W) to logits; never modified
            (with ``device`` set and different from the model's, a copy is moved there).
        data: a :class:`robustlab.data.Dataset` or an ``(images, labels)`` pair of tensors.
        suite: ``"quick"``, ``"standard"``, a ``.toml`` path or a :class:`Suite`; ``norm`` /
            ``eps`` replace a preset's threat model.
        batch_size: images per batch (memory is bounded by it); ``n``: the first ``n`` images.
        out: folder for the per-batch records and, at the end, the report (``report.json``,
            ``index.html`` unless ``html=False``, figures). ``resume=True`` reuses the finished
            batches of an interrupted run with the same suite, data, model, batch size and seed.
        seed: seeds every attack, the noise draws and the certifiers.
        name: the model's name in the report (default: its saved name or class).

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
    check_positive(batch_size, "batch_size", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    images, labels, data_info = _as_data(data)
    if n is not None:
        check_positive(n, "n", integer=True)
        images, labels = images[:n], labels[:n]
    if images.shape[0] == 0:
        raise ValueError("data is empty; nothing to evaluate")
    check_images(images, "data images")
    check_labels(labels, images.shape[0], "data labels")
    suite = load_suite(suite, norm, eps, data_info["name"])
    shape = tuple(int(v) for v in images.shape[1:])
    suite.validate_for_input(shape)
    dev = torch.device(device) if device is not None else model_device(model, images.device)
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
    if resume and out is None:
        raise ValueError("resume=True needs out, the folder of the run to continue")
    runner = _Runner(model, suite, shape, seed, sources)  # builds every attack: bad options fail here
    name = name or str((getattr(model, "metadata", None) or {}).get("name") or type(model).__name__)

    manifest = {
        "records_version": RECORDS_VERSION, "suite": suite.to_dict(), "n": int(images.shape[0]), "batch_size": batch_size,
        "seed": seed, "fingerprint": _fingerprint(model, images, labels),
        "sources": {s: _fingerprint(m, images[:1], labels[:1])["model"] for s, m in sources.items()},
        "black_box": runner.black_box_method if suite.checks.enabled else {},
    }
    config = config_hash(manifest)
    manifest["config"] = config
    if out is None:
        return _evaluate(runner, model, images, labels, suite, name, data_info, shape, dev, seed, batch_size, progress,
                         None, False, config)
    out_dir = Path(out)
    main = distributed.is_main()
    # Rank 0 owns the folder (lock, manifest, clearing old batches); every rank writes its own batch
    # files. A refusal on rank 0 is broadcast, so all ranks fail with the same message.
    lock = OutputLock(out_dir) if main else None
    problem: Optional[str] = None
    if main:
        try:
            _check_writable(out_dir)
            lock.acquire()
            _prepare_records(out_dir / "records", manifest, resume)
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
        distributed.barrier()  # old batch files are gone before any rank writes a new one
        report = _evaluate(runner, model, images, labels, suite, name, data_info, shape, dev, seed, batch_size,
                           progress, out_dir / "records", resume, config)
        if main:
            report.save(out_dir, html=html)
    finally:
        if lock is not None:
            lock.release()
    return report


def _prepare_records(rec_dir: Path, manifest: dict, resume: bool) -> None:
    """Create ``rec_dir``; on ``resume`` refuse a folder started with another configuration, else
    delete its old batch files and probes; write the manifest."""
    rec_dir.mkdir(parents=True, exist_ok=True)
    mpath = rec_dir / "manifest.json"
    if mpath.is_file() and resume:
        try:
            old = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            old = None
            log.warning("%s cannot be read; resuming from the batch files that carry this run's configuration", mpath)
        if old is not None and old != json.loads(json.dumps(manifest)):
            raise ValueError(f"cannot resume {rec_dir.parent}: it was started with another suite, data, model, batch "
                             f"size or seed (delete {rec_dir} or drop --resume)")
    if not resume:
        for f in rec_dir.glob("batch_*.safetensors"):
            f.unlink()
        (rec_dir / "checks.json").unlink(missing_ok=True)
    atomic_write_text(mpath, json.dumps(manifest, indent=1) + "\n")


def _evaluate(runner: _Runner, model: nn.Module, images: Tensor, labels: Tensor, suite: Suite, name: str,
              data_info: dict, shape: tuple[int, int, int], dev: torch.device, seed: int, batch_size: int,
              progress: bool, rec_dir: Optional[Path], resume: bool, config: str) -> Report:
    """The batches (reused from ``rec_dir`` where ``resume`` finds them intact and of this
    ``config``), the check probes, and the report."""
    t_start = time.perf_counter()
    starts = list(range(0, images.shape[0], batch_size))
    mine = distributed.round_robin(len(starts))  # batch b of every rank count holds the same images and seeds
    done: list[tuple[int, bytes]] = []  # each batch's records packed into one safetensors blob (see below)
    reused, redone = 0, []
    world = distributed.world_size()
    desc = f"evaluate {name}" + (f" (rank 0 of {world})" if world > 1 else "")
    bar = tqdm(total=len(mine), desc=desc, unit="batch", disable=not progress or not distributed.is_main())
    # Log lines (a file that cannot be reused, ...) print above the bar, not into it.
    with logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext():
        for b in mine:
            i = starts[b]
            path = rec_dir / f"batch_{b:06d}.safetensors" if rec_dir is not None else None
            size = min(batch_size, images.shape[0] - i)
            found = resume and path is not None and path.is_file()
            rec = load_batch(path, config, b, size) if found else None
            if found and rec is None:
                redone.append(path.name)
            if rec is not None:
                reused += 1
                blob = st_save(rec)
            else:
                x, y = images[i : i + batch_size].to(dev), labels[i : i + batch_size].to(dev)
                rec = (runner.batch(x, y, i, b) if bar.disable
                       else runner.batch(x, y, i, b, _BatchProgress(bar, runner.tasks)))
                # Packed into one blob: the records are hundreds of small tensors allocated between the
                # attacks' large temporaries; kept as they are, they pin freed heap pages and peak memory
                # grows with the number of batches (fragmentation), while one blob per batch does not.
                blob = st_save({k: v.cpu() for k, v in rec.items()},
                               metadata={"config": config, "batch": str(b), "size": str(size)})
                del rec, x, y
                if path is not None:
                    atomic_write_bytes(path, blob)
                    _maybe_crash(len(done) + 1 - reused)
                release_memory()
            done.append((b, blob))
            bar.update(1)
    bar.close()
    if reused:
        log.info("resumed: reused %d of %d finished batches", reused, len(mine))
    if redone:
        log.warning("resumed: %d batch file(s) in %s could not be reused (unreadable, truncated, of another run or of "
                    "the wrong shape; each named above) and were recomputed: %s", len(redone), rec_dir,
                    ", ".join(redone))
    if world > 1:  # every rank's records on every rank (safetensors bytes): the check probes are shared
        blobs = distributed.broadcast_object([blob for _, blob in distributed.gather_bytes(done)])
        report = _finish(runner, model, images, labels, suite, name, data_info, shape, dev, seed, batch_size,
                         rec_dir, resume, config, [st_load(p) for p in blobs], t_start)
        return distributed.broadcast_object(report)  # rank 0's
    return _finish(runner, model, images, labels, suite, name, data_info, shape, dev, seed, batch_size, rec_dir,
                   resume, config, [st_load(blob) for _, blob in done], t_start)


def _maybe_crash(written: int) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return
    r, k = (int(v) for v in spec.split(":"))
    if r == distributed.rank() and written >= k:
        os._exit(17)


def _finish(runner: _Runner, model: nn.Module, images: Tensor, labels: Tensor, suite: Suite, name: str,
            data_info: dict, shape: tuple[int, int, int], dev: torch.device, seed: int, batch_size: int,
            rec_dir: Optional[Path], resume: bool, config: str, batches: list[dict[str, Tensor]],
            t_start: float) -> Optional[Report]:
    """The check probes (on the first ``checks.n`` images, reused from ``rec_dir`` on ``resume``)
    and the report, from every batch's records in order. Under torchrun every rank calls this with
    every record: the probes are dealt to the ranks, and only rank 0 returns a report (None elsewhere)."""
    records = Records.concat(batches)
    del batches  # the per-batch tensors go; the concatenated records stay
    main = distributed.is_main()

    probes: Optional[dict] = None
    if suite.checks.enabled:
        cpath = rec_dir / "checks.json" if rec_dir is not None else None
        if main and resume and cpath is not None and cpath.is_file():
            probes = _load_probes(cpath, config)
        if distributed.broadcast_object(probes is None):  # every rank probes, or none does
            m = min(suite.checks.n, images.shape[0])
            probes = checks_mod.probe(model, images[:m].to(dev), labels[:m].to(dev), suite, records, shape=shape,
                                      seed=seed, run_tasks=distributed.run_json_tasks)
            release_memory()
            if main and cpath is not None:
                atomic_write_text(cpath, json.dumps({"config": config, "probes": probes}, indent=1) + "\n")
    if not main:
        return None
    seconds = time.perf_counter() - t_start

    info = {"name": name, "model": model_info(model), "data": {**data_info, "n": int(images.shape[0]), "shape": list(shape)},
            "seed": seed, "batch_size": batch_size, "device": str(dev), "seconds": seconds,
            "sources": runner.sources_names, "black_box": runner.black_box_method, "kinds": runner.kinds}
    return make_report([model_report(suite, records, probes, info)], title=f"robustlab report: {name}")


# -- faults: the lock, the records' configuration, corrupt files ------------------------------------


def config_hash(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a run's configuration (suite, model and data fingerprints, seed, batch size, ...):
    the tag every per-batch record carries."""
    text = json.dumps({**manifest, "config": None}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_batch(path: Path, config: str, b: int, size: int) -> Optional[dict[str, Tensor]]:
    """The records of batch ``b`` from ``path`` if the file is intact and was written by a run of
    ``config``; else ``None`` after a warning that names the file (the batch is then recomputed)."""
    rec = read_record(path, config, "batch", b)
    if rec is None:
        return None
    label = rec.get("clean|label")
    if label is None or label.shape != (size,) or any(
            t.ndim == 0 or (t.shape[0] != size and not (k.startswith("time|") or k.startswith("ex|")))
            for k, t in rec.items()):
        log.warning("%s holds records of the wrong shape for batch %d (%d images); recomputing that batch", path, b,
                    size)
        return None
    return rec


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """Hold ``out/.robustlab.lock`` (pid, host, start time) while a run writes into ``out``.

    Created atomically (``os.link`` of a finished temporary file, so no reader ever sees it half
    written). A lock held by a live process, or by this one (another run in the same process), makes
    :meth:`acquire` raise ``FileExistsError`` naming the holder; a lock whose process is gone (same
    host) is stale and taken over. Released on exit, also after an error or an interruption."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self.held = False

    def _holder(self) -> Optional[dict]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return {}

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    holder = self._holder()
                    if holder is None:
                        continue  # released meanwhile: try again
                    pid, host = holder.get("pid"), holder.get("host")
                    alive = not isinstance(pid, int) or host != me["host"] or pid == me["pid"] or _pid_alive(pid)
                    if alive:
                        raise FileExistsError(
                            f"output folder {self.path.parent} is in use by another robustlab run (pid {pid} on "
                            f"{host}, started {holder.get('started', '?')}); wait for it to finish or choose another "
                            f"output folder (if no such run exists, delete {self.path})") from None
                    log.warning("taking over the stale lock %s of pid %s, which no longer runs", self.path, pid)
                    os.replace(tmp, self.path)
                    self.held = True
                    return
            raise FileExistsError(f"could not lock output folder {self.path.parent}: {self.path} keeps changing")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
