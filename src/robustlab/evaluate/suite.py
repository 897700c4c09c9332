"""What an evaluation runs: a threat model's eps grid times a list of attacks.

A :class:`Suite` is given by name (``"quick"``, ``"standard"``), built in code, or read from a TOML
file::

    name = "my-suite"
    norm = "linf"
    eps = [0.1, 0.2, 0.3]
    attacks = ["fgsm", "pgd"]
    [attack_options.pgd]
    steps = 100
    restarts = 5

The whole suite is validated before any attack runs.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from robustlab.attacks import registry
from robustlab.threat import ThreatModel

#: Default eps grids per norm, for images in [0, 1] (MNIST-scale).
DEFAULT_EPS = {"linf": (0.1, 0.2, 0.3), "l2": (0.5, 1.0, 2.0), "l1": (5.0, 10.0, 15.0), "l0": (5, 10, 20)}


@dataclass(frozen=True)
class Suite:
    """Threat model ``norm`` at every radius in ``eps``, attacked by every name in ``attacks``
    (see :func:`robustlab.attacks.available`), with per-attack hyperparameter overrides."""

    name: str
    norm: str = "linf"
    eps: tuple[float, ...] = DEFAULT_EPS["linf"]
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "attacks", tuple(self.attacks))
        self.validate()

    def validate(self) -> None:
        if not self.eps:
            raise ValueError(f"suite {self.name!r} has an empty eps grid")
        if not self.attacks:
            raise ValueError(f"suite {self.name!r} names no attacks")
        for eps in self.eps:
            ThreatModel(self.norm, eps)  # raises for unknown norms and eps out of range
        for attack in self.attacks:
            registry.describe(attack)  # raises for unknown names
        for attack, opts in self.attack_options.items():
            if attack not in self.attacks:
                raise ValueError(f"attack_options names {attack!r}, which is not in the suite's attacks {self.attacks}")
            registry.get(attack, ThreatModel(self.norm, self.eps[0]), **opts)  # raises for bad options

    def threat_models(self) -> list[ThreatModel]:
        return [ThreatModel(self.norm, e) for e in self.eps]

    def to_dict(self) -> dict:
        return {"name": self.name, "norm": self.norm, "eps": list(self.eps), "attacks": list(self.attacks),
                "attack_options": self.attack_options}


def preset(name: str, norm: str = "linf", eps: Sequence[float] | None = None) -> Suite:
    """``quick``: FGSM and PGD-40; ``standard``: adds PGD with 5 restarts and the DLR and CW losses."""
    grid = tuple(eps) if eps is not None else DEFAULT_EPS.get(norm, DEFAULT_EPS["linf"])
    if name == "quick":
        return Suite("quick", norm, grid, ("fgsm", "pgd"))
    if name == "standard":
        return Suite("standard", norm, grid, ("fgsm", "pgd", "pgd-dlr", "pgd-cw"),
                     {"pgd": {"restarts": 5}, "pgd-dlr": {"restarts": 2}, "pgd-cw": {"restarts": 2}})
    raise ValueError(f"unknown suite {name!r}; expected 'quick', 'standard' or a .toml file")


def load_suite(spec: "str | os.PathLike[str] | Suite", norm: str = "linf", eps: Sequence[float] | None = None) -> Suite:
    """A suite from a preset name, a TOML file, or a :class:`Suite` (returned as is)."""
    if isinstance(spec, Suite):
        return spec
    path = Path(spec)
    if path.suffix == ".toml":
        if not path.is_file():
            raise FileNotFoundError(f"suite file {path} does not exist")
        try:
            cfg = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"suite file {path} is not valid TOML: {exc}") from exc
        unknown = set(cfg) - {"name", "norm", "eps", "attacks", "attack_options"}
        if unknown:
            raise ValueError(f"suite file {path} has unknown keys {sorted(unknown)}")
        return Suite(cfg.get("name", path.stem), cfg.get("norm", norm), tuple(cfg.get("eps", eps or DEFAULT_EPS["linf"])),
                     tuple(cfg.get("attacks", ("fgsm", "pgd"))), dict(cfg.get("attack_options", {})))
    return preset(str(spec), norm, eps)
