"""FGSM, BIM and PGD: the shared property suite, closed forms on a linear model, real strength."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.attacks import BIM, FGSM, PGD
from robustlab.testing import check_attack

NORM_EPS = {"linf": 0.3, "l2": 2.0, "l1": 8.0, "l0": 6}


@pytest.mark.parametrize("norm", list(NORM_EPS))
@pytest.mark.parametrize(
    "make",
    [
        lambda tm, s: FGSM(tm, seed=s),
        lambda tm, s: FGSM(tm, random_start=True, seed=s),
        lambda tm, s: BIM(tm, steps=5, seed=s),
        lambda tm, s: PGD(tm, steps=10, restarts=2, seed=s),
        lambda tm, s: PGD(tm, steps=5, loss="dlr", seed=s),
        lambda tm, s: PGD(tm, steps=5, loss="cw", early_stop=False, seed=s),
    ],
    ids=["fgsm", "rfgsm", "bim", "pgd", "pgd-dlr", "pgd-cw-noearlystop"],
)
def test_property_suite(model, batch, norm, make):
    x, y = batch
    tm = rl.ThreatModel(norm, NORM_EPS[norm])
    model.train()  # the suite checks that the attack restores this
    res = check_attack(lambda s: make(tm, s), model, x, y)
    assert model.training and len(res) == x.shape[0]
    assert bool(tm.contains(res.x_adv, x).all())
    model.eval()


def test_targeted_pgd_hits_the_target(model, batch):
    x, y = batch
    target = (y + 3) % 10
    res = check_attack(lambda s: PGD(rl.ThreatModel("linf", 0.3), steps=30, seed=s), model, x, y, target=target)
    assert res.success_rate >= 0.9
    assert torch.equal(model(res.x_adv).argmax(1)[res.success], target[res.success])


def test_pgd_beats_the_digits_model_and_fgsm_is_weaker(model, digits_test):
    x, y = digits_test.images[:200], digits_test.labels[:200]
    tm = rl.ThreatModel("linf", 0.3)
    pgd = PGD(tm, steps=20).attack(model, x, y)
    fgsm = FGSM(rl.ThreatModel("linf", 0.1)).attack(model, x, y)
    assert pgd.robust_accuracy <= 0.02
    assert fgsm.robust_accuracy > pgd.robust_accuracy
    # Robust accuracy never exceeds clean accuracy, and falls as eps grows.
    accs = [PGD(rl.ThreatModel("linf", e), steps=10).attack(model, x, y).robust_accuracy for e in (0.0, 0.05, 0.1, 0.2)]
    assert accs == sorted(accs, reverse=True) and accs[0] == float(pgd.clean_correct.float().mean())


def test_early_stop_spends_no_steps_on_broken_samples(model, batch):
    x, y = batch
    res = PGD(rl.ThreatModel("linf", 0.3), steps=50).attack(model, x, y)
    assert bool(res.success.all())
    assert int(res.iterations.max()) < 50  # every sample broke before the budget ran out


def test_restarts_use_different_random_starts(model, batch):
    x, y = batch
    tm = rl.ThreatModel("linf", 0.02)
    a = PGD(tm, steps=1, step_size=1e-6, seed=0).attack(model, x, y).x_adv
    b = PGD(tm, steps=1, step_size=1e-6, seed=1).attack(model, x, y).x_adv
    assert not torch.equal(a, b)


class Logistic(nn.Module):
    """Binary logistic regression as 2-class logits [0, w.x + b]."""

    def __init__(self, w: torch.Tensor, b: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = b

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_fgsm_on_the_lectures_linear_example():
    """Lecture 1: w, x in R^10, eps 0.1 moves sigma(w.x) from about 0.12 to about 0.8, and the
    FGSM step equals eps * sign(w) (the gradient of the class-0 loss points along w)."""
    w = torch.tensor([-5.0, 3, -2, 2, -2, -5, -4, 3, 4, -4])
    x = torch.tensor([-1.0, -1, 1, -1, 1, 1, -1, 1, -1, -1])
    model = Logistic(w).double()
    # The lecture's inputs live in [-1.1, 1.1]: a threat model with that box.
    tm = rl.ThreatModel("linf", 0.1, lower=-2.0, upper=2.0)
    x4 = x.double().reshape(1, 1, 1, 10)
    assert math.isclose(float(torch.sigmoid(model(x4)[0, 1].detach())), 0.12, abs_tol=0.005)
    res = FGSM(tm).attack(model, x4, torch.tensor([0]))
    delta = (res.x_adv - x4).flatten()
    assert torch.allclose(delta, 0.1 * torch.sign(w).double())
    assert math.isclose(float(torch.sigmoid(model(res.x_adv)[0, 1].detach())), 0.8, abs_tol=0.02)
    assert bool(res.success.all()) and all(p.grad is None for p in model.parameters())


def test_l2_pgd_reaches_the_hyperplane_distance():
    """On a linear model the minimal l2 perturbation is |w.x + b| / ||w||: PGD with eps just above
    it succeeds, just below it cannot."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=g, dtype=torch.float64)
    model = Logistic(w, b=-0.3).double()
    x = torch.full((4, 1, 8, 8), 0.5, dtype=torch.float64) + 0.1 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    z = model(x)[:, 1]
    y = (z > 0).long()
    dist = (z.abs() / w.norm()).detach()
    for scale, expect in ((1.02, True), (0.98, False)):
        for i in range(4):
            tm = rl.ThreatModel("l2", float(dist[i]) * scale)
            res = PGD(tm, steps=100, random_start=False).attack(model, x[i : i + 1], y[i : i + 1])
            assert bool(res.success.item()) is expect


def test_bad_attack_inputs(model, batch):
    x, y = batch
    tm = rl.ThreatModel("linf", 0.1)
    with pytest.raises(ValueError, match="NaN"):
        PGD(tm).attack(model, torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match="expected images in"):
        PGD(tm).attack(model, x * 3, y)
    with pytest.raises(ValueError, match="class index 12"):
        PGD(tm).attack(model, x, torch.full_like(y, 12))
    with pytest.raises(ValueError, match="empty batch"):
        PGD(tm).attack(model, x[:0], y[:0])
    with pytest.raises(ValueError, match="rank 3"):
        PGD(tm).attack(model, x[0], y[:1])
    with pytest.raises(ValueError, match="steps must be > 0"):
        PGD(tm, steps=0)
    with pytest.raises(ValueError, match="target equals the true label"):
        PGD(tm).attack(model, x, y, target=y)
