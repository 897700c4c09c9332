"""Attacks by name, for the command line, suites and reports: ``get(name, threat, **overrides)``.

``threat`` is a :class:`ThreatModel` (fixed-budget attacks need one) or, for the minimal-norm
attacks (``minimal(name)`` is True), also a norm name such as ``"l2"``: they then search the
smallest perturbation without a radius. New attacks join with :func:`register`.

The evaluation preset :func:`standard` lives here too, built by name from :data:`STANDARD`
(imports point one way: registry -> ensemble; the ensemble module knows nothing of names).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from robustlab.attacks.adaptive import DetectorAwarePGD, KNNFeaturePGD
from robustlab.attacks.apgd import APGD, APGDT
from robustlab.attacks.base import Attack
from robustlab.attacks.cw import CarliniWagner, CarliniWagnerL0, CarliniWagnerLinf
from robustlab.attacks.deepfool import DeepFool
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.ensemble import WorstCase
from robustlab.attacks.minnorm import DDN, FMN
from robustlab.attacks.pgd import BIM, PGD
from robustlab.attacks.square import Square
from robustlab.attacks.hopskipjump import HopSkipJump
from robustlab.attacks.nattack import NATTACK
from robustlab.attacks.onepixel import OnePixel
from robustlab.registry import Registry
from robustlab.threat import ThreatModel

Factory = Callable[..., Attack]

#: Square's query budget per norm in the ``standard`` preset (AutoAttack: 5000). In linf, 1000 keeps
#: the preset at about half AutoAttack's time on CPU with the same robust accuracy; in l2 the
#: budget matters: on an linf-PGD-trained MNIST model at l2 eps 2.0, Square-1000 left 7.8 points
#: more than Square-5000 (docs/benchmarks/blackbox.md), so l2 gets AutoAttack's 5000.
SQUARE_QUERIES: dict[str, int] = {"linf": 1000, "l2": 5000}

#: Square's p-schedule per norm in the ``standard`` preset (``Square(schedule=...)``): "rescaled",
#: the halving points stretched to the budget (the Square paper's code), or "absolute", at fixed
#: iterations (AutoAttack's ``standard``). Each is the stronger one measured inside the whole preset
#: on the first 500 test images (docs/benchmarks/blackbox.md): linf, 1000 queries, "rescaled" (PGD
#: MNIST at 0.3: 75.00% vs 75.40%, Square broke 2 vs 0; PGD Fashion-MNIST at 0.1: 67.80% both; the
#: absolute reading stops at p_init / 16 within 1000 queries); l2, 5000 queries, "absolute" (PGD
#: MNIST at 2.0: 34.20% vs 35.00%, and 34.0-34.2% vs 35.0-35.8% over Square seeds), which is then
#: AutoAttack's own l2 Square.
SQUARE_SCHEDULE: dict[str, str] = {"linf": "rescaled", "l2": "absolute"}

#: Options the ``standard`` preset gives its members per norm, under :data:`STANDARD`'s own (as
#: AutoAttack sets them per norm): Square's budget and p-schedule; in l1, APGD-CE and APGD-T with
#: the large-eps schedule ``3 eps -> 2 eps -> eps`` (AutoAttack's ``use_largereps``).
STANDARD_NORM_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "linf": {"square": {"queries": SQUARE_QUERIES["linf"], "schedule": SQUARE_SCHEDULE["linf"]}},
    "l2": {"square": {"queries": SQUARE_QUERIES["l2"], "schedule": SQUARE_SCHEDULE["l2"]}},
    "l1": {"apgd-ce": {"large_eps": True}, "apgd-t": {"large_eps": True}},
}


class UnknownOption(ValueError):
    """An attack was given a keyword it does not take (e.g. ``random_start`` for Square): a
    ``ValueError`` naming the attack and the keyword, told apart from a bad value so that callers
    that try an option where it exists can fall back precisely."""


class Entry(NamedTuple):
    factory: Factory
    description: str
    minimal: bool = False


def _standard(version: str) -> Factory:
    def make(tm: ThreatModel, **kw: Any) -> Attack:
        return standard(tm, version=version, **kw)  # options: seed, strength

    return make


#: name -> Entry(factory(threat, **kw), one-line description, minimal-norm?). Defaults follow the papers.
_BUILT_IN: dict[str, Entry] = {
    "fgsm": Entry(lambda tm, **kw: FGSM(tm, **kw), "FGSM, one step of size eps (Goodfellow et al. 2015)"),
    "bim": Entry(lambda tm, **kw: BIM(tm, **{"steps": 10, **kw}), "BIM, 10 steps from x (Kurakin et al. 2017)"),
    "pgd": Entry(lambda tm, **kw: PGD(tm, **{"steps": 40, **kw}), "PGD-40, random start (Madry et al. 2018)"),
    "pgd-dlr": Entry(lambda tm, **kw: PGD(tm, **{"steps": 40, "loss": "dlr", **kw}), "PGD-40 on the DLR loss (Croce & Hein 2020)"),
    "pgd-cw": Entry(lambda tm, **kw: PGD(tm, **{"steps": 40, "loss": "cw", **kw}), "PGD-40 on the CW margin (Carlini & Wagner 2017)"),
    "apgd-ce": Entry(lambda tm, **kw: APGD(tm, **{"loss": "ce", **kw}), "APGD-CE, 100 steps (Croce & Hein 2020)"),
    "apgd-dlr": Entry(lambda tm, **kw: APGD(tm, **{"loss": "dlr", **kw}), "APGD on the DLR loss, 100 steps (Croce & Hein 2020)"),
    "apgd-t": Entry(lambda tm, **kw: APGDT(tm, **kw), "APGD-T, targeted DLR over 9 classes (Croce & Hein 2020)"),
    "cw-l2": Entry(lambda tm, **kw: CarliniWagner(tm, **kw), "Carlini-Wagner L2, binary search over c (2017)", True),
    "cw-linf": Entry(lambda tm, **kw: CarliniWagnerLinf(tm, **kw), "Carlini-Wagner Linf, decreasing tau (2017)", True),
    "cw-l0": Entry(lambda tm, **kw: CarliniWagnerL0(tm, **kw), "Carlini-Wagner L0, iterative pixel freezing (2017)", True),
    "deepfool": Entry(lambda tm, **kw: DeepFool(tm, **kw), "DeepFool, multi-class, overshoot 0.02 (Moosavi-Dezfooli et al. 2016)", True),
    "fmn": Entry(lambda tm, **kw: FMN(tm, **kw), "Fast Minimum-Norm attack, 100 steps (Pintor et al. 2021)", True),
    "ddn": Entry(lambda tm, **kw: DDN(tm, **kw), "Decoupled Direction and Norm, L2, 100 steps (Rony et al. 2019)", True),
    "square": Entry(lambda tm, **kw: Square(tm, **kw), "Square attack, score-based, 5000 queries, linf/l2 (Andriushchenko et al. 2020)"),
    "nattack": Entry(lambda tm, **kw: NATTACK(tm, **kw), "NATTACK, NES on a Gaussian in tanh space, scores only, linf/l2 (Li et al. 2019)"),
    "onepixel": Entry(lambda tm, **kw: OnePixel(tm, **kw), "few-pixel attack (l0, eps = pixels) by differential evolution (Su et al. 2019)"),
    "detector-aware-pgd": Entry(lambda tm, **kw: DetectorAwarePGD(tm, **kw), "PGD on the classifier's loss while a "
                                "detector's differentiable score stays below its threshold; needs detector= (Carlini & "
                                "Wagner 2017)"),
    "knn-feature-pgd": Entry(lambda tm, **kw: KNNFeaturePGD(tm, **kw), "PGD pulling the features toward another class's "
                             "nearest references, against kNN detectors; needs detector= (Sitawarin & Wagner 2019)"),
    "hopskipjump": Entry(lambda tm, **kw: HopSkipJump(tm, **kw), "HopSkipJump, labels only, l2/linf, 5000 queries (Chen et al. 2020)", True),
    "standard": Entry(_standard("standard"), "AutoAttack-style worst case per sample, each member on the samples "
                      "still robust: APGD-CE (100 steps, 5 restarts), APGD-T (100 steps, 9 targets, DLR), FMN (100 "
                      "steps, in place of FAB-T), Square (p_init 0.8; linf 1000 queries, rescaled p-schedule; l2 "
                      "5000, absolute; none in l1); l1: APGD-CE and APGD-T with the large-eps schedule 3 eps -> 2 eps -> eps"),
    "standard-quick": Entry(_standard("quick"), "APGD-CE and APGD-T (3 targets), 50 steps each: worst case per sample"),
}


#: Every attack by name (:class:`robustlab.registry.Registry`: register, get, available, describe);
#: an entry is ``factory(threat, **overrides) -> Attack``, with the fact ``minimal`` (minimal-norm).
ATTACKS: Registry[Factory] = Registry("attack")
for _name, _entry in _BUILT_IN.items():
    ATTACKS.register(_name, _entry.factory, _entry.description, minimal=_entry.minimal)


def register(name: str, factory: Factory, description: str, *, minimal: bool = False, replace: bool = False) -> None:
    """Make ``factory(threat, **overrides) -> Attack`` available as ``get(name, ...)``."""
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    ATTACKS.register(name, factory, description, replace=replace, minimal=bool(minimal))


def available() -> tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return ATTACKS.available()


def describe(name: str) -> str:
    return ATTACKS.describe(name)


def minimal(name: str) -> bool:
    """Whether attack ``name`` minimises the perturbation (accepts a bare norm name as threat)."""
    return bool(ATTACKS.info(name).get("minimal", False))


def get(name: str, threat: "ThreatModel | str", **overrides: Any) -> Attack:
    """Build attack ``name`` for ``threat``; ``overrides`` replace its default hyperparameters."""
    factory = ATTACKS.entry(name)
    if isinstance(threat, str) and not minimal(name):
        raise TypeError(f"attack {name!r} needs a robustlab.ThreatModel with a radius eps, got the norm name {threat!r}")
    if not isinstance(threat, (ThreatModel, str)):
        raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
    try:
        return factory(threat, **overrides)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise UnknownOption(f"attack {name!r}: {exc}") from exc
        raise


#: The presets of :func:`standard`: (registry name, hyperparameter overrides), run in order.
#: Extension point: ``register("name", ...)`` then ``STANDARD["standard"].append(("name", {...}))``.
STANDARD: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "standard": [
        # 5 restarts (each only on the samples still robust): on an FGSM-RS-trained MNIST cnn the
        # restarts broke 5 of the 73 samples a single APGD-CE run left robust, more than APGD-T,
        # FAB-T and Square found together in AutoAttack (benchmarks/bench_attacks.py).
        ("apgd-ce", {"steps": 100, "restarts": 5}),
        ("apgd-t", {"steps": 100, "n_target_classes": 9}),
        ("fmn", {"steps": 100}),
        # The minimal-norm FMN plays FAB-T's role (AutoAttack's third member).
        # The score-based member that needs no gradient (catches masked gradients, as AutoAttack's
        # Square with 5000 queries; here SQUARE_QUERIES and SQUARE_SCHEDULE per norm, through
        # STANDARD_NORM_OPTIONS); it runs only on the samples still robust.
        ("square", {}),
    ],
    "quick": [
        ("apgd-ce", {"steps": 50}),
        ("apgd-t", {"steps": 50, "n_target_classes": 3}),
    ],
}

#: Norms each preset member supports; members are left out of :func:`standard` for other norms.
PRESET_NORMS: dict[str, tuple[str, ...]] = {"square": ("linf", "l2")}


#: ``n_target_classes`` of APGD-T meaning every class but the true one (APGD-T takes ``min(n, K - 1)``).
ALL_TARGETS = 1_000_000


def strengthened(name: str, options: dict[str, Any], strength: int, threat: ThreatModel) -> dict[str, Any]:
    """The options of preset member ``name`` for ``threat`` at ``strength`` k: k x the steps and
    k x the restarts of an iterative member (APGD-T then over every other class), k x the queries
    of a query-based one. ``strength=1`` returns ``options`` unchanged."""
    if strength == 1:
        return dict(options)
    out = dict(options)
    probe = get(name, threat if not minimal(name) else threat.norm, **options)  # its defaults for this norm
    for opt in ("steps", "restarts", "queries"):
        value = getattr(probe, opt, None)
        if isinstance(value, int) and not isinstance(value, bool):
            out[opt] = value * strength
    if hasattr(probe, "n_target_classes"):
        out["n_target_classes"] = ALL_TARGETS
    return out


def standard(threat: ThreatModel, *, seed: int = 0, version: str = "standard", strength: int = 1) -> WorstCase:
    """The default evaluation for ``threat`` (linf, l2 or l1), each member only on the samples the
    previous ones left robust; a sample counts as broken if any member breaks it.

    ``version="standard"`` (after AutoAttack's, Croce & Hein 2020, arXiv:2003.01690), in order:

    1. APGD-CE: 100 steps, 5 restarts (AutoAttack: 1 in linf/l2, 5 in l1);
    2. APGD-T: targeted DLR loss, 100 steps, 9 target classes, 1 restart (AutoAttack: 5 targets in l1);
    3. FMN (minimal-norm, 100 steps), in place of AutoAttack's FAB-T;
    4. Square (linf and l2 only; ``p_init = 0.8``): ``SQUARE_QUERIES`` queries, linf 1000 and l2
       5000 (AutoAttack: 5000), with the p-schedule ``SQUARE_SCHEDULE``, linf ``"rescaled"`` and l2
       ``"absolute"`` (AutoAttack: absolute), the stronger of the two as measured.

    In l1, APGD-CE and APGD-T run the large-eps schedule (``3 eps -> 2 eps -> eps`` over 30/30/40%
    of the steps, AutoAttack's ``use_largereps``) and there is no Square. Every member gets ``seed``.
    ``"quick"``: APGD-CE (50 steps, 1 restart) and APGD-T (50 steps, 3 targets), any norm.

    ``strength`` k > 1 spends about k^2 x the compute on the same members (:func:`strengthened`:
    k x the steps and restarts of each gradient member, APGD-T over every other class, k x Square's
    queries): the probe of the "more steps" gradient-masking check.
    """
    if not isinstance(threat, ThreatModel):
        raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
    if version not in STANDARD:
        raise ValueError(f"version must be one of {', '.join(STANDARD)}, got {version!r}")
    if isinstance(strength, bool) or not isinstance(strength, int) or strength < 1:
        raise ValueError(f"strength must be an integer >= 1, got {strength!r}")
    members = [(name, opts) for name, opts in STANDARD[version] if threat.norm in PRESET_NORMS.get(name, (threat.norm,))]
    per_norm = STANDARD_NORM_OPTIONS.get(threat.norm, {}) if version == "standard" else {}
    base = {"square": {"queries": SQUARE_QUERIES[threat.norm]}} if threat.norm in SQUARE_QUERIES else {}
    members = [(name, {**base.get(name, {}), **per_norm.get(name, {}), **opts}) for name, opts in members]
    attacks = [get(name, threat, **{"seed": seed, **strengthened(name, opts, strength, threat)}) for name, opts in members]
    label = f"standard[{version}]" if version != "standard" else "standard"
    return WorstCase(attacks, label=label if strength == 1 else f"{label} x{strength}")


# -- Deformation attacks (issue 13) -------------------------------------------------------------
# They have no Lp ball: a norm name passed as ``threat`` (the CLI's default) is ignored, and the
# deformation budget in pixels is the option ``max_norm`` (``-o max_norm=3``).


def _deformation(cls_name: str) -> Factory:
    def make(threat: "ThreatModel | str", **kw: Any) -> Attack:
        from robustlab.attacks import adef, spatial

        if isinstance(threat, ThreatModel):
            raise ValueError(f"{cls_name} moves pixels and has no Lp radius: pass no --eps; bound the "
                             f"deformation with the option max_norm (pixels), e.g. -o max_norm=3")
        if cls_name == "ADef":
            max_norm = kw.pop("max_norm", None)
            return adef.ADef(None if max_norm is None else adef.DeformationThreat(float(max_norm)), **kw)
        return spatial.Spatial(**kw)

    return make


register("adef", _deformation("ADef"), "ADef adversarial deformation, ||tau||_T in pixels (Alaifari et al. 2019)", minimal=True)
register("spatial", _deformation("Spatial"), "worst-case rotation (+-30 deg) and translation (+-3 px) by grid search (Engstrom et al. 2019)", minimal=True)
