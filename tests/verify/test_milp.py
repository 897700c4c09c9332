"""MILP: exact against enumeration of activation patterns, counterexamples flip, bound ordering."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn
from verify_nets import tiny_inputs, tiny_net

import robustlab as rl
from robustlab.verify import bounds, lp_margin_bounds, margin_optimum, verify_milp
from robustlab.verify.tolerance import TAU


def _enumerable_net(seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net.double().eval()


def _exact_by_enumeration(net: nn.Sequential, x: np.ndarray, eps: float, y: int, j: int) -> float:
    """min z_y - z_j over the box, as the minimum over all 2^7 activation patterns of an LP."""
    w1, b1 = net[1].weight.detach().numpy(), net[1].bias.detach().numpy()
    w2, b2 = net[3].weight.detach().numpy(), net[3].bias.detach().numpy()
    w3, b3 = net[5].weight.detach().numpy(), net[5].bias.detach().numpy()
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    best = np.inf
    for p1 in itertools.product([0, 1], repeat=4):
        d1 = np.diag(p1)
        for p2 in itertools.product([0, 1], repeat=3):
            d2 = np.diag(p2)
            # z1 = W1 x + b1; h1 = D1 z1; z2 = W2 h1 + b2; h2 = D2 z2; z3 = W3 h2 + b3: linear in x.
            a2, c2 = w2 @ d1 @ w1, w2 @ d1 @ b1 + b2
            a3, c3 = w3 @ d2 @ a2, w3 @ d2 @ c2 + b3
            obj, const = a3[y] - a3[j], c3[y] - c3[j]
            s1 = np.where(np.array(p1) == 1, -1.0, 1.0)[:, None]  # active: z >= 0 -> -z <= 0
            s2 = np.where(np.array(p2) == 1, -1.0, 1.0)[:, None]
            a_ub = np.vstack([s1 * w1, s2 * a2])
            b_ub = np.concatenate([-s1[:, 0] * b1, -s2[:, 0] * c2])
            res = linprog(obj, A_ub=a_ub, b_ub=b_ub, bounds=list(zip(lo, hi)), method="highs")
            if res.status == 0:
                best = min(best, res.fun + const)
    return float(best)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_optimum_equals_enumeration_of_activation_patterns(seed: int) -> None:
    net = _enumerable_net(seed)
    x = torch.rand(3, 1, 1, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = net(x).argmax(1)
    eps = 0.25
    opt = margin_optimum(net, x, y, rl.ThreatModel("linf", eps))
    for i in range(3):
        for j in range(3):
            if j == int(y[i]):
                continue
            exact = _exact_by_enumeration(net, x[i].flatten().numpy(), eps, int(y[i]), j)
            assert abs(float(opt[i, j]) - exact) < 1e-5
    res = verify_milp(net, x, y, rl.ThreatModel("linf", eps), time_limit=30)
    for i in range(3):
        worst = min(float(opt[i, j]) for j in range(3) if j != int(y[i]))
        expected = "verified" if worst > TAU + 1e-6 else "counterexample" if worst < -1e-4 else res.status[i]
        assert res.status[i] == expected
        if worst < TAU - 1e-6:  # verified means every margin above tau on the whole ball
            assert res.status[i] != "verified"


@pytest.mark.parametrize("kind", ["mlp", "maxpool"])
def test_every_counterexample_flips_the_prediction_inside_the_ball(kind: str) -> None:
    model = tiny_net(kind, 7)
    x = tiny_inputs(4, 7)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", 0.15)
    res = verify_milp(model, x, y, tm, time_limit=30)
    assert set(res.status) <= {"verified", "counterexample", "unknown"}
    cex = torch.tensor([s == "counterexample" for s in res.status])
    assert bool(tm.contains(res.x_adv, x).all())
    with torch.no_grad():
        pred = model(res.x_adv.float()).argmax(1)
    assert bool((pred[cex] != y[cex]).all())
    assert torch.equal(res.x_adv[~cex], x[~cex])
    # CROWN-verified samples are verified by the MILP, never refuted.
    assert all(s == "verified" for s, c in zip(res.status, res.crown.tolist()) if c)


def test_relaxations_lie_below_the_milp_optimum() -> None:
    model = tiny_net("mlp", 4)
    x = tiny_inputs(3, 4)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", 0.1)
    exact = margin_optimum(model, x, y, tm).float()
    triangle = lp_margin_bounds(model, x, y, tm).float()
    keep = torch.ones_like(exact, dtype=torch.bool)
    keep[torch.arange(3), y] = False
    for method in ("ibp", "crown", "alpha-crown", "lp"):
        lo, _ = bounds(model, x, tm, method, "margin", y)
        assert bool((lo[keep] <= exact[keep] + 1e-4).all()), method
    wk, _ = bounds(model, x, tm, "lp", "margin", y)
    # Wong & Kolter's dual network is one feasible dual point of the triangle LP.
    assert bool((wk[keep] <= triangle[keep] + 1e-4).all())
    assert bool((triangle[keep] <= exact[keep] + 1e-4).all())


def test_milp_refuses_l2_and_bad_time_limit() -> None:
    model = tiny_net("mlp", 0)
    x = tiny_inputs(1, 0)
    with pytest.raises(ValueError, match="linf"):
        verify_milp(model, x, model(x).argmax(1), rl.ThreatModel("l2", 0.1))
    with pytest.raises(ValueError, match="time_limit"):
        verify_milp(model, x, model(x).argmax(1), rl.ThreatModel("linf", 0.1), time_limit=0)


def _near_boundary_net(margin: float, *, offset: float, pair: bool) -> tuple[nn.Sequential, float]:
    """A 1-pixel ReLU network whose worst-case margin over x in [0.25, 0.75] is ``margin`` (up to
    the float32 rounding of its parameters), and that exact worst case in closed form.

    Hidden: ``h_a = relu(w x + offset)``, ``h_b = relu(-w x + offset)`` (both active on the box for
    ``offset >= 1``) and, with ``pair``, ``h_c = h_e = relu(x - 0.5)`` (unstable: the relaxations
    are loose, so only the MILP can decide). Logits ``z_0 = h_b - h_a + h_c - h_e``, ``z_1 = c``:
    ``z_0 - z_1 = -2 w x - c``, smallest at ``x = 0.75``: ``-1.5 w - c``, exact in float64 from the
    float32 ``w`` and ``c``. The ``offset`` makes float32 arithmetic round (``w + offset`` is not a
    float32 number), as large biases do in real networks."""
    w = torch.tensor(0.1, dtype=torch.float32)
    c = torch.tensor(-1.5 * float(w) - margin, dtype=torch.float32)
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[float(w)], [-float(w)], [1.0], [1.0]]))
        net[1].bias.copy_(torch.tensor([offset, offset, -0.5, -0.5]))
        p = 1.0 if pair else 0.0
        net[3].weight.copy_(torch.tensor([[-1.0, 1.0, p, -p], [0.0, 0.0, 0.0, 0.0]]))
        net[3].bias.copy_(torch.tensor([0.0, float(c)]))
    return net.eval(), -1.5 * float(w) - float(c)


_X_MID = torch.full((1, 1, 1, 1), 0.5)  # clean margin 0.05: class 0; the ball linf 0.25 is [0.25, 0.75]
_TM_MID = rl.ThreatModel("linf", 0.25)


@pytest.mark.parametrize("offset", [10.0, 100.0])
@pytest.mark.parametrize("pair", [False, True])
def test_a_margin_just_below_zero_is_never_verified(offset: float, pair: bool) -> None:
    from robustlab.verify import certify
    from robustlab.verify.bounds import METHODS, verified

    net, exact = _near_boundary_net(-1e-7, offset=offset, pair=pair)
    assert -2e-7 < exact < 0  # closed form: a point of the ball is (barely) misclassified
    y = torch.tensor([0])
    assert int(net(_X_MID).argmax(1)) == 0
    # Before tau and float64: float32 rounding gave every bound method lo = +2.8e-7 on the
    # offset-10 network without the pair, and the MILP "verified" on all four networks.
    res = verify_milp(net, _X_MID, y, _TM_MID, time_limit=30)
    assert res.status[0] != "verified" and not bool(res.crown[0])
    for tau in (0.0, 1e-4):  # even with tau = 0 the float64 MILP sees the exact, negative margin
        assert verify_milp(net, _X_MID, y, _TM_MID, time_limit=30, tau=tau).status[0] != "verified"
    for method in METHODS:
        lo, _ = bounds(net, _X_MID, _TM_MID, method, "margin", y)
        assert not bool(verified(lo, y).any()), method
        assert bool(certify(net, _X_MID, y, _TM_MID, method).abstain.all()), method
    assert bool(certify(net, _X_MID, y, _TM_MID, "milp", time_limit=30).abstain.all())


@pytest.mark.parametrize("offset", [10.0, 100.0])
def test_a_margin_just_above_tau_is_verified_by_the_milp(offset: float) -> None:
    from robustlab.verify import certify

    net, exact = _near_boundary_net(TAU + 2e-6, offset=offset, pair=True)
    assert TAU + 1.9e-6 < exact < TAU + 2.1e-6
    y = torch.tensor([0])
    opt = margin_optimum(net, _X_MID, y, _TM_MID)
    assert abs(float(opt[0, 1]) - exact) < 1e-8  # the float64 MILP finds the exact worst case
    res = verify_milp(net, _X_MID, y, _TM_MID, time_limit=30)
    assert res.status == ["verified"] and not bool(res.crown[0])  # decided by the MILP, not by CROWN
    assert float(res.min_margin[0]) == TAU and res.info["tau"] == TAU
    cert = certify(net, _X_MID, y, _TM_MID, "milp", time_limit=30)
    assert not bool(cert.abstain[0]) and cert.info["tau"] == TAU


def test_tau_is_an_option_and_a_margin_inside_it_is_unknown() -> None:
    net, exact = _near_boundary_net(5e-5, offset=10.0, pair=True)
    assert 4.9e-5 < exact < 5.1e-5
    y = torch.tensor([0])
    assert verify_milp(net, _X_MID, y, _TM_MID, time_limit=30).status == ["unknown"]  # in (0, TAU]
    assert verify_milp(net, _X_MID, y, _TM_MID, time_limit=30, tau=1e-5).status == ["verified"]
    for bad in (-1e-4, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="tau"):
            verify_milp(net, _X_MID, y, _TM_MID, tau=bad)
