"""Records -> Report: the pure functions that turn the per-sample records of one evaluation into the
numbers of a :class:`~robustlab.report.schema.ModelReport` (robust accuracy per attack and eps, the
worst case, robustness intervals, certified accuracy, exemplars, the checks' findings and verdicts).

This is where evaluation ends: ``robustlab.report`` only defines, stores and renders what comes out
of here, and never imports ``robustlab.evaluate``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import torch

from robustlab.certificates import Certificate
from robustlab.evaluate import checks, metrics
from robustlab.evaluate.sections import cert_report
from robustlab.evaluate.records import UNBOUNDED, Records, black_box_success, white_box_success
from robustlab.report.assemble import report
from robustlab.report.schema import (
    AttackRow,
    CertReport,
    DataInfo,
    EncodedImage,
    EpsRow,
    Exemplar,
    ModelReport,
    ThreatReport,
)

if TYPE_CHECKING:
    from robustlab.evaluate.suite import Suite

__all__ = ["model_report", "report"]

#: The black-box baseline's method (as recorded by ``evaluate.run``) -> its name in the report.
BLACK_BOX_LABEL = {"square": "square", "noise": "random noise"}


_log = logging.getLogger(__name__)

def _round(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


def _black_box_members(kinds: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The suite's attacks that only query the model, and query-based members of its worst cases
    (``standard: Square``): they count as black box, never as white box."""
    out = []
    for a in dict.fromkeys(names):
        k = kinds.get(a)
        if k is None:
            continue
        if k.get("members"):
            out += [f"{a}: {m}" for m, q in k["members"] if q]
        elif k.get("query_based"):
            out.append(a)
    return out


@dataclass(frozen=True)
class _Threat:
    """One threat model's records as the summaries read them: the correct images, each image's
    smallest adversarial distance over every result (``md_all``), over white-box results only
    (``md_wb``) and over the suite's query-based results (``md_bb``), and its query-based members."""

    suite: "Suite"
    t: Any
    records: Records
    correct: torch.Tensor
    md_all: torch.Tensor
    md_wb: torch.Tensor
    md_bb: torch.Tensor
    members: list[str]


def _distances(suite: "Suite", t, records: Records, kinds: Mapping[str, Mapping[str, Any]]) -> _Threat:
    """The per-image smallest adversarial distances of ``t``: over everything, white-box only and
    query-based only (the union of every eps's results and the minimal-norm attacks')."""
    correct = records.correct
    attacks = list(suite.attacks_for(t))
    found_all: list[torch.Tensor] = []
    found_wb: list[torch.Tensor] = []
    found_bb: list[torch.Tensor] = []  # the suite's own query-based attacks and members

    def found(kind: str, eps: Optional[float], name: str, success: Optional[torch.Tensor] = None) -> torch.Tensor:
        s = records.get(kind, t.norm, eps, name, "success") if success is None else success
        return metrics.found_distance(correct, s, records.get(kind, t.norm, eps, name, "distance"))

    for e in t.eps:
        found_all += [found("attack", e, a) for a in attacks]
        found_wb += [found("attack", e, a, white_box_success(records, kinds, "attack", t.norm, e, a)) for a in attacks]
        found_bb += [found("attack", e, a, black_box_success(records, kinds, "attack", t.norm, e, a)) for a in attacks]
        if suite.checks.enabled:
            found_all.append(found("noise", e, "noise"))
        if e in suite.transfer_at(t):
            found_all += [found("transfer", e, s) for s in suite.transfer]
    for a in suite.minimal:
        found_all.append(found("minimal", UNBOUNDED, a))
        found_wb.append(found("minimal", UNBOUNDED, a, white_box_success(records, kinds, "minimal", t.norm, UNBOUNDED, a)))
        found_bb.append(found("minimal", UNBOUNDED, a, black_box_success(records, kinds, "minimal", t.norm, UNBOUNDED, a)))
    members = _black_box_members(kinds.get(t.norm, {}), [*attacks, *suite.minimal])
    return _Threat(suite, t, records, correct, metrics.min_distance(correct, found_all),
                   metrics.min_distance(correct, found_wb), metrics.min_distance(correct, found_bb), members)


def _eps_row(d: _Threat, e: float, baseline: str) -> tuple[EpsRow, Optional[tuple], Optional[tuple]]:
    """The row of eps ``e`` and what the black-box and transfer checks count there: the images only
    black-box search (``baseline``: the checks' baseline; the suite's query-based attacks and
    members) or only transfer broke while every gradient attack failed."""
    suite, t, records, correct = d.suite, d.t, d.records, d.correct
    index, n_correct = records.index, int(correct.sum())
    arows = []
    for a in suite.attacks_for(t):
        s = records.get("attack", t.norm, e, a, "success")
        hit = s & correct
        arows.append(AttackRow(
            attack=a, robust=metrics.robust_accuracy(correct, s), success=metrics.success_rate(correct, s),
            distance=metrics.summary(records.get("attack", t.norm, e, a, "distance")[hit]),
            norms={nm: metrics.summary(records.get("attack", t.norm, e, a, nm)[hit]) for nm in ("linf", "l2", "l0")},
            seconds=_round(records.seconds("attack", t.norm, e, a)),
        ))
    wb_robust = metrics.robust_at(correct, d.md_wb, e)
    noise_rate, noise_count, transfer_count = None, None, None
    black = {}  # per black-box source: the correct images it broke that no gradient attack broke
    if suite.checks.enabled:
        sn = records.get("noise", t.norm, e, "noise", "success")
        noise_rate = metrics.robust_accuracy(correct, sn)
        black["baseline"] = sn & correct & wb_robust
    if d.members:
        black["suite"] = correct & wb_robust & metrics.within(d.md_bb, e)
    if black:
        only = torch.zeros_like(correct)
        for m in black.values():
            only |= m
        sources = {(f"{baseline} (baseline)" if k == "baseline" else ", ".join(d.members)): int(m.sum())
                   for k, m in black.items()}
        noise_count = (e, int(only.sum()), n_correct, {"white_robust": int((correct & wb_robust).sum()),
                                                       "sources": sources,
                                                       "indices": [int(i) for i in index[only].tolist()][:20]})
    transfer = {}
    only_transfer = torch.zeros_like(correct)
    sources = list(suite.transfer) if e in suite.transfer_at(t) else []
    for s in sources:
        st = records.get("transfer", t.norm, e, s, "success")
        transfer[s] = metrics.robust_accuracy(correct, st)
        only_transfer |= st & correct & wb_robust
    if sources:
        transfer_count = (e, int(only_transfer.sum()), n_correct,
                          {"white_robust": int((correct & wb_robust).sum()),
                           "indices": [int(i) for i in index[only_transfer].tolist()][:20]})
    row = EpsRow(eps=e, attacks=arows, worst_case=metrics.rate(metrics.robust_at(correct, d.md_all, e)),
                 white_box=metrics.rate(wb_robust), noise=noise_rate, transfer=transfer)
    return row, noise_count, transfer_count


def _certified_lower(d: _Threat, dim: int, certs: Sequence[tuple[Any, CertReport, Any]]) -> tuple[torch.Tensor, list[str]]:
    """Per image, the largest certified radius of the model's certificates in ``t``'s norm
    (converted by the norms' inequality), capped by the smallest adversarial distance found."""
    t, md_all = d.t, d.md_all
    lower = torch.zeros_like(md_all)
    lower_from = []
    for spec, rep, entry in certs:
        if entry.certifies != "model":
            continue
        factor = metrics.norm_factor(rep.norm, t.norm, dim)
        if factor is None:
            continue
        r = torch.tensor(rep.per_sample_radius, dtype=torch.float64) / factor
        ok = torch.tensor(rep.per_sample_prediction) == d.records.labels
        lower = torch.maximum(lower, torch.where(ok, r, torch.zeros_like(r)))
        lower_from.append(rep.label)
    # A sound certificate never exceeds a distance at which the attacks found an adversarial example;
    # if one does, say so loudly (an unsound certifier), then keep the interval consistent.
    unsound = lower > md_all * (1 + 1e-6)
    if bool(unsound.any()):
        _log.warning("%s: %d certified radii (%s) exceed an adversarial distance the attacks found; the "
                     "certifier is unsound for these images and their radius is cut to that distance",
                     t.norm, int(unsound.sum()), ", ".join(lower_from))
    return torch.minimum(lower, md_all), lower_from


def _threat_report(suite: "Suite", t, records: Records, dim: int, certs: Sequence[tuple[Any, CertReport, Any]],
                   kinds: Mapping[str, Mapping[str, Any]], baseline: str) -> tuple[ThreatReport, dict]:
    """One threat model's rows and robustness intervals, and what its checks need (``aux``): per
    attack the robust-accuracy curve, the per-eps union of the suite's attacks, and per eps the images
    only black-box search or only transfer broke while every gradient attack failed (:func:`_eps_row`)."""
    d = _distances(suite, t, records, kinds)
    correct, md_all = d.correct, d.md_all
    attacks = list(suite.attacks_for(t))
    rows, noise_counts, transfer_counts = [], [], []
    for e in t.eps:
        row, noise_count, transfer_count = _eps_row(d, e, baseline)
        rows.append(row)
        noise_counts += [noise_count] if noise_count is not None else []
        transfer_counts += [transfer_count] if transfer_count is not None else []
    lower, lower_from = _certified_lower(d, dim, certs)
    unbroken = correct & torch.isinf(md_all)
    report = ThreatReport(
        norm=t.norm, eps=list(t.eps), attacks=attacks, minimal=list(suite.minimal), rows=rows,
        min_distance=metrics.summary(md_all[correct]), unbroken=metrics.rate(unbroken),
        per_sample_upper=[None if math.isinf(v) else _round(v) for v in md_all.tolist()],
        per_sample_lower=[_round(v) for v in lower.tolist()], lower_from=lower_from, black_box_members=d.members,
    )
    curves = {a.attack: [] for a in rows[0].attacks}
    for row in rows:
        for a in row.attacks:
            curves[a.attack].append(a.robust)
    union = []
    for e in t.eps:  # robust against every white-box attack run at this eps (not cumulative over eps)
        hit = torch.zeros_like(correct)
        for a in attacks:
            hit |= records.get("attack", t.norm, e, a, "success")
        union.append(metrics.rate(correct & ~hit))
    return report, {"curves": curves, "noise": noise_counts, "transfer": transfer_counts, "union": union}


def _cert_reports(suite: "Suite", records: "Records") -> list[tuple[Any, CertReport, Any]]:
    from robustlab.evaluate.suite import certifier

    out = []
    labels = records.labels
    for i, spec in enumerate(suite.certifiers):
        entry = certifier(spec.method)
        opts = spec.resolved()
        pred = records.tensors[f"cert|{i}|prediction"]
        radius = records.tensors[f"cert|{i}|radius"]
        abstain = records.tensors[f"cert|{i}|abstain"]
        ok = (pred == labels) & ~abstain
        top = float(radius[ok].max()) if bool(ok.any()) else 0.0
        if "sigma" in opts and "n" in opts and "alpha" in opts:  # the largest radius n samples can certify
            from scipy.stats import norm as _norm

            top = max(top, float(opts["sigma"] * _norm.ppf(opts["alpha"] ** (1.0 / opts["n"]))))
        radii = metrics.radius_grid(top if top > 0 else 1.0)
        cert = Certificate(pred, radius, abstain.bool(), norm=entry.norm, alpha=float(opts.get("alpha", 0.0)))
        rep = cert_report(cert, labels, radii, method=spec.method, label=spec.label, certifies=entry.certifies,
                          options=opts, seconds=records.times.get(f"cert|{i}|seconds", 0.0))
        out.append((spec, rep, entry))
    return out


#: The report keeps exemplar images no larger than this on their longer side (a 512x512 pair is 2 MB of
#: float16 base64 in report.json; the page shows them at a few hundred pixels anyway).
EXEMPLAR_MAX_SIDE = 256


def _for_display(img: torch.Tensor) -> torch.Tensor:
    """``img`` (C, H, W), area-downsampled to :data:`EXEMPLAR_MAX_SIDE` on its longer side if larger.
    Only the picture shrinks: the distances and predictions shown with it are the full-size image's."""
    h, w = int(img.shape[-2]), int(img.shape[-1])
    if max(h, w) <= EXEMPLAR_MAX_SIDE:
        return img
    scale = EXEMPLAR_MAX_SIDE / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(img[None].float(), size=size, mode="area")[0].clamp(0, 1)


def _exemplars(records: "Records", suite: "Suite", sources: Sequence[str], k: int) -> list[Exemplar]:
    ex = records.exemplars
    out = []
    norm = suite.threats[0].norm
    for kind, descending, label in (("least", False, "least-robust"), ("most", True, "most-robust")):
        if f"ex|{kind}|score" not in ex or ex[f"ex|{kind}|score"].numel() == 0:
            continue
        order = ex[f"ex|{kind}|score"].argsort(descending=descending)[:k]
        for j in order.tolist():
            g = {name: ex[f"ex|{kind}|{name}"][j] for name in ("index", "x", "adv", "label", "clean_pred", "clean_conf",
                                                             "adv_pred", "adv_conf", "eps", "src", "success", "dist")}
            src = int(g["src"])
            out.append(Exemplar(
                kind=label, index=int(g["index"]), label=int(g["label"]), norm=norm,
                eps=_round(float(g["eps"])), attack=sources[src] if 0 <= src < len(sources) else "none",
                success=bool(g["success"]), distance=_round(max(float(g["dist"]), 0.0)),
                clean_pred=int(g["clean_pred"]), clean_conf=_round(float(g["clean_conf"]), 4),
                adv_pred=int(g["adv_pred"]), adv_conf=_round(float(g["adv_conf"]), 4),
                image=EncodedImage.encode(_for_display(g["x"])), adversarial=EncodedImage.encode(_for_display(g["adv"])),
            ))
    return out


def model_report(suite: "Suite", records: "Records", probes: Optional[Mapping[str, Any]], info: Mapping[str, Any]
                 ) -> ModelReport:
    """One model's report from its records, the check probes and facts about the run (``info``:
    name, model, data, seed, batch_size, device, seconds, sources, ``black_box``: per norm, the
    method behind the ``noise`` records, ``"square"`` or ``"noise"``, and ``kinds``: per norm and
    attack, :func:`robustlab.evaluate.records.attack_kind`, which tells gradient attacks from
    query-based ones).

    Each threat model gets its own findings and verdict (its findings and the model-wide ones:
    input gradients, determinism); the model's verdict covers them all."""
    data = info["data"]
    shape = [int(v) for v in data["shape"]]
    dim = int(shape[0] * shape[1] * shape[2])
    certs = _cert_reports(suite, records)
    threats, aux = [], []
    black_box = dict(info.get("black_box", {}))
    kinds = dict(info.get("kinds", {}))
    for t in suite.threats:
        baseline = BLACK_BOX_LABEL.get(black_box.get(t.norm, "noise"), "random noise")
        tr, extra = _threat_report(suite, t, records, dim, certs, kinds, baseline)
        threats.append(tr)
        aux.append(extra)
    found: list = []
    if suite.checks.enabled:
        wide = checks.model_findings(probes)
        for t, tr, extra in zip(suite.threats, threats, aux):
            probe_t = probes["threats"].get(t.key) if probes is not None else None
            method = BLACK_BOX_LABEL.get(black_box.get(t.norm, "noise"), "random noise")
            tr.black_box = method
            what = method + "".join(f" and {m}" for m in tr.black_box_members)
            own = checks.threat_findings(probe_t, extra["curves"], list(t.eps), t.norm, extra["noise"],
                                         extra["transfer"], extra["union"], what)
            tr.verdict = checks.verdict(own + wide)
            found += own
        found += wide
    notes = []
    if not suite.checks.enabled:
        notes.append("Gradient-masking checks were switched off for this run.")
    for spec, rep, entry in certs:
        if entry.certifies == "smoothed":
            notes.append(f"{rep.label} certifies the smoothed classifier g(x) = argmax_c P(f(x + noise) = c), not the "
                         "model itself, so its radii are reported on their own and not used as lower bounds of the "
                         "model's robustness intervals.")
    return ModelReport(
        name=str(info["name"]), model=dict(info.get("model", {})),
        data=DataInfo(str(data["name"]), data.get("split"), int(data["n"]), shape, [str(c) for c in data["classes"]]),
        suite=suite.to_dict(), seed=int(info.get("seed", 0)), batch_size=int(info.get("batch_size", 0)),
        device=str(info.get("device", "cpu")), seconds=_round(float(info.get("seconds", 0.0))),
        clean=metrics.rate(records.correct), threats=threats, certificates=[rep for _, rep, _ in certs],
        checks=found, verdict=checks.verdict(found), exemplars=_exemplars(records, suite, info.get("sources", []),
                                                                          suite.exemplars),
        labels=[int(v) for v in records.labels.tolist()], clean_pred=[int(v) for v in records.clean_pred.tolist()],
        notes=notes,
    )


