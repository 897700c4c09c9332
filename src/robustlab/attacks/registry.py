"""Attacks by name, for the command line, suites and reports: ``get(name, threat, **overrides)``."""

from __future__ import annotations

from typing import Any, Callable

from robustlab.attacks.base import Attack
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.pgd import BIM, PGD
from robustlab.threat import ThreatModel

Factory = Callable[..., Attack]

#: name -> (factory(threat, **kw), one-line description). Defaults follow the papers.
ATTACKS: dict[str, tuple[Factory, str]] = {
    "fgsm": (lambda tm, **kw: FGSM(tm, **kw), "FGSM, one step of size eps (Goodfellow et al. 2015)"),
    "bim": (lambda tm, **kw: BIM(tm, **{"steps": 10, **kw}), "BIM, 10 steps from x (Kurakin et al. 2017)"),
    "pgd": (lambda tm, **kw: PGD(tm, **{"steps": 40, **kw}), "PGD-40, random start (Madry et al. 2018)"),
    "pgd-dlr": (lambda tm, **kw: PGD(tm, **{"steps": 40, "loss": "dlr", **kw}), "PGD-40 on the DLR loss (Croce & Hein 2020)"),
    "pgd-cw": (lambda tm, **kw: PGD(tm, **{"steps": 40, "loss": "cw", **kw}), "PGD-40 on the CW margin (Carlini & Wagner 2017)"),
}


def available() -> tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return tuple(ATTACKS)


def describe(name: str) -> str:
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[Factory, str]:
    key = str(name).lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
    return ATTACKS[key]


def get(name: str, threat: ThreatModel, **overrides: Any) -> Attack:
    """Build attack ``name`` for ``threat``; ``overrides`` replace its default hyperparameters."""
    if not isinstance(threat, ThreatModel):
        raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
    return _lookup(name)[0](threat, **overrides)
