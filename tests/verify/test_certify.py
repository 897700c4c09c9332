"""certify: deterministic certificates from bounds and MILP."""

from __future__ import annotations

import pytest
import torch
from verify_nets import tiny_inputs, tiny_net

import robustlab as rl
from robustlab.certificates import Certificate
from robustlab.verify import bounds, certify
from robustlab.verify.bounds import verified
from robustlab.verify.tolerance import TAU


def test_certificate_radius_is_eps_exactly_where_the_margins_are_proven() -> None:
    model = tiny_net("conv", 0)
    x = tiny_inputs(8, 0)
    tm = rl.ThreatModel("linf", 0.03)
    pred = model(x).argmax(1)
    for method in ("ibp", "crown", "lp"):
        cert = certify(model, x, None, tm, method)
        assert isinstance(cert, Certificate) and cert.alpha == 0.0 and cert.norm == "linf"
        lo, _ = bounds(model, x, tm, method, "margin", pred)
        ok = verified(lo, pred)
        assert torch.equal(~cert.abstain, ok)
        assert torch.equal(cert.radius, torch.where(ok, 0.03, 0.0).double())
        assert torch.equal(cert.prediction[ok], pred[ok])
        assert cert.info["tau"] == TAU  # verified up to tau: every margin's lower bound above it
        assert torch.equal(~certify(model, x, None, tm, method, tau=0.5).abstain, verified(lo, pred, tau=0.5))
    with pytest.raises(ValueError, match="tau"):
        certify(model, x, None, tm, "crown", tau=-1e-3)


def test_misclassified_samples_are_never_certified_for_their_label() -> None:
    model = tiny_net("mlp", 1)
    x = tiny_inputs(6, 1)
    wrong = (model(x).argmax(1) + 1) % 4
    cert = certify(model, x, wrong, rl.ThreatModel("linf", 0.0), "crown")
    assert bool(cert.abstain.all())


def test_bisection_radius_is_proven_and_not_larger_than_eps() -> None:
    model = tiny_net("mlp", 2)
    x = tiny_inputs(6, 2)
    tm = rl.ThreatModel("linf", 0.2)
    cert = certify(model, x, None, tm, "crown", search_steps=10)
    assert bool((cert.radius <= 0.2).all()) and bool((cert.radius[~cert.abstain] > 0).all())
    pred = model(x).argmax(1)
    for i in (~cert.abstain).nonzero().flatten().tolist():
        r = float(cert.radius[i])
        lo, _ = bounds(model, x[i : i + 1], tm.with_eps(r), "crown", "margin", pred[i : i + 1])
        assert bool(verified(lo, pred[i : i + 1]).all())
        res = rl.attacks.PGD(tm.with_eps(r), steps=20, seed=0).attack(model, x[i : i + 1], pred[i : i + 1])
        assert not bool(res.success.any())


def test_milp_certifies_at_least_what_crown_certifies() -> None:
    model = tiny_net("mlp", 3)
    x = tiny_inputs(5, 3)
    tm = rl.ThreatModel("linf", 0.05)
    crown = certify(model, x, None, tm, "crown")
    milp = certify(model, x, None, tm, "milp", time_limit=30)
    assert bool((~milp.abstain | crown.abstain).all())
    assert len(milp.info["status"]) == 5
