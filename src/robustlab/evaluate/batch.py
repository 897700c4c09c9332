"""The work of one batch of ``robustlab evaluate``: every attack of the suite at every eps, the
black-box baseline, transfer examples, minimal-norm attacks and certifiers, each kept as small
per-image records (success, distance, margin, the perturbation's norms; :mod:`robustlab.evaluate.records`),
and the images the report may show.

:class:`BatchRunner` builds (and so validates) every attack before the first batch; its
:meth:`~BatchRunner.batch` is the ``compute`` of one unit of :func:`robustlab.evaluate.shards.run_units`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from typing import Any, Iterator, Mapping, NamedTuple, Optional

import torch
from torch import Tensor, nn

from robustlab.attacks.registry import UnknownOption
from robustlab.evaluate import checks as checks_mod
from robustlab.evaluate.metrics import perturbation_norms
from robustlab.evaluate.records import UNBOUNDED, attack_kind, key
from robustlab.evaluate.shards import counting_forwards, release_memory
from robustlab.evaluate.suite import Suite, Threat, certifier
from robustlab.losses import margin
from robustlab.model_ops import eval_mode
from robustlab.threat import ThreatModel


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


class Slot(NamedTuple):
    """Where a result is recorded: ``kind`` (attack, noise, transfer, minimal), the threat, its eps
    (:data:`~robustlab.evaluate.records.UNBOUNDED` for minimal-norm attacks) and the result's name."""

    kind: str
    threat: Threat
    eps: Optional[float]
    name: str


class Outcome(NamedTuple):
    """What an adversarial candidate does, per image: fooled, distance, margin, prediction, confidence."""

    x_adv: Tensor
    success: Tensor
    dist: Tensor
    margin: Tensor
    pred: Tensor
    conf: Tensor


class Shown:
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

    def update(self, seen: "Outcome", eps: float, src: int, attempt: bool) -> None:
        """Keep ``seen``'s point for the images where it is the best to show so far: adversarial at a
        smaller distance, or (``attempt``) a failed attempt with a smaller margin."""
        x_adv, success, pred, conf = seen.x_adv, seen.success, seen.pred, seen.conf
        dist, marg = seen.dist.double(), seen.margin.double()
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


class BatchProgress:
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
    def watching(self, model: nn.Module) -> Iterator["BatchProgress"]:
        """Count ``model``'s forward passes while the block runs."""
        self.i, self.forwards = 0, 0
        with counting_forwards(model, self._count):
            yield self


class BatchRunner:
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
                        self.transfer[(t.norm, e, s)] = transfer_attack(suite, tm, seed)
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

    def _store(self, rec: dict, slot: "Slot", x: Tensor, y: Tensor, x_adv: Tensor, seconds: float) -> "Outcome":
        """Record what ``x_adv`` does to the model under ``slot``'s keys; return it for the grids."""
        kind, t, eps, name = slot
        with eval_mode(self.model), torch.no_grad():
            logits = self.model(x_adv)  # (B, K)
        pred = logits.argmax(dim=1)
        seen = Outcome(x_adv, pred != y, ThreatModel(t.norm, 0.0).distance(x_adv, x), margin(logits, y), pred,
                       logits.softmax(dim=1).amax(dim=1))
        rec[key(kind, t.norm, eps, name, "success")] = seen.success.cpu()
        rec[key(kind, t.norm, eps, name, "distance")] = seen.dist.float().cpu()
        rec[key(kind, t.norm, eps, name, "margin")] = seen.margin.float().cpu()
        for norm, v in perturbation_norms(x_adv, x).items():
            rec[key(kind, t.norm, eps, name, norm)] = v.float().cpu()
        rec["time|" + key(kind, t.norm, eps, name, "seconds")] = torch.tensor([seconds], dtype=torch.float64)
        return seen

    def batch(self, x: Tensor, y: Tensor, start: int, b: int,
              progress: Optional[BatchProgress] = None) -> dict[str, Tensor]:
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
        show = Shown(x, clean_pred, clean_conf) if k > 0 else None
        gen = torch.Generator(device=x.device).manual_seed(mix_seed(self.seed, b))
        s_show = show  # the grids show the first threat model's images

        def keep(slot: Slot, x_adv: Tensor, t0: float, label: str, attempt: bool = False) -> None:
            seen = self._store(rec, slot, x, y, x_adv, time.perf_counter() - t0)
            if s_show is not None:
                s_show.update(seen, float(slot.eps) if slot.eps is not None else -1.0, self.sources_names.index(label),
                              attempt)

        for ti, t in enumerate(suite.threats):
            s_show = show if ti == 0 else None
            names = suite.attacks_for(t)
            for e in t.eps:
                last = e == t.eps[-1]
                for a in names:
                    task(f"{t.norm} eps {e:g}: {a}")
                    t0 = time.perf_counter()
                    res = self.attacks[(t.norm, e, a)].attack(model, x, y)
                    keep(Slot("attack", t, e, a), res.x_adv, t0, a, last)
                    if "broken_by" in res.info:  # a worst case over members: which member broke each image
                        rec[key("attack", t.norm, e, a, "broken_by")] = res.info["broken_by"].long().cpu()
                if suite.checks.enabled:
                    task(f"{t.norm} eps {e:g}: {black_box_label(self.black_box_method[t.norm])}")
                    t0 = time.perf_counter()
                    if (t.norm, e) in self.black_box:  # score-based Square, a modest query budget
                        x_noise = self.black_box[(t.norm, e)].attack(model, x, y).x_adv
                    else:
                        x_noise = noise_points(model, x, y, ThreatModel(t.norm, e), suite.checks.noise_draws, gen)
                    keep(Slot("noise", t, e, "noise"), x_noise, t0, black_box_label(self.black_box_method[t.norm]))
                for s, source in (self.sources.items() if e in suite.transfer_at(t) else ()):
                    task(f"{t.norm} eps {e:g}: transfer from {s}")
                    t0 = time.perf_counter()
                    x_adv = self.transfer[(t.norm, e, s)].attack(source, x, y).x_adv
                    keep(Slot("transfer", t, e, s), x_adv, t0, f"transfer from {s}")
            for a in suite.minimal:
                task(f"{t.norm}: {a} (minimal)")
                t0 = time.perf_counter()
                x_adv = self.minimal[(t.norm, a)].attack(model, x, y).x_adv
                keep(Slot("minimal", t, UNBOUNDED, a), x_adv, t0, f"{a} (minimal)")
        for i, spec, entry, opts in self.certs:
            task(f"certify: {spec.method}")
            t0 = time.perf_counter()
            cert = entry.certify(model, x, opts, mix_seed(self.seed, b, i + 1))
            rec[f"cert|{i}|prediction"] = cert.prediction.long().cpu()
            rec[f"cert|{i}|radius"] = cert.radius.float().cpu()
            rec[f"cert|{i}|abstain"] = cert.abstain.bool().cpu()
            rec[f"time|cert|{i}|seconds"] = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if show is not None:
            rec.update(show.candidates(x, y, clean_pred == y, clean_pred, clean_conf, start, k))
        return rec


def mix_seed(*values: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    h = hashlib.sha256(",".join(str(int(v)) for v in values).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def transfer_attack(suite: Suite, tm: ThreatModel, seed: int):
    """The suite's transfer attack, running all its steps where it can (higher-confidence examples
    transfer better, Carlini & Wagner 2017); attacks without ``early_stop`` are built as they are."""
    try:
        return suite.build_attack(suite.transfer_attack, tm, seed, early_stop=False)
    except UnknownOption:
        return suite.build_attack(suite.transfer_attack, tm, seed)


def noise_points(model: nn.Module, x: Tensor, y: Tensor, tm: ThreatModel, draws: int, gen: torch.Generator) -> Tensor:
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
