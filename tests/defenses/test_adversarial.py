"""Adversarial-training adversaries: the losses are the papers' objectives, crafted points stay in
the ball, training with them buys robustness on real digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustlab as rl
from robustlab.training import FGSMRS, MART, TRADES, FGSMRegularized, PGDAdversary, robust_validation, train

TM = rl.ThreatModel("linf", 0.1)


@pytest.fixture()
def trained(digits_model):
    return digits_model.train()


def test_pgd_adversary_stays_in_the_ball_and_raises_the_loss(trained, batch):
    x, y = batch
    adv = PGDAdversary(TM, steps=5)
    xa = adv.perturb(trained, x, y, torch.Generator().manual_seed(0))
    assert bool(TM.contains(xa, x).all()) and trained.training
    with torch.no_grad():
        trained.eval()
        assert F.cross_entropy(trained(xa), y) > F.cross_entropy(trained(x), y)
        trained.train()


def test_fgsm_regularized_is_the_goodfellow_mixture(digits_model, batch):
    x, y = batch
    trained = digits_model.eval()  # no dropout: the three losses see the same network
    g = torch.Generator()
    both = FGSMRegularized(TM, alpha=0.5).loss(trained, x, y, generator=g)
    clean = FGSMRegularized(TM, alpha=1.0).loss(trained, x, y, generator=g)
    adv = FGSMRegularized(TM, alpha=0.0).loss(trained, x, y, generator=g)
    assert torch.allclose(both, 0.5 * clean + 0.5 * adv, atol=1e-5)
    assert adv > clean


def test_trades_and_mart_losses_are_finite_and_above_the_clean_terms(trained, batch):
    x, y = batch
    g = torch.Generator().manual_seed(0)
    trades = TRADES(TM, beta=6.0, steps=3).loss(trained, x, y, generator=g)
    trades0 = TRADES(TM, beta=0.0, steps=3).loss(trained, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(trades) and trades >= trades0 - 1e-6
    mart = MART(TM, steps=3).loss(trained, x, y, generator=g)
    assert torch.isfinite(mart) and mart > 0


def test_eps_warmup_scales_the_ball(trained, batch):
    x, y = batch
    xa = PGDAdversary(TM, steps=3).perturb(trained, x, y, torch.Generator(), eps_scale=0.25)
    assert float((xa - x).abs().max()) <= 0.025 + 1e-6


def test_fgsmrs_training_buys_robustness_on_digits(digits_train, digits_test):
    x, y = digits_test.images[:200], digits_test.labels[:200]
    tm = rl.ThreatModel("linf", 0.2)
    attack = rl.attacks.PGD(tm, steps=10)
    std = rl.models.create("mlp", "digits", seed=0)
    train(std, digits_train, epochs=10, progress=False)
    rob = rl.models.create("mlp", "digits", seed=0)
    train(rob, digits_train, epochs=10, progress=False, adversary=FGSMRS(tm))
    assert attack.attack(rob, x, y).robust_accuracy > attack.attack(std, x, y).robust_accuracy + 0.1


def test_robust_validation_detects_a_collapse(digits_model, digits_test):
    fn = robust_validation(TM, n=64, steps=5, collapse=0.2)
    first = fn(digits_model, digits_test)
    assert 0.0 <= first["robust_accuracy"] <= 1.0 and "stop" not in first
    blind = rl.models.create("mlp", "digits", seed=0)  # untrained: robust accuracy ~ chance
    second = fn(blind, digits_test)
    assert second.get("stop") is (first["robust_accuracy"] - second["robust_accuracy"] > 0.2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PGDAdversary(TM, steps=0), "steps must be > 0"),
        (lambda: PGDAdversary(TM, steps=5, step_size=0.5), "more than twice eps"),
        (lambda: FGSMRS(rl.ThreatModel("l0", 3)), "norm 'l0'"),
        (lambda: FGSMRegularized(TM, alpha=1.5), "alpha must be in"),
        (lambda: TRADES("linf", beta=1.0), "robustlab.ThreatModel"),
    ],
)
def test_bad_adversary_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
