"""Every attack x every norm it supports x batch sizes {1, 3, 8} (and float64) through the shared
property suite :func:`robustlab.testing.check_attack`, untargeted and targeted."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks import (
    APGD,
    APGDT,
    DDN,
    EOT,
    FMN,
    PGD,
    CarliniWagner,
    CarliniWagnerL0,
    CarliniWagnerLinf,
    DeepFool,
    WorstCase,
    standard,
)
from robustlab.testing import check_attack

EPS = {"linf": 0.3, "l2": 2.0, "l1": 8.0, "l0": 6}


def _tm(norm: str) -> rl.ThreatModel:
    return rl.ThreatModel(norm, EPS[norm])


# (id, norm, make(seed)); small budgets: the suite checks the contract, test_strength the power.
CASES = [
    *[(f"apgd-ce-{n}", n, lambda s, n=n: APGD(_tm(n), steps=8, seed=s)) for n in ("linf", "l2", "l1")],
    *[(f"apgd-dlr-{n}", n, lambda s, n=n: APGD(_tm(n), steps=5, loss="dlr", restarts=2, seed=s)) for n in ("linf", "l2")],
    *[(f"apgd-t-{n}", n, lambda s, n=n: APGDT(_tm(n), steps=4, n_target_classes=2, seed=s)) for n in ("linf", "l2", "l1")],
    ("cw-l2", "l2", lambda s: CarliniWagner(steps=10, binary_search_steps=2, seed=s)),
    ("cw-l2-bounded", "l2", lambda s: CarliniWagner(rl.ThreatModel("l2", 0.5), steps=10, binary_search_steps=2, initial_const=1.0, seed=s)),
    ("cw-linf", "linf", lambda s: CarliniWagnerLinf(steps=8, initial_const=1e-2, largest_const=0.1, seed=s)),
    ("cw-l0", "l0", lambda s: CarliniWagnerL0(steps=8, initial_const=1.0, largest_const=10.0, seed=s)),
    ("cw-l0-bounded", "l0", lambda s: CarliniWagnerL0(rl.ThreatModel("l0", 6), steps=8, initial_const=1.0, largest_const=10.0, seed=s)),
    *[(f"deepfool-{n}", n, lambda s, n=n: DeepFool(n, steps=10, seed=s)) for n in ("l2", "linf")],
    ("deepfool-linf-bounded", "linf", lambda s: DeepFool(rl.ThreatModel("linf", 0.1), seed=s)),
    *[(f"fmn-{n}", n, lambda s, n=n: FMN(n, steps=10, seed=s)) for n in ("linf", "l2", "l1")],
    *[(f"fmn-{n}-bounded", n, lambda s, n=n: FMN(rl.ThreatModel(n, EPS[n] / 4), steps=10, seed=s)) for n in ("linf", "l2", "l1")],
    ("ddn", "l2", lambda s: DDN(steps=10, seed=s)),
    ("ddn-bounded", "l2", lambda s: DDN(rl.ThreatModel("l2", 0.5), steps=10, seed=s)),
    ("eot-pgd", "linf", lambda s: EOT(PGD(_tm("linf"), steps=4, seed=s), n=2)),
    ("eot-deepfool", "l2", lambda s: EOT(DeepFool("l2", steps=5, seed=s), n=2)),
    ("worst-case-fixed", "linf", lambda s: WorstCase([APGD(rl.ThreatModel("linf", 0.1), steps=4, seed=s), FMN("linf", steps=5)])),
    ("worst-case-min", "l2", lambda s: WorstCase([DeepFool("l2", steps=10), FMN("l2", steps=10, seed=s)])),
    ("standard-quick", "linf", lambda s: standard(rl.ThreatModel("linf", 0.2), seed=s, version="quick")),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_property_suite(model, batch, case):
    _, norm, make = case
    x, y = batch
    model.train()  # the suite checks that the attack restores it
    res = check_attack(make, model, x, y)
    model.eval()
    att = make(0)
    assert res.norm == norm and len(res) == x.shape[0]
    if att.threat is not None:
        assert bool(att.threat.contains(res.x_adv, x).all())
    assert bool((res.distance[~res.success] >= 0).all())


TARGETED = [
    ("apgd-ce", lambda s: APGD(_tm("linf"), steps=20, seed=s)),
    ("apgd-t", lambda s: APGDT(_tm("l2"), steps=20, seed=s)),
    ("cw-l2", lambda s: CarliniWagner(steps=30, binary_search_steps=3, initial_const=1.0, step_size=0.1, seed=s)),
    ("deepfool", lambda s: DeepFool("l2", seed=s)),
    ("fmn", lambda s: FMN("l2", steps=30, seed=s)),
    ("ddn", lambda s: DDN(steps=30, seed=s)),
]


@pytest.mark.parametrize("case", TARGETED, ids=[c[0] for c in TARGETED])
def test_targeted_property_suite(model, batch, case):
    _, make = case
    x, y = batch
    target = (y + 1) % 10
    res = check_attack(make, model, x, y, target=target, batch_sizes=(3,), check_dtype=False)
    assert res.success_rate >= 0.75
    pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred[res.success], target[res.success])
