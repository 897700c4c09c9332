"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import robustlab as rl
from robustlab.evaluate import metrics


def test_wilson_and_clopper_pearson_by_hand():
    r = metrics.rate_counts(7, 10)
    z = stats.norm.ppf(0.975)
    p, n = 0.7, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert r.value == 0.7 and r.k == 7 and r.n == 10
    assert r.ci_low == pytest.approx(centre - half) and r.ci_high == pytest.approx(centre + half)
    cp = metrics.rate_counts(0, 10, method="clopper-pearson")
    assert cp.ci_low == 0.0 and cp.ci_high == pytest.approx(1 - 0.025 ** (1 / 10))
    assert metrics.rate_counts(0, 0).ci_high == 1.0
    with pytest.raises(ValueError, match="method"):
        metrics.rate_counts(1, 2, method="normal")
    with pytest.raises(TypeError, match="bool"):
        metrics.rate(torch.tensor([1, 0]))


def test_robust_accuracy_worst_case_and_eps_curve_by_hand():
    labels = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([0, 1, 2, 0])  # the last image is misclassified
    correct = pred == labels
    assert metrics.clean_accuracy(labels, pred).value == 0.75
    s1 = torch.tensor([True, False, False, True])
    d1 = torch.tensor([0.05, 0.3, 0.3, 0.0])
    s2 = torch.tensor([False, True, False, True])
    d2 = torch.tensor([0.3, 0.2, 0.3, 0.0])
    assert metrics.robust_accuracy(correct, s1).value == 0.5  # images 1, 2
    assert metrics.success_rate(correct, s2).value == pytest.approx(1 / 3)  # 1 of 3 correct images
    found = [metrics.found_distance(correct, s1, d1), metrics.found_distance(correct, s2, d2)]
    assert found[0].tolist()[:3] == [pytest.approx(0.05), math.inf, math.inf]
    md = metrics.min_distance(correct, found)
    assert md.tolist() == [pytest.approx(0.05), pytest.approx(0.2), math.inf, 0.0]
    curve = metrics.eps_curve(correct, md, [0.01, 0.1, 0.25])
    assert [r.value for r in curve] == [0.75, 0.5, 0.25]
    # distances a hair above eps from float rounding still count as within eps
    assert bool(metrics.within(torch.tensor([0.1 + 1e-7]), 0.1))


def test_summary_histogram_and_norms():
    s = metrics.summary(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, math.inf]))
    assert (s.count, s.mean, s.min, s.median, s.max) == (5, 3.0, 1.0, 3.0, 5.0)
    assert metrics.summary(torch.tensor([math.inf])).count == 0
    edges, counts = metrics.histogram(torch.tensor([0.1, 0.2, 0.9, math.inf]), bins=2, upper=1.0)
    assert edges == [0.0, 0.5, 1.0] and counts == [2, 1]
    x = torch.zeros(2, 3, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 0.1
    x_adv[0, 2, 0, 0] = -0.3  # same pixel, another channel: one changed pixel
    x_adv[1, 1, 1, 1] = 0.4
    x_adv[1, 1, 0, 1] = 0.3
    n = metrics.perturbation_norms(x_adv, x)
    assert n["linf"].tolist() == pytest.approx([0.3, 0.4])
    assert n["l2"].tolist() == pytest.approx([math.sqrt(0.1), 0.5])
    assert n["l0"].tolist() == [1.0, 2.0]


def test_certified_curve_and_norm_conversion():
    labels = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([0, 1, 0, -1])
    radius = torch.tensor([0.5, 0.2, 0.9, 0.0])
    abstain = torch.tensor([False, False, False, True])
    curve = metrics.certified_curve(labels, pred, radius, abstain, [0.0, 0.3, 1.0])
    assert [r.value for r in curve] == [0.5, 0.25, 0.0]
    assert metrics.norm_factor("l2", "linf", 64) == pytest.approx(8.0)  # ||d||_2 <= sqrt(D) ||d||_inf
    assert metrics.norm_factor("l1", "l2", 64) == pytest.approx(8.0)
    assert metrics.norm_factor("l1", "linf", 64) == pytest.approx(64.0)
    assert metrics.norm_factor("linf", "l2", 64) == 1.0 and metrics.norm_factor("l2", "l2", 64) == 1.0
    assert metrics.norm_factor("l0", "l2", 64) is None
    grid = metrics.radius_grid(2.0, points=5)
    assert grid == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_robustness_interval_summary():
    correct = torch.tensor([True, True, True, False])
    lower = torch.tensor([0.1, 0.0, 0.2, 0.0], dtype=torch.float64)
    upper = torch.tensor([0.3, 0.2, math.inf, 0.0], dtype=torch.float64)
    s = metrics.robustness_intervals(correct, lower, upper)
    assert s["n"] == 3 and s["upper_found"] == pytest.approx(2 / 3) and s["lower_positive"] == pytest.approx(2 / 3)
    assert s["median_gap"] == pytest.approx(0.2)


def test_transfer_matrix_diagonal_is_white_box(digits_model, saturated, digits_test):
    x, y = digits_test.images[:40], digits_test.labels[:40]
    tm = rl.ThreatModel("linf", 0.2)
    make = lambda: rl.attacks.PGD(tm, steps=10, seed=0)  # noqa: E731
    mat = metrics.transfer_matrix({"honest": digits_model, "masked": saturated}, x, y, make, batch_size=16)
    assert (mat.norm, mat.eps, mat.attack) == ("linf", 0.2, "PGD")
    direct = make().attack(digits_model, x[:16], y[:16]).robust.sum() + make().attack(digits_model, x[16:32], y[16:32]).robust.sum() \
        + make().attack(digits_model, x[32:], y[32:]).robust.sum()
    assert mat.sources == mat.targets == ["honest", "masked"]
    assert mat.robust[0][0].k == int(direct)  # the diagonal is the white-box attack, batch by batch
    # Zero gradients protect the masked model against its own white-box attack, not against transfer.
    assert mat.robust[1][1].value > mat.robust[1][0].value + 0.3
