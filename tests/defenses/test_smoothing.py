"""Randomized smoothing: statistics that hold their level, radii that are never too large,
batched and seeded sampling, strict arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.certificates import Certificate, certified_accuracy
from robustlab.defenses import GaussianNoise, train
from robustlab.defenses.smoothing import Smoothed, min_samples_to_certify
from robustlab.stats import clopper_pearson


class TwoClassLinear(nn.Module):
    """Logits [0, w.x + b]: the decision boundary is a hyperplane at L2 distance |w.x + b| / ||w||."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), b

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


@pytest.fixture(scope="module")
def noisy_digits_model(digits_train):
    m = rl.models.create("mlp", "digits", seed=0)
    train(m, digits_train, epochs=8, adversary=GaussianNoise(0.25), progress=False)
    return m


def test_certify_matches_cohen_on_a_linear_classifier():
    """For a linear f, P(f(x + delta) = cA) = Phi(d / sigma) with d the hyperplane distance, so the
    certified radius sigma * Phi^-1(pA_lower) must never exceed d, and approaches it for large n."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    model = TwoClassLinear(w, -0.2).double()
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    d = (x.flatten(1) @ w - 0.2).abs() / w.norm()
    cert = Smoothed(model, sigma=0.5, batch_size=4096).certify(x, n0=64, n=20000, alpha=0.001)
    certified = ~cert.abstain
    assert bool((cert.radius[certified] <= d[certified] + 1e-9).all())
    big = d > 0.3  # clearly inside one class: the bound is tight up to the finite-n slack
    assert bool(certified[big].all()) and bool((cert.radius[big] > 0.75 * d[big]).all())


def test_fixed_n_lower_bound_coverage():
    """Simulated binomials with known p: the one-sided bound fails at most alpha of the time."""
    rng = np.random.default_rng(0)
    alpha, trials = 0.05, 4000
    for p in (0.55, 0.8, 0.97):
        k = rng.binomial(500, p, size=trials)
        lo, _ = clopper_pearson(k, 500, alpha, side="lower")
        assert np.mean(lo > p) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_adaptive_bound_coverage_with_union_over_looks():
    """Simulate the adaptive procedure's looks on binomial streams: the bound reported at the
    stopping look fails at most alpha of the time."""
    rng = np.random.default_rng(1)
    alpha, trials, looks = 0.05, 3000, [40, 160, 640, 2560]
    a_look = alpha / len(looks)
    for p in (0.6, 0.9):
        draws = rng.random((trials, looks[-1])) < p
        cum = np.cumsum(draws, axis=1)
        failed = np.zeros(trials, dtype=bool)
        stopped = np.zeros(trials, dtype=bool)
        for look in looks:
            lo, _ = clopper_pearson(cum[:, look - 1], look, a_look, side="lower")
            stop_now = ~stopped & ((lo > 0.75) | (look == looks[-1]))  # a data-dependent stopping rule
            failed |= stop_now & (lo > p)
            stopped |= stop_now
        assert failed.mean() <= alpha


def test_adaptive_saves_samples_and_keeps_the_curve(noisy_digits_model, digits_test):
    x, y = digits_test.images[:40], digits_test.labels[:40]
    sm = Smoothed(noisy_digits_model, 0.25, batch_size=8192)
    fixed = sm.certify(x, n0=50, n=4000, alpha=0.001)
    radii = [0.0, 0.25, 0.5]
    adaptive = sm.certify_adaptive(x, n0=50, n_max=4000, alpha=0.001, radius=radii)
    f_curve, a_curve = certified_accuracy(fixed, y, radii), certified_accuracy(adaptive, y, radii)
    assert float((f_curve - a_curve).abs().max()) <= 0.1
    assert float(adaptive.samples.float().mean()) < 0.5 * float(fixed.samples.float().mean())


def test_certificates_survive_an_attack_on_the_smoothed_classifier(noisy_digits_model, digits_test):
    """L2 PGD on the soft smoothed classifier (Salman et al.) inside each certified radius must not
    change the certified prediction (checked with a fresh PREDICT at the attacked point)."""
    x, y = digits_test.images[:24], digits_test.labels[:24]
    sm = Smoothed(noisy_digits_model, 0.25, batch_size=8192, n_forward=16)
    cert = sm.certify(x, n0=50, n=2000, alpha=0.001)
    ok = (~cert.abstain) & (cert.radius > 0.05)
    assert int(ok.sum()) >= 5
    changed = 0
    for i in ok.nonzero().squeeze(1).tolist():
        tm = rl.ThreatModel("l2", 0.9 * float(cert.radius[i]))
        res = rl.attacks.PGD(tm, steps=10, seed=i).attack(sm, x[i : i + 1], cert.prediction[i : i + 1])
        pred = sm.predict(res.x_adv, n=2000, alpha=0.001, seed=100 + i)
        changed += int(pred.item() not in (-1, int(cert.prediction[i])))
    assert changed <= 1  # allowed: the alpha rate plus PREDICT's own error, on a handful of samples


def test_sampling_is_seeded_and_batch_size_independent(noisy_digits_model, digits_test):
    x = digits_test.images[:5]
    sm = Smoothed(noisy_digits_model, 0.5)
    a = sm.sample_counts(x, 300, torch.Generator().manual_seed(0), batch_size=64)
    b = sm.sample_counts(x, 300, torch.Generator().manual_seed(0), batch_size=64)
    assert torch.equal(a, b) and a.sum(1).tolist() == [300] * 5
    c = sm.sample_counts(x, 300, torch.Generator().manual_seed(0), batch_size=1500)
    assert (a.argmax(1) == c.argmax(1)).float().mean() >= 0.8


def test_predict_abstains_on_a_coin_flip():
    model = TwoClassLinear(torch.ones(4), 0.0)
    x = torch.zeros(3, 1, 2, 2)  # exactly on the boundary: counts ~ 50/50
    pred = Smoothed(model, 1.0).predict(x, n=400, alpha=0.001)
    assert (pred == -1).all()


def test_certified_accuracy_curve():
    cert = Certificate(torch.tensor([0, 1, -1, 2]), torch.tensor([0.6, 0.2, 0.0, 1.0]),
                       torch.tensor([False, False, True, False]))
    labels = torch.tensor([0, 1, 1, 0])
    assert certified_accuracy(cert, labels, [0.0, 0.5, 1.0]).tolist() == [0.5, 0.25, 0.0]


def test_bad_arguments(noisy_digits_model, digits_test):
    x = digits_test.images[:2]
    with pytest.raises(ValueError, match="sigma must be > 0"):
        Smoothed(noisy_digits_model, 0.0)
    sm = Smoothed(noisy_digits_model, 0.25)
    with pytest.raises(ValueError, match="alpha must be a probability"):
        sm.certify(x, 10, 100, alpha=1.5)
    with pytest.raises(ValueError, match="n0 must be > 0"):
        sm.certify(x, 0, 100)
    with pytest.raises(ValueError, match="use n >= 10"):
        sm.certify(x, 10, 9, alpha=0.001)
    assert min_samples_to_certify(0.001) == 10
