"""Defensive distillation: the two adversaries of the training loop, the registry entries, and the
saturated softmax that stalls PGD on cross-entropy but not PGD on the logit margin."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks import PGD
from robustlab.training import ADVERSARIES, from_args
from robustlab.training.distillation import Distillation, Temperature, defensive_distillation


def test_losses_are_the_papers_formulas(model, batch):
    x, y = batch
    g = torch.Generator().manual_seed(0)
    t = Temperature(10.0)
    loss = t.loss(model, x, y, generator=g)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(model(x) / 10.0, y))
    d = Distillation(model, 10.0)
    q = torch.softmax(model(x) / 10.0, 1)
    expected = -(q * torch.log_softmax(model(x) / 10.0, 1)).sum(1).mean()
    assert torch.allclose(d.loss(model, x, y, generator=g), expected, atol=1e-6)
    assert not model.training


def test_registry_offers_both_stages():
    assert {"temperature", "distill"} <= set(ADVERSARIES)
    assert from_args("temperature", {"temperature": 50.0}).temperature == 50.0
    with pytest.raises(ValueError, match="teacher"):
        from_args("distill", {})
    with pytest.raises(ValueError, match="temperature"):
        Temperature(0.0)


@pytest.mark.slow
def test_distilled_student_stalls_pgd_on_cross_entropy_but_not_on_the_margin(digits_train, digits_test):
    def make():
        torch.manual_seed(0)
        return rl.models.create("small-cnn", dataset="digits")

    student, teacher = defensive_distillation(make, digits_train, temperature=100.0, epochs=10, lr=1e-2,
                                              progress=False, seed=0)
    x, y = digits_test.images[:64], digits_test.labels[:64]
    with torch.no_grad():
        logits = student(x)
    assert float((logits.argmax(1) == y).float().mean()) >= 0.8
    tm = rl.ThreatModel("linf", 0.2)
    ce = PGD(tm, steps=20, loss="ce", seed=0).attack(student, x, y)
    margin = PGD(tm, steps=20, loss="cw", seed=0).attack(student, x, y)
    assert logits.abs().amax(1).median() > 100  # logits about T times larger than usual: softmax saturates
    assert ce.robust_accuracy >= margin.robust_accuracy + 0.4  # measured: 82.8% vs 3.1%
