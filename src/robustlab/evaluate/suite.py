"""What an evaluation runs: threat models x eps grids x attacks, certifiers, checks, transfer sources.

A :class:`Suite` is given by name (``"quick"``, ``"standard"``), built in code, or read from a TOML
file (:func:`load_suite`)::

    name = "my-suite"
    attacks = ["fgsm", "pgd"]            # registry names (robustlab.attacks.available())

    [[threat]]                           # one table per threat model
    norm = "linf"
    eps = [0.1, 0.2, 0.3]

    [[threat]]
    norm = "l2"
    eps = [0.5, 1.0, 2.0]
    attacks = ["pgd"]                    # optional: this threat model's own attack list

    [attack_options.pgd]                 # hyperparameter overrides per attack
    steps = 100
    restarts = 5

    [[certifier]]                        # randomized smoothing (Cohen et al. 2019)
    method = "smoothing"
    sigma = 0.25
    n0 = 100
    n = 1000
    alpha = 0.001

    [checks]                             # gradient-masking checks (evaluate.checks)
    enabled = true
    n = 100

    [transfer]                           # adversarial examples crafted on other models
    sources = ["runs/mnist-cnn"]
    attack = "pgd"
    eps = [0.2]                          # optional: only at these radii

``norm = ...`` and ``eps = [...]`` at the top level are a shorthand for one ``[[threat]]``. Every
name, radius and option is checked when the suite is built (:meth:`Suite.validate`), and
:func:`robustlab.evaluate.run` checks the rest (model, data, output folder) before any attack runs.

Certifiers are looked up by name in :data:`CERTIFIERS`; ``smoothing`` ships here and
bound-based certifiers (``crown``, ``ibp``, ...) plug in with :func:`register_certifier`.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from torch import Tensor, nn

from robustlab.attacks import registry
from robustlab.attacks.base import Attack
from robustlab.certificates import Certificate
from robustlab.registry import Registry
from robustlab.threat import NORMS, ThreatModel

#: Default eps grids per norm for images in [0, 1]: MNIST-scale, and CIFAR-scale (Croce et al. 2021).
DEFAULT_EPS = {"linf": (0.1, 0.2, 0.3), "l2": (0.5, 1.0, 2.0), "l1": (5.0, 10.0, 15.0), "l0": (5.0, 10.0, 20.0)}
CIFAR_EPS = {"linf": (2 / 255, 4 / 255, 8 / 255), "l2": (0.25, 0.5, 1.0), "l1": (4.0, 8.0, 12.0), "l0": (5.0, 10.0, 20.0)}
#: ImageNet-scale (RobustBench's ImageNet linf threat is 4/255; l2 3.0 as in Engstrom et al.'s robustness library).
IMAGENET_EPS = {"linf": (1 / 255, 2 / 255, 4 / 255), "l2": (0.5, 1.0, 3.0), "l1": (16.0, 32.0, 64.0),
                "l0": (10.0, 20.0, 50.0)}


def unbounded_eps(norm: str, shape: Sequence[int]) -> float:
    """A radius that admits every image of ``shape`` (C, H, W): 1 for linf, ``sqrt(D)`` for l2,
    ``D`` for l1, the pixel count for l0."""
    c, h, w = (int(v) for v in shape)
    return {"linf": 1.0, "l2": math.sqrt(c * h * w), "l1": float(c * h * w), "l0": float(h * w)}[norm]


def default_eps(norm: str, dataset: Optional[str] = None) -> tuple[float, ...]:
    """The default eps grid of ``norm`` for ``dataset``: ImageNet-scale for names with "imagenet",
    CIFAR-scale for "cifar", else MNIST-scale."""
    norm = ThreatModel(norm, 0.0).norm
    name = str(dataset).lower() if dataset is not None else ""
    table = IMAGENET_EPS if "imagenet" in name else CIFAR_EPS if "cifar" in name else DEFAULT_EPS
    return table[norm]


def standard_attacks() -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """The attacks of the ``standard`` suite and their options: the one place that picks them.

    With the worst-case preset of :mod:`robustlab.attacks` (registry name ``standard``: APGD-CE,
    APGD-T, FMN and, in linf and l2, the score-based Square per sample, after Croce & Hein 2020's
    protocol; :func:`robustlab.attacks.registry.standard` states it exactly): FGSM and PGD-40 (for
    reference curves) and ``standard``. Without it: FGSM, PGD-40 with 2 restarts, PGD-40 on the DLR loss and
    PGD-40 on the CW margin, whose per-sample worst case the report takes.
    """
    if "standard" in registry.available():
        return ("fgsm", "pgd", "standard"), {}
    return ("fgsm", "pgd", "pgd-dlr", "pgd-cw"), {"pgd": {"restarts": 2}}


def is_minimal(name: str) -> bool:
    """Whether registry attack ``name`` searches the smallest perturbation (built from a norm name)."""
    fn = getattr(registry, "minimal", None)
    return bool(fn(name)) if fn is not None else False


# --------------------------------------------------------------------------------------------
# Certifiers
# --------------------------------------------------------------------------------------------

CertifyFn = Callable[[nn.Module, Tensor, Mapping[str, Any], int], Certificate]


@dataclass(frozen=True)
class CertifierEntry:
    """A certifier known by name.

    ``certify(model, x, options, seed) -> Certificate`` on one batch; ``defaults`` are its options
    (anything else is refused); ``check(options)`` raises ``ValueError`` for bad values;
    ``certifies``: ``"model"`` when the radius holds for the evaluated model itself (bound-based
    verification) or ``"smoothed"`` when it holds for a derived classifier (randomized
    smoothing), which is then kept out of the per-sample robustness interval.
    """

    name: str
    certify: CertifyFn
    defaults: Mapping[str, Any]
    check: Callable[[Mapping[str, Any]], None]
    certifies: str
    norm: str
    help: str


#: Every certifier by name (:class:`robustlab.registry.Registry`); the entries are registered by
#: this module (smoothing) and :mod:`robustlab.evaluate.certifiers` (ibp, crown, ..., milp).
CERTIFIERS: Registry[CertifierEntry] = Registry("certifier")

#: Certifiers announced by the design whose implementation lives in a later module.
PLANNED_CERTIFIERS = {
    "crown": "bound-based certificates come with robustlab.verify (CROWN, Zhang et al. 2018)",
    "ibp": "bound-based certificates come with robustlab.verify (IBP, Gowal et al. 2018)",
    "lp": "the convex outer polytope comes with robustlab.verify (Wong & Kolter 2018)",
    "milp": "complete verification comes with robustlab.verify (Tjeng et al. 2019)",
}


def register_certifier(entry: CertifierEntry, *, replace: bool = False) -> None:
    """Make a certifier available to suites under ``entry.name``."""
    if not isinstance(entry, CertifierEntry):
        raise TypeError(f"entry must be a CertifierEntry, got {type(entry).__name__}")
    if entry.certifies not in ("model", "smoothed"):
        raise ValueError(f"certifies must be 'model' or 'smoothed', got {entry.certifies!r}")
    CERTIFIERS.register(entry.name, entry, entry.help, replace=replace)


def certifier(name: str) -> CertifierEntry:
    """The registered certifier ``name``; a clear error for planned and unknown names."""
    key = str(name).lower()
    if key in CERTIFIERS:
        return CERTIFIERS[key]
    if key in PLANNED_CERTIFIERS:
        raise ValueError(f"certifier {name!r} is not available in this version of robustlab: "
                         f"{PLANNED_CERTIFIERS[key]}; available: {', '.join(CERTIFIERS)}")
    raise ValueError(f"unknown certifier {name!r}; expected one of {', '.join(CERTIFIERS)}")


def _smoothing_check(o: Mapping[str, Any]) -> None:
    from robustlab._checks import check_positive, check_probability
    from robustlab.defenses.smoothing import min_samples_to_certify

    check_positive(o["sigma"], "certifier smoothing: sigma")
    check_positive(o["n0"], "certifier smoothing: n0", integer=True)
    check_positive(o["n"], "certifier smoothing: n", integer=True)
    check_positive(o["batch_size"], "certifier smoothing: batch_size", integer=True)
    check_probability(o["alpha"], "certifier smoothing: alpha")
    need = min_samples_to_certify(o["alpha"])
    if o["n"] < need:
        raise ValueError(f"certifier smoothing: n={o['n']} cannot certify anything at alpha={o['alpha']}; use n >= {need}")


def _smoothing_certify(model: nn.Module, x: Tensor, o: Mapping[str, Any], seed: int) -> Certificate:
    from robustlab.defenses.smoothing import Smoothed

    smoothed = Smoothed(model, float(o["sigma"]), batch_size=int(o["batch_size"]), seed=seed)
    return smoothed.certify(x, int(o["n0"]), int(o["n"]), float(o["alpha"]))


register_certifier(CertifierEntry(
    name="smoothing", certify=_smoothing_certify,
    defaults={"sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001, "batch_size": 1000},
    check=_smoothing_check, certifies="smoothed", norm="l2",
    help="randomized smoothing, Cohen et al. 2019 (arXiv:1902.02918): L2 radius sigma * Phi^-1(pA_lower) "
         "of the smoothed classifier, holding with probability >= 1 - alpha",
))


@dataclass(frozen=True)
class CertifierSpec:
    """One certifier of a suite: ``method`` (a :data:`CERTIFIERS` name) and its options
    (missing ones take the certifier's defaults)."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        entry = certifier(self.method)
        unknown = set(self.options) - set(entry.defaults)
        if unknown:
            raise ValueError(f"certifier {self.method!r} has no option(s) {sorted(unknown)}; "
                             f"expected some of {sorted(entry.defaults)}")
        return {**entry.defaults, **self.options}

    @property
    def label(self) -> str:
        o = self.resolved()
        return f"{self.method} (sigma={o['sigma']:g})" if "sigma" in o else self.method

    def to_dict(self) -> dict:
        return {"method": self.method, **self.resolved()}


# --------------------------------------------------------------------------------------------
# Suite
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threat:
    """A threat model's norm with its eps grid; ``attacks`` overrides the suite's attack list."""

    norm: str
    eps: tuple[float, ...]
    attacks: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", ThreatModel(self.norm, 0.0).norm if str(self.norm).lower() in
                           (*NORMS, "inf", "2", "1", "0") else str(self.norm))
        if isinstance(self.eps, (int, float)):
            object.__setattr__(self, "eps", (self.eps,))
        object.__setattr__(self, "eps", tuple(self.eps))
        if self.attacks is not None:
            object.__setattr__(self, "attacks", tuple(self.attacks))

    @property
    def key(self) -> str:
        return self.norm

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"norm": self.norm, "eps": list(self.eps)}
        if self.attacks is not None:
            out["attacks"] = list(self.attacks)
        return out


@dataclass(frozen=True)
class Checks:
    """Gradient-masking checks (:mod:`robustlab.evaluate.checks`).

    ``n``: images for the model probes (a stronger attack, an unbounded one, the loss along the
    attack path, input gradients, determinism); ``attack``: the registry attack they strengthen;
    ``strength``: the stronger attack spends ``strength`` x the compute (2x the steps and
    ``strength / 2`` x the restarts);
    ``noise_draws``: random points per image and eps for the noise baseline (run on every image);
    ``path_steps``: steps of the traced attack.
    """

    enabled: bool = True
    n: int = 100
    attack: str = "pgd"
    strength: int = 4
    noise_draws: int = 8
    path_steps: int = 20

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "n": self.n, "attack": self.attack, "strength": self.strength,
                "noise_draws": self.noise_draws, "path_steps": self.path_steps}


@dataclass(frozen=True)
class Suite:
    """Everything an evaluation runs.

    Args:
        name: a label for reports.
        threats: the threat models (:class:`Threat`: norm, eps grid, optional attack list).
        attacks: registry names (:func:`robustlab.attacks.available`) run at every eps.
        attack_options: per attack name, hyperparameter overrides for :func:`robustlab.attacks.get`.
        minimal: attacks run once per threat model without a radius: minimal-norm attacks (DeepFool,
            FMN, Carlini-Wagner; built from the norm name) or any other attack at a radius that
            admits every image; their distances enter the minimal adversarial distance.
        certifiers: :class:`CertifierSpec` list (randomized smoothing; bound-based ones later).
        checks: gradient-masking checks (:class:`Checks`, or a bool).
        transfer: source models: a name -> saved-model path or ``nn.Module``; their adversarial
            examples (``transfer_attack``) are evaluated on the model under test.
        transfer_attack: registry name of the attack run on the sources (default PGD, which then
            runs all its steps for higher-confidence, better-transferring examples).
        transfer_eps: the radii at which transfer examples are made (default: every eps of every
            threat model); each must be on some threat model's grid.
        exemplars: images per kind (least / most robust) in the report's image grids.
    """

    name: str = "custom"
    threats: tuple[Threat, ...] = (Threat("linf", DEFAULT_EPS["linf"]),)
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    attack_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    minimal: tuple[str, ...] = ()
    certifiers: tuple[CertifierSpec, ...] = ()
    checks: Checks = Checks()
    transfer: Mapping[str, "str | os.PathLike[str] | nn.Module"] = field(default_factory=dict)
    transfer_attack: str = "pgd"
    transfer_eps: Optional[tuple[float, ...]] = None
    exemplars: int = 6

    def __post_init__(self) -> None:
        threats = (self.threats,) if isinstance(self.threats, Threat) else tuple(self.threats)
        object.__setattr__(self, "threats", threats)
        object.__setattr__(self, "attacks", (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks))
        object.__setattr__(self, "minimal", (self.minimal,) if isinstance(self.minimal, str) else tuple(self.minimal))
        object.__setattr__(self, "certifiers", tuple(self.certifiers))
        if isinstance(self.checks, bool):
            object.__setattr__(self, "checks", Checks(enabled=self.checks))
        object.__setattr__(self, "attack_options", {str(k): dict(v) for k, v in dict(self.attack_options).items()})
        object.__setattr__(self, "transfer", dict(self.transfer))
        if self.transfer_eps is not None:
            te = (self.transfer_eps,) if isinstance(self.transfer_eps, (int, float)) else tuple(self.transfer_eps)
            object.__setattr__(self, "transfer_eps", tuple(float(e) for e in te))
        self.validate()

    # -- structure -------------------------------------------------------------------------
    def attacks_for(self, threat: Threat) -> tuple[str, ...]:
        return threat.attacks if threat.attacks is not None else self.attacks

    def all_attacks(self) -> tuple[str, ...]:
        names: list[str] = []
        for t in self.threats:
            for a in (*self.attacks_for(t), *self.minimal):
                if a not in names:
                    names.append(a)
        return tuple(names)

    def transfer_at(self, threat: Threat) -> tuple[float, ...]:
        """The radii of ``threat`` at which transfer examples are made."""
        if not self.transfer:
            return ()
        if self.transfer_eps is None:
            return threat.eps
        return tuple(e for e in threat.eps if any(abs(e - t) <= 1e-12 for t in self.transfer_eps))

    def build_attack(self, name: str, tm: "ThreatModel | str", seed: int = 0, **extra: Any) -> Attack:
        """The registry attack ``name`` at ``tm`` (a ThreatModel, or a norm name for minimal-norm
        attacks) with the suite's options (``extra`` override them)."""
        return registry.get(name, tm, **{"seed": seed, **self.attack_options.get(name, {}), **extra})

    def build_minimal(self, name: str, norm: str, shape: Sequence[int], seed: int = 0) -> Attack:
        """Attack ``name`` without a radius: from the norm name if it is a minimal-norm attack,
        else at a radius that admits every image of ``shape`` (C, H, W)."""
        if is_minimal(name):
            return self.build_attack(name, norm, seed)
        return self.build_attack(name, ThreatModel(norm, unbounded_eps(norm, shape)), seed)

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        """Check names, radii and options; raises ``ValueError``/``TypeError`` naming the culprit."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"suite name must be a non-empty string, got {self.name!r}")
        if not self.threats:
            raise ValueError(f"suite {self.name!r} has no threat model")
        if not self.attacks and any(t.attacks is None for t in self.threats):
            raise ValueError(f"suite {self.name!r} names no attacks")
        known = set(registry.available())
        for t in self.threats:
            if not isinstance(t, Threat):
                raise TypeError(f"suite {self.name!r}: threats must be Threat objects, got {type(t).__name__}")
            if t.norm not in NORMS:
                raise ValueError(f"suite {self.name!r}: unknown norm {t.norm!r}; expected one of {', '.join(NORMS)}")
            if not t.eps:
                raise ValueError(f"suite {self.name!r}: threat {t.norm} has an empty eps grid")
            for e in t.eps:
                if isinstance(e, bool) or not isinstance(e, (int, float)):
                    raise TypeError(f"suite {self.name!r}: eps values must be numbers, got {e!r} for norm {t.norm}")
                try:
                    ThreatModel(t.norm, e)
                except ValueError as exc:
                    raise ValueError(f"suite {self.name!r}, threat {t.norm}: {exc}") from exc
            if len(set(t.eps)) != len(t.eps) or list(t.eps) != sorted(t.eps):
                raise ValueError(f"suite {self.name!r}: the eps grid of {t.norm} must be increasing without repeats, got {list(t.eps)}")
            if not self.attacks_for(t):
                raise ValueError(f"suite {self.name!r}: threat {t.norm} names no attacks")
        if len({t.norm for t in self.threats}) != len(self.threats):
            raise ValueError(f"suite {self.name!r} lists a norm twice; give one threat per norm with all its eps")
        for a in (*self.all_attacks(), *self.attack_options, *( [self.transfer_attack] if self.transfer else [])):
            if str(a).lower() not in known:
                raise ValueError(f"suite {self.name!r}: unknown attack {a!r}; expected one of {', '.join(sorted(known))}")
        for a in self.attack_options:
            if a not in self.all_attacks() and a != self.transfer_attack and a != self.checks.attack:
                raise ValueError(f"suite {self.name!r}: attack_options names {a!r}, which the suite does not run")
        for t in self.threats:  # builds every attack once: bad options fail here
            tm = ThreatModel(t.norm, t.eps[-1])
            for a in (*self.attacks_for(t), *self.minimal):
                try:
                    if a in self.minimal and a not in self.attacks_for(t):
                        self.build_minimal(a, t.norm, (1, 1, 1))
                    else:
                        self.build_attack(a, tm)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"suite {self.name!r}: attack {a!r} ({t.norm}) cannot be built with options "
                                     f"{self.attack_options.get(a, {})}: {exc}") from exc
        for c in self.certifiers:
            if not isinstance(c, CertifierSpec):
                raise TypeError(f"suite {self.name!r}: certifiers must be CertifierSpec objects, got {type(c).__name__}")
            certifier(c.method).check(c.resolved())
        ch = self.checks
        if not isinstance(ch, Checks):
            raise TypeError(f"suite {self.name!r}: checks must be a Checks object or a bool, got {type(ch).__name__}")
        if ch.enabled:
            from robustlab._checks import check_positive

            for key in ("n", "strength", "noise_draws", "path_steps"):
                check_positive(getattr(ch, key), f"checks.{key}", integer=True)
            if ch.attack.lower() not in known:
                raise ValueError(f"suite {self.name!r}: checks.attack {ch.attack!r} is not a known attack; "
                                 f"expected one of {', '.join(sorted(known))}")
            for t in self.threats:
                self._buildable(ch.attack, t, "checks.attack")
        if self.transfer:
            for t in self.threats:
                if self.transfer_at(t):
                    self._buildable(self.transfer_attack, t, "transfer_attack")
        for src_name, src in self.transfer.items():
            if not isinstance(src, (str, os.PathLike, nn.Module)):
                raise TypeError(f"suite {self.name!r}: transfer source {src_name!r} must be a saved-model path or an "
                                f"nn.Module, got {type(src).__name__}")
        if self.transfer_eps is not None:
            for e in self.transfer_eps:
                if not any(abs(e - g) <= 1e-12 for t in self.threats for g in t.eps):
                    raise ValueError(f"suite {self.name!r}: transfer_eps {e:g} is on no threat model's eps grid")
        if isinstance(self.exemplars, bool) or not isinstance(self.exemplars, int) or self.exemplars < 0:
            raise ValueError(f"suite {self.name!r}: exemplars must be an integer >= 0, got {self.exemplars!r}")

    def _buildable(self, name: str, t: Threat, option: str) -> None:
        """``option``'s attack ``name`` runs at ``t``'s radii (e.g. no one-pixel attack for linf)."""
        try:
            self.build_attack(name, ThreatModel(t.norm, t.eps[-1]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"suite {self.name!r}: {option} {name!r} cannot run for the {t.norm} threat model "
                             f"(options {self.attack_options.get(name, {})}): {exc}") from exc

    def validate_for_input(self, shape: Sequence[int]) -> None:
        """Radii that cannot be reached in inputs of ``shape`` (C, H, W): l2 above ``sqrt(D)``,
        l1 above ``D``, l0 above the pixel count."""
        c, h, w = (int(v) for v in shape)
        limit = {"linf": 1.0, "l2": math.sqrt(c * h * w), "l1": float(c * h * w), "l0": float(h * w)}
        for t in self.threats:
            if t.eps[-1] > limit[t.norm] + 1e-9:
                raise ValueError(f"suite {self.name!r}: eps={t.eps[-1]} for norm {t.norm} exceeds the largest possible "
                                 f"distance {limit[t.norm]:.4g} between images of shape {tuple(shape)}")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "threats": [t.to_dict() for t in self.threats],
            "attacks": list(self.attacks),
            "attack_options": {k: dict(v) for k, v in self.attack_options.items()},
            "minimal": list(self.minimal),
            "certifiers": [c.to_dict() for c in self.certifiers],
            "checks": self.checks.to_dict(),
            "transfer": {k: (str(v) if not isinstance(v, nn.Module) else f"<{type(v).__name__} in memory>")
                         for k, v in self.transfer.items()},
            "transfer_attack": self.transfer_attack,
            "transfer_eps": None if self.transfer_eps is None else list(self.transfer_eps),
            "exemplars": self.exemplars,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any], where: str = "suite") -> "Suite":
        """Build a suite from the TOML layout (see the module docstring); unknown keys are refused and
        every value's type is checked (a string where a number or a list belongs is an error naming
        the key, the value and what was expected, never read letter by letter)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"{where} must be a table of settings, got {type(d).__name__}")
        d = _typed_suite_dict(d, where)
        allowed = {"name", "norm", "eps", "threat", "threats", "attacks", "attack_options", "minimal", "certifier",
                   "certifiers", "checks", "transfer", "transfer_attack", "transfer_eps", "exemplars"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; expected some of {sorted(allowed)}")
        raw_threats = d.get("threat", d.get("threats"))
        if raw_threats is not None and ("norm" in d or "eps" in d):
            raise ValueError(f"{where}: give either top-level norm/eps or [[threat]] tables, not both")
        threats = []
        if raw_threats is None:
            norm = d.get("norm", "linf")
            threats.append(Threat(norm, tuple(d.get("eps", default_eps(norm)))))
        else:
            if not isinstance(raw_threats, list):
                raise ValueError(f"{where}: threat must be an array of tables ([[threat]]), got {type(raw_threats).__name__}")
            for i, t in enumerate(raw_threats):
                bad = set(t) - {"norm", "eps", "attacks"}
                if bad or "norm" not in t:
                    raise ValueError(f"{where}: threat {i} needs 'norm' (and 'eps', 'attacks' optionally), got keys {sorted(t)}")
                threats.append(Threat(t["norm"], tuple(t.get("eps", default_eps(t["norm"]))),
                                      tuple(t["attacks"]) if "attacks" in t else None))
        certs = []
        for i, c in enumerate(d.get("certifier", d.get("certifiers", [])) or []):
            if not isinstance(c, Mapping) or "method" not in c:
                raise ValueError(f"{where}: certifier {i} must be a table with a 'method', got {c!r}")
            certs.append(CertifierSpec(str(c["method"]), {k: v for k, v in c.items() if k != "method"}))
        checks_raw = d.get("checks", {})
        if isinstance(checks_raw, bool):
            checks = Checks(enabled=checks_raw)
        else:
            bad = set(checks_raw) - set(Checks().to_dict())
            if bad:
                raise ValueError(f"{where}: [checks] has unknown keys {sorted(bad)}; expected some of {sorted(Checks().to_dict())}")
            checks = Checks(**checks_raw)
        transfer_raw = d.get("transfer", {})
        transfer_attack = d.get("transfer_attack", "pgd")
        transfer_eps = d.get("transfer_eps")
        if isinstance(transfer_raw, Mapping) and "sources" in transfer_raw:
            bad = set(transfer_raw) - {"sources", "attack", "eps"}
            if bad:
                raise ValueError(f"{where}: [transfer] has unknown keys {sorted(bad)}; expected 'sources', 'attack', 'eps'")
            transfer_attack = transfer_raw.get("attack", transfer_attack)
            transfer_eps = transfer_raw.get("eps", transfer_eps)
            transfer_raw = transfer_raw["sources"]
        if isinstance(transfer_raw, (list, tuple)):
            transfer = {Path(str(p)).name: str(p) for p in transfer_raw}
        elif isinstance(transfer_raw, Mapping):
            transfer = dict(transfer_raw)
        else:
            raise ValueError(f"{where}: transfer must list saved-model paths, got {transfer_raw!r}")
        return Suite(
            name=str(d.get("name", "custom")), threats=tuple(threats), attacks=tuple(d.get("attacks", ("fgsm", "pgd"))),
            attack_options=dict(d.get("attack_options", {})), minimal=tuple(d.get("minimal", ())),
            certifiers=tuple(certs), checks=checks, transfer=transfer, transfer_attack=str(transfer_attack),
            transfer_eps=None if transfer_eps is None else tuple(transfer_eps), exemplars=d.get("exemplars", 6),
        )


def _what(value: Any) -> str:
    return f"{value!r} ({'a string' if isinstance(value, str) else type(value).__name__})"


def _toml_number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {key} must be a number, got {_what(value)}")
    return value


def _toml_int(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {key} must be an integer, got {_what(value)}")
    return value


def _toml_str(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {key} must be a string, got {_what(value)}")
    return value


def _toml_bool(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {key} must be true or false, got {_what(value)}")
    return value


def _toml_eps(value: Any, key: str, where: str) -> list:
    """A number or a list of numbers (never a string, which would be read character by character)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where}: {key} must be a number or a list of numbers, e.g. {key.split()[-1]} = [0.1, 0.3], "
                        f"got {_what(value)}")
    for i, v in enumerate(value):
        _toml_number(v, f"{key}[{i}]", where)
    return list(value)


def _toml_names(value: Any, key: str, where: str) -> list:
    """A list of names (a single string is refused rather than split into letters)."""
    if not isinstance(value, (list, tuple)):
        example = f'["{value}"]' if isinstance(value, str) else '["fgsm", "pgd"]'
        raise TypeError(f"{where}: {key} must be a list of names, e.g. {key.split()[-1]} = {example}, got {_what(value)}")
    for i, v in enumerate(value):
        _toml_str(v, f"{key}[{i}]", where)
    return list(value)


def _toml_table(value: Any, key: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: {key} must be a table ([{key}]), got {_what(value)}")
    return value


def _typed_option(value: Any, default: Any, key: str, where: str) -> None:
    """``value`` has the type of the option's ``default`` (int options integers, float options numbers)."""
    if default is None:
        return
    if isinstance(default, bool):
        _toml_bool(value, key, where)
    elif isinstance(default, int):
        _toml_int(value, key, where)
    elif isinstance(default, float):
        _toml_number(value, key, where)
    elif isinstance(default, str):
        _toml_str(value, key, where)


def _typed_suite_dict(d: Mapping[str, Any], where: str) -> dict:
    """Check the type of every value of the TOML layout; returns ``d`` with lone eps numbers as lists."""
    d = dict(d)
    if "name" in d:
        _toml_str(d["name"], "name", where)
    if "norm" in d:
        _toml_str(d["norm"], "norm", where)
    for key in ("eps", "transfer_eps"):
        if key in d:
            d[key] = _toml_eps(d[key], key, where)
    for key in ("attacks", "minimal"):
        if key in d:
            _toml_names(d[key], key, where)
    if "transfer_attack" in d:
        _toml_str(d["transfer_attack"], "transfer_attack", where)
    if "exemplars" in d:
        _toml_int(d["exemplars"], "exemplars", where)
    for key in ("threat", "threats"):
        if key in d:
            if not isinstance(d[key], list):
                raise TypeError(f"{where}: {key} must be an array of tables ([[threat]]), got {_what(d[key])}")
            rows = []
            for i, t in enumerate(d[key]):
                t = dict(_toml_table(t, f"threat {i}", where))
                if "norm" in t:
                    _toml_str(t["norm"], f"threat {i} norm", where)
                if "eps" in t:
                    t["eps"] = _toml_eps(t["eps"], f"threat {i} eps", where)
                if "attacks" in t:
                    _toml_names(t["attacks"], f"threat {i} attacks", where)
                rows.append(t)
            d[key] = rows
    if "attack_options" in d:
        for name, opts in _toml_table(d["attack_options"], "attack_options", where).items():
            _toml_table(opts, f"attack_options.{name}", where)
    if "checks" in d and not isinstance(d["checks"], bool):
        checks = _toml_table(d["checks"], "checks", where)
        for key, default in Checks().to_dict().items():
            if key in checks:
                _typed_option(checks[key], default, f"checks.{key}", where)
    for key in ("certifier", "certifiers"):
        if key in d:
            if not isinstance(d[key], list):
                raise TypeError(f"{where}: {key} must be an array of tables ([[certifier]]), got {_what(d[key])}")
            for i, c in enumerate(d[key]):
                c = _toml_table(c, f"certifier {i}", where)
                method = _toml_str(c.get("method"), f"certifier {i} method", where) if "method" in c else None
                if method is not None and method.lower() in CERTIFIERS:
                    defaults = CERTIFIERS[method.lower()].defaults
                    for k, v in c.items():
                        if k != "method" and k in defaults:
                            _typed_option(v, defaults[k], f"certifier {method} {k}", where)
    if "transfer" in d:
        t = d["transfer"]
        if isinstance(t, Mapping) and "sources" in t:
            _toml_names(t["sources"], "transfer.sources", where)
            if "attack" in t:
                _toml_str(t["attack"], "transfer.attack", where)
            if "eps" in t:
                t = {**t, "eps": _toml_eps(t["eps"], "transfer.eps", where)}
                d["transfer"] = t
        elif isinstance(t, Mapping):
            for name, path in t.items():
                _toml_str(path, f"transfer.{name}", where)
        else:
            _toml_names(t, "transfer", where)
    return d


def preset(name: str, norm: Optional[str] = None, eps: Optional[Sequence[float]] = None,
           dataset: Optional[str] = None) -> Suite:
    """``quick``: FGSM and PGD-40 (a few minutes on a CPU for 10,000 MNIST images), checks on 100
    images. ``standard``: :func:`standard_attacks`, checks on 200 images. One threat model
    ``norm`` (default linf) with ``eps`` (default: :func:`default_eps` for ``dataset``)."""
    norm = norm or "linf"
    grid = tuple(eps) if eps is not None else default_eps(norm, dataset)
    if name == "quick":
        return Suite("quick", (Threat(norm, grid),), ("fgsm", "pgd"), checks=Checks(n=100))
    if name == "standard":
        attacks, options = standard_attacks()
        return Suite("standard", (Threat(norm, grid),), attacks, options, checks=Checks(n=200))
    raise ValueError(f"unknown suite {name!r}; expected 'quick', 'standard' or a .toml file")


def load_suite(spec: "str | os.PathLike[str] | Suite", norm: Optional[str] = None, eps: Optional[Sequence[float]] = None,
               dataset: Optional[str] = None) -> Suite:
    """A suite from a preset name, a TOML file or a :class:`Suite` (returned as is). ``norm`` and
    ``eps`` replace the threat model of a preset (not of a file or a Suite: passing them then is an error)."""
    if isinstance(spec, Suite):
        if norm is not None or eps is not None:
            raise ValueError("norm/eps cannot override a Suite object; build the Suite with them")
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"suite must be 'quick', 'standard', a .toml path or a Suite, got {type(spec).__name__}")
    path = Path(spec)
    if path.suffix == ".toml":
        if not path.is_file():
            raise FileNotFoundError(f"suite file {path} does not exist")
        try:
            cfg = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"suite file {path} is not valid TOML: {exc}") from exc
        if norm is not None or eps is not None:
            if "threat" in cfg or "threats" in cfg:
                raise ValueError(f"suite file {path} lists [[threat]] tables; --norm/--eps cannot replace them")
            cfg = {**cfg, **({"norm": norm} if norm is not None else {}), **({"eps": list(eps)} if eps is not None else {})}
        cfg.setdefault("name", path.stem)
        return Suite.from_dict(cfg, where=f"suite file {path}")
    return preset(str(spec), norm, eps, dataset)
