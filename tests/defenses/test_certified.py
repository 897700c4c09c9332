"""Certified training adversaries: schedules, the robust loss bounds the clean loss, training helps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustlab as rl
from robustlab.training.base import from_args
from robustlab.training.certified import CROWNIBP, IBPAdversary
from robustlab.verify import certify


def test_schedules_follow_warmup_and_linear_ramp() -> None:
    adv = IBPAdversary(rl.ThreatModel("linf", 0.2), kappa_start=1.0, kappa_end=0.5, warmup=0.1, ramp=0.4)
    adv.set_progress(0.05, 0.1)
    assert adv.schedule() == {"eps": 0.0, "kappa": 1.0, "beta": 1.0}
    adv.set_progress(0.3, 1.0)
    s = adv.schedule(eps_scale=0.5)
    assert s["eps"] == pytest.approx(0.2 * 0.5 * 0.5) and s["kappa"] == pytest.approx(0.75) and s["beta"] == pytest.approx(0.5)
    adv.set_progress(0.9, 3.0)
    assert adv.schedule() == pytest.approx({"eps": 0.2, "kappa": 0.5, "beta": 0.0})
    assert isinstance(from_args("crown-ibp", {"eps": 0.1}), CROWNIBP)
    assert from_args("ibp", {"eps": 0.1}).kappa_end == 0.5 and from_args("crown-ibp", {"eps": 0.1}).kappa_end == 0.0
    with pytest.raises(ValueError, match="warmup"):
        IBPAdversary(rl.ThreatModel("linf", 0.1), warmup=0.7, ramp=0.5)


@pytest.mark.parametrize("cls", [IBPAdversary, CROWNIBP])
def test_worst_case_loss_bounds_the_clean_loss_and_trains_the_parameters(cls, digits_train) -> None:
    model = rl.models.create("small-cnn", dataset="digits", seed=0).train()
    x, y = digits_train.images[:32], digits_train.labels[:32]
    adv = cls(rl.ThreatModel("linf", 0.1), kappa_end=0.0, warmup=0.0, ramp=0.0)
    adv.set_progress(0.5, 1.0)
    loss, logits = adv.loss_and_logits(model, x, y, generator=torch.Generator())
    assert float(loss.detach()) >= float(F.cross_entropy(logits, y).detach()) - 1e-6  # worst case >= clean (CE is monotone)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert float(sum(g.abs().sum() for g in grads)) > 0


@pytest.mark.slow
def test_ibp_training_lowers_the_verified_worst_case_loss(digits_train, digits_test) -> None:
    tm = rl.ThreatModel("linf", 0.05)
    x, y = digits_test.images[:200], digits_test.labels[:200]
    robust = {}
    for name, adv in (("standard", None), ("ibp", IBPAdversary(tm, warmup=0.1, ramp=0.4))):
        model = rl.models.create("mlp", dataset="digits", seed=0)
        rl.training.train(model, digits_train, adversary=adv, epochs=3, batch_size=64, lr=3e-3, progress=False, seed=0)
        probe = IBPAdversary(tm)
        with torch.no_grad():
            robust[name] = float(F.cross_entropy(probe.worst_logits(model.eval(), x, y, tm.eps, 0.0), y))
    assert robust["ibp"] < 0.5 * robust["standard"], robust
