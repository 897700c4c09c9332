"""Projection geometry: points end inside ball ∩ box, points inside are unchanged, and the l1
projection is the exact Euclidean projection (checked against an independent bisection)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustlab import ThreatModel
from robustlab.threat import project_l1_box

NORMS = ["linf", "l2", "l1", "l0"]


def _eps(norm: str, scale: float) -> float:
    return {"linf": 0.3 * scale, "l2": 2.0 * scale, "l1": 6.0 * scale, "l0": float(max(1, round(10 * scale)))}[norm]


@settings(max_examples=60, deadline=None)
@given(
    norm=st.sampled_from(NORMS),
    scale=st.floats(0.05, 1.5),
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from([(3, 1, 8, 8), (2, 3, 5, 7), (4, 10)]),
    spread=st.floats(0.01, 5.0),
)
def test_projection_lands_in_ball_and_box(norm, scale, seed, shape, spread):
    g = torch.Generator().manual_seed(seed)
    tm = ThreatModel(norm, min(_eps(norm, scale), 1.0) if norm == "linf" else _eps(norm, scale))
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    z = x + spread * torch.randn(shape, generator=g, dtype=torch.float64)
    p = tm.project(z, x)
    assert bool(tm.contains(p, x, atol=1e-9).all())
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    # Idempotent: a projected point is inside, so projecting it again changes nothing.
    assert torch.allclose(tm.project(p, x), p, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(norm=st.sampled_from(NORMS), seed=st.integers(0, 2**31 - 1), frac=st.floats(0.0, 0.99))
def test_points_inside_are_unchanged(norm, seed, frac):
    g = torch.Generator().manual_seed(seed)
    tm = ThreatModel(norm, _eps(norm, 1.0))
    x = torch.rand(4, 1, 6, 6, generator=g, dtype=torch.float64)
    start = tm.random_start(x, g)
    inside = x + frac * (start - x) if norm != "l0" else start
    assert bool(tm.contains(inside, x, atol=1e-9).all())
    assert torch.allclose(tm.project(inside, x), inside, atol=1e-12)


def _l1_box_reference(z, eps, lo, hi):
    """Independent solution by bisection on the KKT multiplier (float64, 200 halvings)."""
    a = z.abs()
    u = torch.where(z >= 0, hi, -lo).clamp_min(0)
    out = []
    for i in range(z.shape[0]):
        f = lambda lam: torch.minimum((a[i] - lam).clamp_min(0), u[i]).sum()
        if f(0.0) <= eps[i]:
            lam = 0.0
        else:
            lo_l, hi_l = 0.0, float(a[i].max())
            for _ in range(200):
                mid = 0.5 * (lo_l + hi_l)
                lo_l, hi_l = (mid, hi_l) if f(mid) > eps[i] else (lo_l, mid)
            lam = hi_l
        out.append(torch.sign(z[i]) * torch.minimum((a[i] - lam).clamp_min(0), u[i]))
    return torch.stack(out)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 40), eps=st.floats(0.0, 10.0))
def test_l1_box_projection_is_exact(seed, d, eps):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, d, generator=g, dtype=torch.float64)
    z = 2 * torch.randn(3, d, generator=g, dtype=torch.float64)
    e = torch.full((3,), eps, dtype=torch.float64)
    got = project_l1_box(z, e, -x, 1 - x)
    ref = _l1_box_reference(z, e, -x, 1 - x)
    assert torch.allclose(got, ref, atol=1e-7)


def test_projection_onto_boundary_and_optimality():
    """Outside points land on the sphere; linf/l2 projections match their closed forms."""
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    z = x + torch.linspace(-0.4, 0.4, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    p = ThreatModel("linf", 0.1).project(z, x)
    assert torch.allclose(p, x + (z - x).clamp(-0.1, 0.1))
    d = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    d[0, 0, 0, 0], d[0, 0, 1, 1] = 0.3, -0.4  # norm 0.5, inside the box
    p2 = ThreatModel("l2", 0.25).project(x + d, x)
    assert math.isclose(float((p2 - x).norm()), 0.25, rel_tol=1e-9)
    assert torch.allclose(p2 - x, d * 0.5)


def test_l0_counts_pixels_across_channels():
    x = torch.zeros(1, 3, 2, 2)
    z = x.clone()
    z[0, :, 0, 0] = 0.6  # one pixel, three channels: squared change 1.08
    z[0, 0, 1, 1] = 0.9  # squared change 0.81
    tm = ThreatModel("l0", 1)
    assert tm.distance(z, x).tolist() == [2.0]
    p = tm.project(z, x)
    assert tm.distance(p, x).tolist() == [1.0]
    assert float(p[0, :, 0, 0].abs().sum()) > 0  # kept the pixel with the larger change


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_is_seeded_and_inside(norm):
    tm = ThreatModel(norm, _eps(norm, 1.0))
    x = torch.rand(5, 1, 8, 8)
    a = tm.random_start(x, torch.Generator().manual_seed(3))
    b = tm.random_start(x, torch.Generator().manual_seed(3))
    c = tm.random_start(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(tm.contains(a, x).all())


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_ascent_is_a_unit_steepest_direction(norm):
    g = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    v = ThreatModel(norm, 0.1).ascent(g)
    flat = v.reshape(4, -1)
    dual = {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1), "l1": flat.abs().sum(1)}[norm]
    assert torch.allclose(dual, torch.ones(4), atol=1e-6)
    assert bool(((g * v).reshape(4, -1).sum(1) > 0).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"norm": "l3", "eps": 0.1}, "norm must be one of"),
        ({"norm": "linf", "eps": -0.1}, "eps must be >= 0"),
        ({"norm": "linf", "eps": float("nan")}, "eps must be a finite"),
        ({"norm": "linf", "eps": 1.5}, "larger than the input range"),
        ({"norm": "l0", "eps": 2.5}, "must be an integer"),
        ({"norm": "l2", "eps": 1.0, "lower": 1.0, "upper": 0.0}, "lower must be < upper"),
    ],
)
def test_bad_threat_models_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThreatModel(**kwargs)


def test_l0_projection_keeps_the_pixel_that_gains_most():
    """x = [0, 0.1], step [1, 5], one pixel: clipping gives changes 1 and 0.9, but keeping pixel 2
    moves the point from distance 5 to 4.1 from its target, a gain of 8.19 against 1 for pixel 1."""
    x = torch.tensor([[0.0, 0.1]], dtype=torch.float64)
    z = x + torch.tensor([[1.0, 5.0]], dtype=torch.float64)
    p = ThreatModel("l0", 1).project(z, x)
    assert torch.allclose(p, torch.tensor([[0.0, 1.0]], dtype=torch.float64))


def _l0_box_cost(p, z):
    return float((p - z).square().sum())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), channels=st.integers(1, 2), pixels=st.integers(1, 5),
       k=st.integers(0, 5), spread=st.floats(0.1, 4.0))
def test_l0_projection_matches_brute_force(seed, channels, pixels, k, spread):
    """The projection's distance to its target equals the minimum over every set of <= k pixels."""
    import itertools

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, channels, 1, pixels, generator=g, dtype=torch.float64)
    z = x + spread * torch.randn(1, channels, 1, pixels, generator=g, dtype=torch.float64)
    tm = ThreatModel("l0", k)
    p = tm.project(z, x)
    assert bool(tm.contains(p, x, atol=1e-12).all())
    best = math.inf
    clipped = z.clamp(0, 1)
    for size in range(min(k, pixels) + 1):
        for subset in itertools.combinations(range(pixels), size):
            cand = x.clone()
            cand[..., list(subset)] = clipped[..., list(subset)]
            best = min(best, _l0_box_cost(cand, z))
    assert _l0_box_cost(p, z) <= best + 1e-12


def _l2_box_reference(z, eps, lo, hi):
    """Independent solution with scipy's SLSQP on ``min ||d - z||^2, ||d||^2 <= eps^2, lo <= d <= hi``."""
    import numpy as np
    from scipy.optimize import minimize

    zz, l, h = z.numpy(), lo.numpy(), hi.numpy()
    res = minimize(lambda d: float(((d - zz) ** 2).sum()), np.clip(zz, l, h) * 0, jac=lambda d: 2 * (d - zz),
                   bounds=list(zip(l, h)), method="SLSQP", options={"ftol": 1e-14, "maxiter": 500},
                   constraints=[{"type": "ineq", "fun": lambda d: eps**2 - float((d**2).sum()), "jac": lambda d: -2 * d}])
    return torch.from_numpy(res.x)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 8), eps=st.floats(0.01, 3.0), spread=st.floats(0.1, 4.0))
def test_exact_l2_box_projection_matches_a_convex_solver(seed, d, eps, spread):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, d, generator=g, dtype=torch.float64)
    z = x + spread * torch.randn(1, d, generator=g, dtype=torch.float64)
    tm = ThreatModel("l2", eps, exact=True)
    p = tm.project(z, x)
    assert bool(tm.contains(p, x, atol=1e-9).all())
    ref = x[0] + _l2_box_reference((z - x)[0], eps, -x[0], 1 - x[0])
    # The solver's optimum can be no better than the exact projection, and they coincide.
    assert float((p[0] - z[0]).norm()) <= float((ref - z[0]).norm()) + 1e-7
    assert torch.allclose(p[0], ref, atol=1e-5)


def test_exact_l2_projection_beats_rescale_then_clip():
    """Rescale-then-clip lands inside ball ∩ box but farther from the target than the exact projection."""
    x = torch.tensor([[0.9, 0.5]], dtype=torch.float64)
    z = x + torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    approx = ThreatModel("l2", 0.5).project(z, x)
    exact = ThreatModel("l2", 0.5, exact=True).project(z, x)
    assert bool(ThreatModel("l2", 0.5).contains(exact, x, atol=1e-9).all())
    assert float((exact - z).norm()) < float((approx - z).norm()) - 1e-3
    # Closed form here: the first coordinate saturates at 1 (0.1 of change), the rest of the
    # radius goes to the second: sqrt(0.25 - 0.01).
    assert torch.allclose(exact, torch.tensor([[1.0, 0.5 + math.sqrt(0.24)]], dtype=torch.float64), atol=1e-9)
    assert ThreatModel("l2", 0.5, exact=True).with_eps(0.3).exact


@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_empty_batches_pass_through_every_operation(norm):
    # A worst case over attacks projects the candidates of the samples still robust, which may be none
    # (an l1 `standard` run crashed reshaping 0 elements).
    tm = ThreatModel(norm, 2.0 if norm != "linf" else 0.1)
    x = torch.rand(0, 1, 8, 8)
    assert tm.project(x.clone(), x).shape == (0, 1, 8, 8)
    assert tm.distance(x, x).shape == (0,)
    assert tm.contains(x, x).shape == (0,)
