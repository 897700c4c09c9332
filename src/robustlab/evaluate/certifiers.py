"""Bound-based certifiers for evaluation suites (``[[certifier]] method = "crown"``).

Each registers a :class:`~robustlab.evaluate.suite.CertifierEntry` with ``certifies="model"``: the
radius holds for the evaluated model itself, so it is the lower end of each sample's robustness
interval (the largest linf radius proven by bisection on eps with the chosen bound), next to the
upper end found by the minimal-norm attacks. ``milp`` and ``bab`` check one radius (``eps``) completely.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.certificates import Certificate
from robustlab.evaluate.suite import CERTIFIERS, CertifierEntry, register_certifier
from robustlab.threat import ThreatModel

_PAPERS = {
    "ibp": "interval bound propagation, Gowal et al. 2018 (arXiv:1810.12715)",
    "crown": "CROWN linear relaxation, Zhang et al. 2018 (arXiv:1811.00866)",
    "alpha-crown": "alpha-CROWN optimised slopes, Xu et al. 2021 (arXiv:2011.13824)",
    "lp": "Wong & Kolter 2018 dual network of the triangle LP (arXiv:1711.00851)",
}


def _check(method: str):
    def check(o: Mapping[str, Any]) -> None:
        check_positive(o["eps"], f"certifier {method}: eps")
        ThreatModel("linf", float(o["eps"]))
        if method in ("milp", "bab"):
            check_positive(o["time_limit"], f"certifier {method}: time_limit")
        else:
            check_positive(o["search_steps"], f"certifier {method}: search_steps", integer=True, allow_zero=True)
    return check


def _certify(method: str):
    def run(model: nn.Module, x: Tensor, o: Mapping[str, Any], seed: int) -> Certificate:
        from robustlab.verify import certify

        tm = ThreatModel("linf", float(o["eps"]))
        if method in ("milp", "bab"):
            return certify(model, x, None, tm, method, time_limit=float(o["time_limit"]))
        return certify(model, x, None, tm, method, search_steps=int(o["search_steps"]))
    return run


for _name, _paper in _PAPERS.items():
    if _name not in CERTIFIERS:
        register_certifier(CertifierEntry(
            name=_name, certify=_certify(_name), defaults={"eps": 0.3, "search_steps": 10}, check=_check(_name),
            certifies="model", norm="linf",
            help=f"{_paper}: the largest linf radius in [0, eps] proven by bisection (search_steps halvings)",
        ))
if "milp" not in CERTIFIERS:
    register_certifier(CertifierEntry(
        name="milp", certify=_certify("milp"), defaults={"eps": 0.1, "time_limit": 60.0}, check=_check("milp"),
        certifies="model", norm="linf",
        help="complete MILP verification at radius eps, Tjeng et al. 2019 (arXiv:1711.07356), HiGHS, "
             "time_limit seconds per image",
    ))
if "bab" not in CERTIFIERS:
    register_certifier(CertifierEntry(
        name="bab", certify=_certify("bab"), defaults={"eps": 0.1, "time_limit": 60.0}, check=_check("bab"),
        certifies="model", norm="linf",
        help="complete branch and bound with beta-CROWN bounds at radius eps, Wang et al. 2021 (arXiv:2103.06624), "
             "time_limit seconds per image",
    ))
