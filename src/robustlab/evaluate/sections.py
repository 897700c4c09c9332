"""The sections of the one Report that ``robustlab attack``, ``certify``, ``verify`` and ``detect``
write, computed from their per-sample results: pure functions, like :mod:`robustlab.evaluate.summarize`
for ``evaluate``, and every rate through :mod:`robustlab.evaluate.metrics` (the report's one
interval method, Wilson's 95% interval).

- :func:`attack_run`: an :class:`~robustlab.attacks.AttackResult` -> :class:`AttackRun`;
- :func:`cert_report`: a :class:`~robustlab.certificates.Certificate` -> :class:`CertReport` (any
  certifier: smoothing fixed / adaptive / two-class, PixelDP, IBP / CROWN / alpha-CROWN / LP / MILP);
- :func:`verification`: per-image or per-instance outcomes -> :class:`VerificationReport`;
- :func:`detection`: per (detector, attack, adaptive) counts and ROC -> :class:`DetectionReport`;
- :func:`model_section`: one :class:`ModelReport` holding a command's :class:`Sections`, for a
  :class:`CommandRun`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from robustlab.certificates import Certificate
from robustlab.evaluate import metrics
from robustlab.evaluate.model_facts import model_info
from robustlab.report.schema import (
    COMMANDS,
    VERIFICATION_STATUSES,
    AttackRow,
    AttackRun,
    CertReport,
    DataInfo,
    DetectionReport,
    DetectionRow,
    ModelReport,
    Rate,
    VerificationReport,
    Verdict,
)

__all__ = ["CommandRun", "Sections", "attack_run", "cert_report", "detection", "detection_row", "model_section",
           "verification", "verification_status"]


def _round(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


def attack_run(attack: str, result: Any, x: Tensor, *, eps: Optional[float], config: Mapping[str, Any],
               seconds: float, examples: Optional[str] = None) -> AttackRun:
    """The section of one run of ``attack``: ``result`` (an :class:`~robustlab.attacks.AttackResult`
    over the clean images ``x``, in order), ``eps`` (``None``: a minimal-norm search), the attack's
    ``config``, its wall time and the path of the exported examples. Robust: correct and the attack
    failed; success: among the correct images; distances and norms over the examples found on them."""
    correct = result.clean_correct.bool().cpu()
    success = result.success.bool().cpu()
    found = correct & success
    norms = metrics.perturbation_norms(result.x_adv.detach().cpu().float(), x.detach().cpu().float())
    row = AttackRow(
        attack=str(attack),
        robust=metrics.robust_accuracy(correct, success), success=metrics.success_rate(correct, success),
        distance=metrics.summary(result.distance.cpu()[found]),
        norms={k: metrics.summary(v[found]) for k, v in norms.items()}, seconds=_round(seconds),
    )
    queries = None if result.queries is None else metrics.summary(result.queries.cpu().double()[correct])
    distance = result.distance.detach().double().cpu()
    return AttackRun(
        norm=str(result.norm), eps=None if eps is None else float(eps), result=row, config=_json_native(config),
        iterations=metrics.summary(result.iterations.cpu().double()), queries=queries, examples=examples,
        per_sample_success=[bool(v) for v in success.tolist()],
        per_sample_distance=[_round(float(d)) if s and math.isfinite(float(d)) else None
                             for d, s in zip(distance.tolist(), success.tolist())],
    )


def cert_report(cert: Certificate, labels: Tensor, radii: Sequence[float], *, method: str, label: str,
                certifies: str, options: Mapping[str, Any], seconds: float) -> CertReport:
    """A certifier's section from its :class:`~robustlab.certificates.Certificate` (norm, alpha,
    per-sample predictions, radii, abstentions): certified accuracy (prediction correct, not
    abstained, radius >= r) at each of ``radii``, the accuracy of the certified predictions, the
    abstain rate, the radius distribution of the correct certified predictions and the per-sample
    radii (0 where abstained) and predictions. ``certifies``: ``"model"`` or ``"smoothed"``."""
    if certifies not in ("model", "smoothed"):
        raise ValueError(f"certifies must be 'model' or 'smoothed', got {certifies!r}")
    labels, prediction, radius, abstain = labels.cpu(), cert.prediction.cpu(), cert.radius.cpu(), cert.abstain.cpu()
    if not bool(torch.isfinite(radius[~abstain]).all()):  # "every radius asked about": the largest one asked
        radius = torch.where(torch.isinf(radius), torch.full_like(radius, max(map(float, radii), default=0.0)), radius)
    ok = (prediction == labels) & ~abstain
    return CertReport(
        method=method, label=label, norm=cert.norm, certifies=certifies, alpha=cert.alpha, options=_json_native(options),
        radii=[_round(float(r)) for r in radii],
        certified_accuracy=metrics.certified_curve(labels, prediction, radius, abstain, radii),
        accuracy=metrics.rate(ok), abstain=metrics.rate(abstain), radius=metrics.summary(radius[ok]),
        seconds=_round(seconds),
        per_sample_radius=[_round(v) for v in torch.where(abstain, torch.zeros_like(radius), radius).tolist()],
        per_sample_prediction=[int(v) for v in prediction.tolist()],
    )


#: Raw answers of the verifiers -> :data:`~robustlab.report.schema.VERIFICATION_STATUSES`: VNN-COMP's
#: unsat / sat, the MILP's counterexample, a bound method's "not verified" (it could not prove).
_STATUS = {"verified": "verified", "unsat": "verified", "falsified": "falsified", "sat": "falsified",
           "counterexample": "falsified", "unknown": "unknown", "not verified": "unknown", "timeout": "timeout"}


def verification_status(raw: str) -> str:
    """The report's status of a verifier's answer (``unsat`` -> verified, ``sat`` / ``counterexample``
    -> falsified, ``not verified`` -> unknown, ``timeout``)."""
    try:
        return _STATUS[str(raw)]
    except KeyError:
        raise ValueError(f"unknown verification answer {raw!r}; expected one of {', '.join(_STATUS)}") from None


def verification(*, method: str, norm: Optional[str], eps: Optional[float], options: Mapping[str, Any],
                 items: Sequence[str], statuses: Sequence[str], seconds: Sequence[float]) -> VerificationReport:
    """Verification outcomes per item (an image index or a VNN-COMP instance): ``statuses`` are the
    verifiers' answers (mapped by :func:`verification_status`), ``seconds`` each item's time."""
    if not len(items) == len(statuses) == len(seconds):
        raise ValueError(f"items, statuses and seconds must have one entry per item, got {len(items)}, "
                         f"{len(statuses)} and {len(seconds)}")
    status = [verification_status(s) for s in statuses]
    n = len(status)
    counts = {s: status.count(s) for s in VERIFICATION_STATUSES}
    return VerificationReport(
        method=method, norm=norm, eps=None if eps is None else float(eps), options=_json_native(options),
        items=[str(i) for i in items], statuses=status, seconds=[_round(float(s)) for s in seconds], counts=counts,
        verified=metrics.rate_counts(counts["verified"], n), falsified=metrics.rate_counts(counts["falsified"], n),
        total_seconds=_round(float(sum(seconds))),
    )


def detection_row(record: Mapping[str, Any]) -> DetectionRow:
    """One row from a detection record (:func:`robustlab.evaluate.detection.detection_record` plus the
    detector, attack and adaptive flag): counts -> Rates."""
    n_correct = int(record["n_correct"])
    found = int(record["attack_success"])
    roc = record.get("roc") or {"fpr": [], "tpr": []}
    detected = fp = None
    if record.get("detection_rate") is not None:
        n_adv, n_clean = int(record["n_adversarial"]), int(record["n_clean"])
        detected = metrics.rate_counts(round(float(record["detection_rate"]) * n_adv), n_adv)
        fp = metrics.rate_counts(round(float(record["fpr"]) * n_clean), n_clean)
    return DetectionRow(
        detector=str(record["detector"]), attack=str(record["attack_name"]), adaptive=bool(record["adaptive"]),
        detection=detected, false_positive=fp, auc=None if record.get("auc") is None else _round(float(record["auc"])),
        evasion=metrics.rate_counts(int(record["evaded"]), n_correct), success=metrics.rate_counts(found, n_correct),
        roc_fpr=[_round(float(v)) for v in roc["fpr"]], roc_tpr=[_round(float(v)) for v in roc["tpr"]],
        seconds=_round(float(record.get("seconds", 0.0))), config=_json_native(record.get("config", {})),
        detector_config=_json_native(record.get("detector_config", {})),
    )


def detection(records: Sequence[Mapping[str, Any]], *, target_fpr: float, eps: float,
              options: Mapping[str, Any]) -> DetectionReport:
    """The detection section: one :func:`detection_row` per record."""
    if not records:
        raise ValueError("a detection section needs at least one record")
    return DetectionReport(target_fpr=float(target_fpr), eps=float(eps), options=_json_native(options),
                           rows=[detection_row(r) for r in records])


@dataclass(frozen=True)
class CommandRun:
    """What a command ran: ``command`` (one of :data:`~robustlab.report.schema.COMMANDS`), the
    model's ``name`` and ``model`` (the ``nn.Module``, for its class, size and saved metadata; or a
    ready dict), ``data`` (a :class:`~robustlab.data.Dataset`, or ``None``: VNN-COMP instances),
    ``n`` images (or instances), the command's ``settings`` (shown where an evaluation shows its
    suite), and the seed, batch size, device and wall time of the run."""

    command: str
    name: str
    model: Any
    data: Any
    n: int
    settings: Mapping[str, Any]
    seed: int = 0
    batch_size: int = 0
    device: str = "cpu"
    seconds: float = 0.0


@dataclass(frozen=True)
class Sections:
    """The sections a command fills (each empty by default)."""

    certificates: Sequence[CertReport] = ()
    attack_runs: Sequence[AttackRun] = ()
    verification: Sequence[VerificationReport] = ()
    detection: Optional[DetectionReport] = None


def model_section(run: CommandRun, sections: Sections, labels: Optional[Tensor] = None,
                  clean_pred: Optional[Tensor] = None) -> ModelReport:
    """The model section ``run`` writes: its ``sections``, and the labels and clean predictions of
    its ``n`` images (``None`` for instances: the clean accuracy is then ``null``). No
    gradient-masking checks run outside ``evaluate``, so the verdict says what the numbers are."""
    if run.command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}, got {run.command!r}")
    info = run.model if isinstance(run.model, dict) else model_info(run.model)
    if run.data is None:
        data_info = DataInfo("VNN-COMP instances", None, int(run.n), [], [])
    else:
        data_info = DataInfo(str(run.data.name), getattr(run.data, "split", None), int(run.n),
                             [int(v) for v in run.data.images.shape[1:]],
                             [str(c) for c in getattr(run.data, "classes", ())])
    clean: Optional[Rate] = None
    if labels is not None and clean_pred is not None:
        clean = metrics.clean_accuracy(labels.cpu(), clean_pred.cpu())
    return ModelReport(
        name=run.name, model=info, data=data_info, suite={"name": run.command, **_json_native(run.settings)},
        seed=int(run.seed), batch_size=int(run.batch_size), device=str(run.device), seconds=_round(float(run.seconds)),
        clean=clean, threats=[], certificates=list(sections.certificates), checks=[],
        verdict=Verdict(False, _VERDICT[run.command], []), exemplars=[],
        labels=[] if labels is None else [int(v) for v in labels.tolist()],
        clean_pred=[] if clean_pred is None else [int(v) for v in clean_pred.tolist()],
        command=run.command, attack_runs=list(sections.attack_runs), verification=list(sections.verification),
        detection=sections.detection,
    )


_VERDICT = {
    "evaluate": "",
    "attack": "One attack's result: an upper bound on the robust accuracy against this attack only, with no "
              "gradient-masking checks (robustlab evaluate runs a suite and checks it).",
    "certify": "Certified accuracy: a lower bound on robustness (randomized smoothing and PixelDP certify the noisy "
               "classifier, with probability at least 1 - alpha); no attack-based checks apply.",
    "verify": "Verification outcomes: proofs and counterexamples (no attack-based checks apply).",
    "detect": "Detection rates of adversarial-example detectors; the adaptive rows are the ones to believe.",
}


def _json_native(value: Any) -> Any:
    """``value`` with tensors, tuples and non-finite floats made JSON-native (``null`` for nan / inf)."""
    if isinstance(value, Mapping):
        return {str(k): _json_native(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_native(v) for v in value]
    if isinstance(value, Tensor):
        return _json_native(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return _json_native(value.item())
    return str(value)
