"""The report as a plain dataclass tree with a versioned JSON form (documented in docs/report-format.md).

``to_dict`` / ``from_dict`` are generic over the dataclasses below: every field is JSON-native
(numbers, strings, lists, objects, ``null``); ``float("inf")`` never appears (``null`` stands for
"none found"), so the files are strict JSON. ``from_dict`` refuses unknown keys, missing keys and
wrong types, naming the path inside the document, and refuses files written by a newer schema.

Schema history: version 1; version 2 adds ``Finding.norm``, ``ThreatReport.verdict`` and
``ThreatReport.black_box``; version 3 adds ``Verdict.uninformative`` (the checks that could not have
warned on the run) and ``ThreatReport.black_box_members`` (the suite's query-based attacks and
members, which count as black box, not white box); version 4 (this one) makes the Report the one
document of every command: ``ModelReport.command`` (the verb that wrote it), ``attack_runs``
(:class:`AttackRun`, ``robustlab attack``), ``verification`` (:class:`VerificationReport`,
``robustlab verify``), ``detection`` (:class:`DetectionReport`, ``robustlab detect``), and
``ModelReport.clean`` may be ``null`` (VNN-COMP instances have no labelled images); certificates of
``robustlab certify`` and ``verify`` are :class:`CertReport` entries as in an evaluation. Every
addition has a default, so older files still load.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

SCHEMA = "robustlab-report"
SCHEMA_VERSION = 4

#: The verbs whose results a model section holds (``ModelReport.command``).
COMMANDS = ("evaluate", "attack", "certify", "verify", "detect")
#: The outcomes of :class:`VerificationReport`: proven, a counterexample found (and checked), neither
#: (an incomplete method that could not prove, a solver that gave up), out of time.
VERIFICATION_STATUSES = ("verified", "falsified", "unknown", "timeout")


@dataclass
class Rate:
    """A proportion ``k / n`` with its ``1 - alpha`` confidence interval (``method``: wilson or
    clopper-pearson): the test images are a sample, so every accuracy is an estimate."""

    value: float
    ci_low: float
    ci_high: float
    k: int
    n: int
    method: str = "wilson"
    alpha: float = 0.05


@dataclass
class Summary:
    """Distribution of a non-negative per-sample quantity over ``count`` samples (``None`` when
    ``count == 0``)."""

    count: int
    mean: Optional[float] = None
    min: Optional[float] = None
    p10: Optional[float] = None
    p25: Optional[float] = None
    median: Optional[float] = None
    p75: Optional[float] = None
    p90: Optional[float] = None
    max: Optional[float] = None


@dataclass
class AttackRow:
    """One attack at one eps. ``robust``: correctly classified and the attack failed;
    ``success``: the attack's success rate on the correctly classified images; ``distance``: the
    threat norm of the adversarial examples it found; ``norms``: their linf, l2 and l0 (pixels)."""

    attack: str
    robust: Rate
    success: Rate
    distance: Summary
    norms: dict[str, Summary]
    seconds: float


@dataclass
class EpsRow:
    """Everything at one radius. ``worst_case``: no adversarial example within ``eps`` was found by
    any attack at any radius <= eps (white-box, noise, transfer, minimal-norm); ``white_box``: none
    was found by a gradient attack (query-based attacks and members, such as the ``standard``
    preset's Square, are black box and left out); ``noise``: robust against the black-box baseline;
    ``transfer``: per source model."""

    eps: float
    attacks: list[AttackRow]
    worst_case: Rate
    white_box: Rate
    noise: Optional[Rate] = None
    transfer: dict[str, Rate] = field(default_factory=dict)


@dataclass
class ThreatReport:
    """One threat model: its rows per eps, the smallest adversarial distance found per sample
    (``None``: none found; 0 for misclassified images) and the certified lower bound per sample
    (``lower``; from certifiers of the model itself, converted to this norm; 0 where none);
    ``verdict``: this threat model's own gradient-masking verdict (its findings and the model-wide
    ones; ``None`` when the checks were off or for schema-1 files); ``black_box``: what the
    black-box baseline of ``EpsRow.noise`` was (``"square"`` or ``"random noise"``);
    ``black_box_members``: the suite's query-based attacks and preset members (e.g.
    ``standard: Square``), which the ``white_box`` rows leave out."""

    norm: str
    eps: list[float]
    attacks: list[str]
    minimal: list[str]
    rows: list[EpsRow]
    min_distance: Summary
    unbroken: Rate
    per_sample_upper: list[Optional[float]]
    per_sample_lower: list[float]
    lower_from: list[str]
    verdict: Optional[Verdict] = None
    black_box: str = "random noise"
    black_box_members: list[str] = field(default_factory=list)


@dataclass
class CertReport:
    """A certifier's result: certified accuracy (prediction correct, not abstained, radius >= r)
    at each radius; ``certifies``: "model" or "smoothed" (the radius holds for the smoothed
    classifier, with probability >= 1 - alpha)."""

    method: str
    label: str
    norm: str
    certifies: str
    alpha: float
    options: dict[str, Any]
    radii: list[float]
    certified_accuracy: list[Rate]
    accuracy: Rate
    abstain: Rate
    radius: Summary
    seconds: float
    per_sample_radius: list[float]
    per_sample_prediction: list[int]


@dataclass
class AttackRun:
    """One attack run on its own (``robustlab attack``, schema 4): the threat (``eps`` ``None``: a
    minimal-norm search, unbounded), ``result``: robust accuracy and success rate (Rates with the
    report's interval), the threat-norm distance and the linf / l2 / l0 norms of the adversarial
    examples found on correctly classified images, and seconds; ``iterations`` and ``queries``
    (model queries of black-box attacks; ``None`` otherwise) per image; ``config``: the attack's
    hyperparameters; ``examples``: the exported adversarial examples (safetensors), relative to the
    report's folder where it lies inside it; per image, in evaluation order: ``per_sample_success``
    (a misclassified point of the ball was returned) and ``per_sample_distance`` (its distance;
    ``None`` where the attack failed)."""

    norm: str
    eps: Optional[float]
    result: AttackRow
    config: dict[str, Any]
    iterations: Summary
    queries: Optional[Summary]
    examples: Optional[str]
    per_sample_success: list[bool]
    per_sample_distance: list[Optional[float]]


@dataclass
class VerificationReport:
    """Verification outcomes (schema 4), per image (``robustlab verify --model``: ``items`` the image
    indices) or per VNN-COMP instance (``--onnx/--vnnlib``, ``--instances``: ``items`` the instance
    names): ``statuses[i]`` one of :data:`VERIFICATION_STATUSES` (VNN-COMP's unsat / sat are verified /
    falsified), ``seconds[i]`` its time (images verified by a bound method share their batch's time),
    ``counts`` per status, ``verified`` and ``falsified`` as Rates over the items, ``options``: the
    method's settings (time limits, seeds, per network counts...)."""

    method: str
    norm: Optional[str]
    eps: Optional[float]
    options: dict[str, Any]
    items: list[str]
    statuses: list[str]
    seconds: list[float]
    counts: dict[str, int]
    verified: Rate
    falsified: Rate
    total_seconds: float

    def __post_init__(self) -> None:
        bad = sorted(set(self.statuses) - set(VERIFICATION_STATUSES))
        if bad:
            raise ValueError(f"VerificationReport.statuses must be among {', '.join(VERIFICATION_STATUSES)}, got {bad}")
        if not len(self.items) == len(self.statuses) == len(self.seconds):
            raise ValueError(f"VerificationReport: {len(self.items)} items, {len(self.statuses)} statuses and "
                             f"{len(self.seconds)} seconds; expected one of each per item")


@dataclass
class DetectionRow:
    """One (detector, attack, adaptive) triple of :class:`DetectionReport`: ``detection``: the
    successful adversarial examples (on correctly classified images) flagged at the fitted threshold
    (``None`` when the attack found none), ``false_positive``: their clean versions flagged,
    ``auc``: ROC AUC of adversarial vs clean scores (Mann-Whitney), ``evasion``: misclassified and
    not flagged, among the correctly classified images (the number to believe for the adaptive
    rows), ``success``: the attack's success among them; ``roc_fpr`` / ``roc_tpr``: the ROC curve."""

    detector: str
    attack: str
    adaptive: bool
    detection: Optional[Rate]
    false_positive: Optional[Rate]
    auc: Optional[float]
    evasion: Rate
    success: Rate
    roc_fpr: list[float]
    roc_tpr: list[float]
    seconds: float
    config: dict[str, Any]
    detector_config: dict[str, Any]

    def __post_init__(self) -> None:
        if len(self.roc_fpr) != len(self.roc_tpr):
            raise ValueError(f"DetectionRow.roc_fpr and roc_tpr must have the same length, got {len(self.roc_fpr)} "
                             f"and {len(self.roc_tpr)}")


@dataclass
class DetectionReport:
    """Adversarial-example detectors, non-adaptive and adaptive (``robustlab detect``, schema 4):
    thresholds fitted for a false-positive rate of ``target_fpr`` on held-out clean images; ``eps``
    the linf radius of the attacks; ``options``: the rest of the settings (adaptive CW-L2 radius,
    steps, image counts)."""

    target_fpr: float
    eps: float
    options: dict[str, Any]
    rows: list[DetectionRow]


@dataclass
class Finding:
    """A gradient-masking check: ``status`` pass / warn / note / skip (a note is a symptom that
    does not affect the worst case, e.g. one weak attack fooled while stronger ones are not), the
    evidence in words and numbers, ``doc``: the anchor of its explanation (in the page and in
    docs/report-format.md), and ``norm``: the threat model it speaks for (``None``: the whole model,
    e.g. determinism). Only ``warn`` makes a verdict untrusted."""

    name: str
    title: str
    status: str
    evidence: str
    values: dict[str, Any]
    doc: str
    norm: Optional[str] = None

    @property
    def passed(self) -> bool:
        return self.status != "warn"


@dataclass
class Verdict:
    """Whether the robust accuracy can be trusted as an upper bound on true robustness."""

    trusted: bool
    summary: str
    warnings: list[str]
    uninformative: list[str] = field(default_factory=list)


@dataclass
class EncodedImage:
    """An image (C, H, W) in [0, 1] as little-endian float16, base64-encoded."""

    shape: list[int]
    data: str
    dtype: str = "float16"

    @staticmethod
    def encode(x: torch.Tensor) -> "EncodedImage":
        arr = x.detach().cpu().to(torch.float16).numpy().astype("<f2")
        return EncodedImage([int(v) for v in x.shape], base64.b64encode(arr.tobytes()).decode("ascii"))

    def decode(self) -> torch.Tensor:
        if self.dtype != "float16":
            raise ValueError(f"image dtype {self.dtype!r} is not supported; expected 'float16'")
        raw = base64.b64decode(self.data.encode("ascii"), validate=True)
        arr = np.frombuffer(raw, dtype="<f2")
        if arr.size != int(np.prod(self.shape)):
            raise ValueError(f"image data holds {arr.size} values, its shape {self.shape} needs {int(np.prod(self.shape))}")
        return torch.from_numpy(arr.astype(np.float32).reshape(self.shape))


@dataclass
class Exemplar:
    """An image shown in the report: ``kind`` least-robust / most-robust, the adversarial point
    shown (found at ``eps`` by ``attack``; for unbroken images the attempt closest to success at
    the largest eps), labels and softmax confidences."""

    kind: str
    index: int
    label: int
    norm: str
    eps: float
    attack: str
    success: bool
    distance: float
    clean_pred: int
    clean_conf: float
    adv_pred: int
    adv_conf: float
    image: EncodedImage
    adversarial: EncodedImage


@dataclass
class DataInfo:
    name: str
    split: Optional[str]
    n: int
    shape: list[int]
    classes: list[str]


@dataclass
class ModelReport:
    """One evaluated model: what ``command`` computed (``evaluate``: threat models, certificates,
    checks, exemplars; ``attack``: ``attack_runs``; ``certify``: ``certificates``; ``verify``:
    ``verification`` and, for images, a certificate; ``detect``: ``detection``). ``suite``: the
    evaluation suite, or the command's settings; ``clean``: the model's clean accuracy (``None``
    where there are no labelled images: VNN-COMP instances)."""

    name: str
    model: dict[str, Any]
    data: DataInfo
    suite: dict[str, Any]
    seed: int
    batch_size: int
    device: str
    seconds: float
    clean: Optional[Rate]
    threats: list[ThreatReport]
    certificates: list[CertReport]
    checks: list[Finding]
    verdict: Verdict
    exemplars: list[Exemplar]
    labels: list[int]
    clean_pred: list[int]
    notes: list[str] = field(default_factory=list)
    command: str = "evaluate"
    attack_runs: list[AttackRun] = field(default_factory=list)
    verification: list[VerificationReport] = field(default_factory=list)
    detection: Optional[DetectionReport] = None

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(f"ModelReport.command must be one of {', '.join(COMMANDS)}, got {self.command!r}")


@dataclass
class TransferMatrix:
    """``robust[i][j]``: robust accuracy of ``targets[i]`` on adversarial examples crafted on
    ``sources[j]`` with ``attack`` at ``eps`` (the diagonal: the white-box attack itself);
    ``None`` where that pair was not evaluated."""

    norm: str
    eps: float
    attack: str
    sources: list[str]
    targets: list[str]
    robust: list[list[Optional[Rate]]]


@dataclass
class Report:
    """A robustness report over one or more models (``models``), with transfer matrices between them."""

    title: str
    created: str
    robustlab_version: str
    models: list[ModelReport]
    transfer: list[TransferMatrix] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def save(self, out: "str | os.PathLike[str]", *, html: bool = True) -> "Path":
        """Write ``report.json``, ``index.html`` and ``figures/*.png`` into folder ``out`` (atomically)."""
        from robustlab.report.build import save

        return save(self, out, html=html)

    @staticmethod
    def load(path: "str | os.PathLike[str]") -> "Report":
        """Read ``report.json`` (or the folder holding it); refuses malformed or newer files."""
        return load(path)

    def to_dict(self) -> dict:
        return to_dict(self)

    @staticmethod
    def from_dict(data: dict) -> "Report":
        return loads(json.dumps(data))

    def to_json(self) -> str:
        """The report as its JSON text (``report.json``); raises if a value is not JSON (NaN, ...)."""
        return dumps(self)

    def model(self, name: str) -> "ModelReport":
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model {name!r} in this report; it holds {[m.name for m in self.models]}")

    def table(self) -> str:
        """Plain-text summary (clean and robust accuracy per eps, certificates, verdict)."""
        from robustlab.report.build import table

        return table(self)


# --------------------------------------------------------------------------------------------
# JSON in and out
# --------------------------------------------------------------------------------------------


def dumps(rep: Report) -> str:
    return json.dumps(to_dict(rep), indent=1, allow_nan=False) + "\n"


def loads(text: str, where: str = "report") -> Report:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{where} is not a robustlab report (expected \"schema\": \"{SCHEMA}\")")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ValueError(f"{where} has schema_version {version!r}; this robustlab reads versions 1..{SCHEMA_VERSION} "
                         "(a newer robustlab wrote it?)")
    rep = from_dict(Report, data, where)
    rep.schema_version = SCHEMA_VERSION  # an older file is read with the defaults of the newer keys: now a current one
    return rep


def load(path: "str | os.PathLike[str]") -> Report:
    """Read a report from ``report.json`` (or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"no report at {p}")
    return loads(p.read_text(), str(p))


# --------------------------------------------------------------------------------------------
# Generic JSON conversion
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    """The JSON form of a report object (dataclasses -> objects; non-finite floats refused)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"report values must be finite (null stands for 'none'), got {obj}")
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return to_dict(obj.item())
    raise TypeError(f"cannot write {type(obj).__name__} into a report: {obj!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, path)
        raise TypeError(f"{path}: unsupported union {tp}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported field type {_type_name(tp)}")


def from_dict(cls: type, data: Any, path: str = "report") -> Any:
    """Rebuild dataclass ``cls`` from its JSON form, strictly (see the module docstring)."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} for {cls.__name__}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ValueError(f"{path}: missing key {name!r} of {cls.__name__}")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{path}.{name}")
    return cls(**kwargs)
