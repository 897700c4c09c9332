"""Branch and bound (beta-CROWN): agrees with the MILP and with enumeration of activation patterns,
its unsat survives dense sampling and PGD, its counterexamples are real, general properties."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn
from verify_nets import KINDS, tiny_inputs, tiny_net

import robustlab as rl
from robustlab.verify import certify, trace, verify_milp
from robustlab.verify.bab import BaBResult, _Domains, _leaf, verify_property
from robustlab.verify.beta import BetaCrown, ascend, outward
from robustlab.verify.bounds import InputSet
from robustlab.verify.falsify import pgd
from robustlab.verify.spec import Property, robustness_property

_MILP = {"verified": "unsat", "counterexample": "sat"}


def _check_answer(net, prop: Property, res: BaBResult, seed: int = 0) -> None:
    """A sat answer is a real counterexample; an unsat one survives dense sampling and PGD."""
    assert res.status in ("unsat", "sat", "timeout", "unknown")
    if res.status == "sat":
        x = res.counterexample
        assert bool(prop.contains(x.unsqueeze(0).double())[0])
        with torch.no_grad():
            y = net.forward(x.unsqueeze(0))
        assert torch.equal(y[0], res.output) and bool(prop.unsafe(y)[0])
    if res.status == "unsat":
        g = torch.Generator().manual_seed(seed)
        lo, hi = prop.lower.double(), prop.upper.double()
        u = torch.rand(4000, *lo.shape, generator=g, dtype=torch.float64)
        corners = (torch.rand(4000, *lo.shape, generator=g) < 0.5).double()
        pts = torch.cat([lo + (hi - lo) * u, lo + (hi - lo) * corners]).to(prop.lower.dtype)
        with torch.no_grad():
            assert not bool(prop.unsafe(net.forward(pts)).any())
        assert pgd(net.forward, prop, restarts=16, steps=50, generator=g) is None


def _milp_cases(kind: str, seed: int, eps: float):
    model = tiny_net(kind, seed)
    x = tiny_inputs(3, seed)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", eps)
    milp = verify_milp(model, x, y, tm, time_limit=30)
    inputs = InputSet.build(x, tm)
    net = trace(model, x)
    for i in range(3):
        yield net, robustness_property(inputs.lo[i], inputs.hi[i], int(y[i]), 4), milp.status[i]


def _agree_with_milp(kind: str, seeds: range, eps: float) -> set:
    answers = set()
    for seed in seeds:
        for net, prop, milp in _milp_cases(kind, seed, eps):
            res = verify_property(net, prop, timeout=60, seed=0)
            assert res.status in ("unsat", "sat"), (kind, seed, res.status)
            if milp in _MILP:  # where the MILP decided, the answers agree
                assert res.status == _MILP[milp], (kind, seed, eps, res.status, milp)
            _check_answer(net, prop, res)
            answers.add((res.status, res.stage))
    return answers


@pytest.mark.parametrize("kind", KINDS)
def test_bab_equals_milp_on_tiny_networks(kind: str) -> None:
    _agree_with_milp(kind, range(2), 0.08)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eps", [0.05, 0.15])
def test_bab_equals_milp_on_more_tiny_networks(kind: str, eps: float) -> None:
    _agree_with_milp(kind, range(2, 8), eps)


def _enumerable_net(seed: int, width: int = 5) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net.double().eval()


def _feasible(rows: np.ndarray, rhs: np.ndarray, bounds: list) -> bool:
    return linprog(np.zeros(rows.shape[1]), A_ub=rows, b_ub=rhs, bounds=bounds, method="highs").status == 0


def _affine_pieces(model: nn.Sequential, lo: np.ndarray, hi: np.ndarray):
    """The activation patterns with a point in the box: (region rows A_ub, b_ub; W, c) with f(x) = W x + c
    there. Patterns are enumerated layer by layer, pruned by an LP feasibility check."""
    w1, b1 = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    w2, b2 = model[2].weight.detach().numpy(), model[2].bias.detach().numpy()
    w3, b3 = model[4].weight.detach().numpy(), model[4].bias.detach().numpy()
    bounds = list(zip(lo, hi))
    for p1 in itertools.product([0, 1], repeat=w1.shape[0]):
        s1 = np.where(np.array(p1) == 1, -1.0, 1.0)[:, None]  # active: z >= 0 -> -z <= 0
        rows1, rhs1 = s1 * w1, -s1[:, 0] * b1
        if not _feasible(rows1, rhs1, bounds):
            continue
        d1 = np.diag(p1)
        a2, c2 = w2 @ d1 @ w1, w2 @ d1 @ b1 + b2
        for p2 in itertools.product([0, 1], repeat=w2.shape[0]):
            s2 = np.where(np.array(p2) == 1, -1.0, 1.0)[:, None]
            rows, rhs = np.vstack([rows1, s2 * a2]), np.concatenate([rhs1, -s2[:, 0] * c2])
            if _feasible(rows, rhs, bounds):
                d2 = np.diag(p2)
                yield rows, rhs, w3 @ d2 @ a2, w3 @ d2 @ c2 + b3


def _exact_answer(model: nn.Sequential, prop: Property, margin: float = 1e-6) -> str:
    """'sat' if some piece has a point of the box with C y <= d - margin, 'unsat' if none has one with
    C y <= d + margin, else 'tie' (too close to decide)."""
    lo, hi = prop.lower.numpy(), prop.upper.numpy()
    bounds = list(zip(lo, hi))
    answers = set()
    pieces = list(_affine_pieces(model, lo, hi))
    for slack in (-margin, margin):
        feasible = False
        for rows, rhs, w, c in pieces:
            for cm, dm in prop.groups:
                cm, dm = cm.numpy(), dm.numpy()
                feasible |= _feasible(np.vstack([rows, cm @ w]), np.concatenate([rhs, dm - cm @ c + slack]), bounds)
        answers.add(feasible)
    return "sat" if answers == {True} else "unsat" if answers == {False} else "tie"


def _exact_minimum(model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor, row: np.ndarray) -> float:
    """``min_{x in box} row . f(x)`` over all pieces (one LP each)."""
    bounds = list(zip(lo.numpy(), hi.numpy()))
    best = np.inf
    for rows, rhs, w, c in _affine_pieces(model, lo.numpy(), hi.numpy()):
        res = linprog(row @ w, A_ub=rows, b_ub=rhs, bounds=bounds, method="highs")
        best = min(best, res.fun + row @ c)
    return float(best)


def _general_property(seed: int, center: torch.Tensor, width: float) -> Property:
    """A random disjunction of conjunctions with offsets, the VNNLIB form."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for _ in range(1 + seed % 3):
        m = 1 + int(torch.randint(0, 3, (1,), generator=g))
        groups.append((torch.randn(m, 3, generator=g, dtype=torch.float64),
                       torch.randn(m, generator=g, dtype=torch.float64)))
    lo = (center - width).clamp(-1, 1)
    return Property(lo, torch.maximum(lo, (center + width).clamp(-1, 1)), tuple(groups), name=f"random {seed}")


@pytest.mark.parametrize("split", ["relu", "input"])
@pytest.mark.parametrize("seed", range(8))
def test_bab_equals_enumeration_on_general_properties(seed: int, split: str) -> None:
    model = _enumerable_net(seed)
    net = trace(model, torch.zeros(1, 2, dtype=torch.float64))
    center = torch.rand(2, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64) - 0.5
    for width in (0.05, 0.3, 1.0):
        prop = _general_property(seed, center, width)
        exact = _exact_answer(model, prop)
        res = verify_property(net, prop, timeout=60, seed=seed, split=split)
        assert res.info.get("split", "relu") == split
        if exact != "tie":
            assert res.status == exact, (seed, width, res.status, exact, res.stage)
        _check_answer(net, prop, res, seed)


def test_bab_reaches_exact_leaves() -> None:
    """Properties whose exact optimum lies just beyond (unsat) or just inside (sat) the unsafe region,
    on a wide box where every ReLU is unstable: without attacks, branch and bound must split down to
    its linear-program leaves (or close every domain) and answer exactly."""
    model = _enumerable_net(5, width=8)  # alpha-CROWN's root bound -2.11, the exact minimum -1.75
    net = trace(model, torch.zeros(1, 2, dtype=torch.float64))
    lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    row = np.array([1.0, -1.0, 0.0])
    best = _exact_minimum(model, lo, hi, row)
    for delta, expected in ((1e-3, "unsat"), (-1e-3, "sat")):
        groups = ((torch.from_numpy(row).reshape(1, 3), torch.tensor([best - delta])),)
        prop = Property(lo, hi, groups)
        res = verify_property(net, prop, timeout=60, attack_restarts=0, attack_steps=0, split="relu")
        assert res.status == expected and res.stage == "bab", (res.status, res.stage)
        _check_answer(net, prop, res)
        # Plain CROWN bounds with the splits' exact relaxations (no slopes, no multipliers) close few
        # domains: the unsat answer comes from the leaves.
        res = verify_property(net, prop, timeout=60, attack_restarts=0, attack_steps=0, steps=0, root_steps=0,
                              intermediate_steps=0, split="relu")
        assert res.status == expected, (res.status, res.info)
        assert res.info["leaves"] > 0 or expected == "sat"
        _check_answer(net, prop, res)



def test_input_split_decides_next_to_the_exact_optimum() -> None:
    """The same knife-edge properties by input splitting, without attacks: the boxes must shrink until
    CROWN's bound clears the region by less than 1e-3 (unsat), or a box's bound minimiser lands in it
    (sat); the search records what it did."""
    model = _enumerable_net(5, width=8)
    net = trace(model, torch.zeros(1, 2, dtype=torch.float64))
    lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    row = np.array([1.0, -1.0, 0.0])
    best = _exact_minimum(model, lo, hi, row)
    for delta, expected in ((1e-3, "unsat"), (-1e-3, "sat")):
        prop = Property(lo, hi, ((torch.from_numpy(row).reshape(1, 3), torch.tensor([best - delta])),))
        res = verify_property(net, prop, timeout=60, attack_restarts=0, attack_steps=0)  # 2 inputs: "auto" splits them
        assert (res.status, res.stage, res.info["split"]) == (expected, "bab", "input"), (res.status, res.info)
        assert res.info["rounds"] >= 1 and (res.domains > 1 or expected == "sat")
        _check_answer(net, prop, res)


def test_leaf_answers_on_image_shaped_inputs() -> None:
    """A leaf (every unstable ReLU decided) is a linear program over the flattened input; its solution
    goes back to the property's own shape (1, 4, 4) before the forward pass checks it. The leaf of a
    known counterexample's activation pattern must answer sat with a point of the box."""
    model = tiny_net("mlp", 0)
    x = tiny_inputs(1, 0)
    y = int(model(x).argmax(1))
    inputs = InputSet.build(x, rl.ThreatModel("linf", 0.3))
    prop = robustness_property(inputs.lo[0], inputs.hi[0], y, 4)
    net = trace(model, x)
    hit = pgd(net.forward, prop, restarts=32, steps=100, generator=torch.Generator().manual_seed(0))
    assert hit is not None
    c, d, _ = (torch.cat([g[0] for g in prop.groups]), torch.cat([g[1] for g in prop.groups]), None)
    engine = BetaCrown(net, prop.lower, prop.upper, c, d)
    engine.init_bounds()
    zs, _ = _preactivations(engine, hit[0][None])
    split = [torch.where(z >= 0, 1, -1).to(torch.int8) for z in zs]
    lower = [layer.lower[None].float() for layer in engine.relus]
    upper = [layer.upper[None].float() for layer in engine.relus]
    s = c.shape[0]
    dom = _Domains(split, lower, upper, [torch.zeros(s, 1, layer.m) for layer in engine.relus],
                   [torch.zeros(s, 1, layer.m) for layer in engine.relus], torch.zeros(1, s),
                   torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.int8))
    point = lambda v: torch.minimum(torch.maximum(v.float(), prop.lower.float()), prop.upper.float())  # noqa: E731
    verdict, found = _leaf(engine, prop, dom, 1e-5, net.forward, point)
    assert verdict == "sat" and found.shape == prop.lower.shape
    assert bool(prop.contains(found[None].double())[0])
    with torch.no_grad():
        assert bool(prop.unsafe(net.forward(found[None]))[0])

def _engine(kind: str, seed: int, eps: float) -> tuple:
    model = tiny_net(kind, seed)
    x = tiny_inputs(1, seed)
    y = int(model(x).argmax(1))
    inputs = InputSet.build(x, rl.ThreatModel("linf", eps))
    prop = robustness_property(inputs.lo[0], inputs.hi[0], y, 4)
    c = torch.cat([g[0] for g in prop.groups])
    engine = BetaCrown(trace(model, x), prop.lower, prop.upper, c, torch.zeros(c.shape[0], dtype=torch.float64))
    engine.init_bounds()
    engine.tighten_intermediate(10, 0.1)
    g = torch.Generator().manual_seed(seed)
    pts = prop.lower + (prop.upper - prop.lower) * torch.rand(20000, *prop.lower.shape, generator=g)
    return model, engine, prop, pts


def _preactivations(engine: BetaCrown, pts: torch.Tensor) -> tuple[list, torch.Tensor]:
    """Each ReLU layer's unstable pre-activations (P, m) and the spec rows (P, S) at the points, on the
    engine's own (dense, compressed) network in float64."""
    h = pts.double().reshape(pts.shape[0], -1)
    by_op = {layer.op: layer for layer in engine.relus}
    zs = []
    for i, op in enumerate(engine.nets[torch.float64].ops):
        if i in by_op:
            zs.append(h.reshape(h.shape[0], -1)[:, by_op[i].unstable])
        h = op.forward(h)
    return zs, h @ engine.c.t() - engine.d


@pytest.mark.parametrize("kind", ["mlp", "conv", "maxpool", "residual"])
def test_engine_network_equals_the_model_on_the_box(kind: str) -> None:
    """The dense chain with the box's dead ReLUs removed computes the model's function on the box."""
    model, engine, prop, pts = _engine(kind, 1, 0.1)
    with torch.no_grad():
        y = model(pts.reshape(-1, 1, 4, 4)).double()
        h = pts.double().reshape(pts.shape[0], -1)
        for op in engine.nets[torch.float64].ops:
            h = op.forward(h)
    torch.testing.assert_close(h, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "conv", "maxpool"])
def test_beta_crown_bounds_hold_on_every_split_domain(kind: str) -> None:
    """Random splits of unstable ReLUs, random slopes and multipliers: the bound (and the refreshed
    intermediate bounds) hold at every sampled point of the box that satisfies the splits."""
    model, engine, prop, pts = _engine(kind, 2, 0.15)
    zs, rows = _preactivations(engine, pts)
    g = torch.Generator().manual_seed(0)
    n = 24
    split = [(torch.randint(-1, 2, (n, layer.m), generator=g) * (torch.rand(n, layer.m, generator=g) < 0.15)).to(torch.int8)
             for layer in engine.relus]
    bounds = [outward(layer.lower.expand(n, -1), layer.upper.expand(n, -1)) for layer in engine.relus]
    lower = [torch.where(sp > 0, b[0].clamp(min=0), b[0]) for sp, b in zip(split, bounds)]
    upper = [torch.where(sp < 0, b[1].clamp(max=0), b[1]) for sp, b in zip(split, bounds)]
    lower, upper, empty = engine.refresh(lower, upper, split, torch.full((n,), -1))
    s = engine.c.shape[0]
    alpha = [torch.rand(s, n, layer.m, generator=g) for layer in engine.relus]
    beta = [torch.rand(s, n, layer.m, generator=g) * 0.5 for layer in engine.relus]
    lb, alpha, beta, _, _ = engine.bound(torch.arange(s), lower, upper, split, alpha, beta, steps=5, lr_alpha=0.1,
                                         lr_beta=0.1)
    checked = 0
    for i in range(n):
        inside = torch.ones(pts.shape[0], dtype=torch.bool)
        for z, sp in zip(zs, split):
            inside &= ((z * sp[i].double()) >= 0).all(1)
        if not bool(inside.any()):
            continue
        assert not bool(empty[i])  # a domain with a point is never declared empty
        checked += 1
        for z, lo, hi in zip(zs, lower, upper):
            assert bool((z[inside] >= lo[i].double() - 1e-9).all() and (z[inside] <= hi[i].double() + 1e-9).all())
        assert bool((rows[inside] >= lb[:, i] - 1e-9).all())
    assert checked >= 4


def test_sat_counterexample_is_in_the_box_and_violates() -> None:
    model = tiny_net("mlp", 5)
    x = tiny_inputs(1, 5)
    y = int(model(x).argmax(1))
    inputs = InputSet.build(x, rl.ThreatModel("linf", 0.4))
    net = trace(model, x)
    res = verify_property(net, robustness_property(inputs.lo[0], inputs.hi[0], y, 4), timeout=30)
    assert res.status == "sat" and res.stage == "attack"
    _check_answer(net, robustness_property(inputs.lo[0], inputs.hi[0], y, 4), res)


def test_same_seed_same_answer() -> None:
    model = tiny_net("conv", 2)
    x = tiny_inputs(3, 2)
    y = model(x).argmax(1)
    inputs = InputSet.build(x, rl.ThreatModel("linf", 0.05))
    net = trace(model, x)
    prop = robustness_property(inputs.lo[1], inputs.hi[1], int(y[1]), 4)
    a, b = verify_property(net, prop, timeout=30, seed=3), verify_property(net, prop, timeout=30, seed=3)
    assert (a.status, a.domains, a.stage) == (b.status, b.domains, b.stage)


def _sigmoid_net(seed: int, act: nn.Module) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), act, nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
    return net.eval()


@pytest.mark.parametrize("act", [nn.Sigmoid(), nn.Tanh()])
def test_sigmoid_tanh_networks_get_sound_answers(act: nn.Module) -> None:
    answers = set()
    for seed in range(4):
        model = _sigmoid_net(seed, act)
        x = tiny_inputs(2, seed)
        y = model(x).argmax(1)
        net = trace(model, x)
        inputs = InputSet.build(x, rl.ThreatModel("linf", 0.1))
        for i in range(2):
            prop = robustness_property(inputs.lo[i], inputs.hi[i], int(y[i]), 4)
            res = verify_property(net, prop, timeout=20)
            _check_answer(net, prop, res, seed)
            answers.add(res.status)
    assert "unsat" in answers



@pytest.mark.parametrize("act", [nn.Sigmoid(), nn.Tanh()], ids=["sigmoid", "tanh"])
def test_input_split_decides_smooth_networks_next_to_the_optimum(act: nn.Module) -> None:
    """Splitting ReLUs cannot tighten a sigmoid / tanh relaxation; halving the input box does. On a
    2-input network the minimum of a logit difference over [-1, 1]^2 is pinned down by a 1001 x 1001
    grid (its Lipschitz constant times the half spacing stays far below 0.05): 0.05 below it the
    property is unsat, just above it sat, and input splitting must say so."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 12), act, nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).double().eval()
    net = trace(model, torch.zeros(1, 2, dtype=torch.float64))
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 1001, dtype=torch.float64)] * 2, indexing="ij"), -1)
    row = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        values = model(grid.reshape(-1, 2)) @ row[0]
        step = torch.autograd.functional.jacobian(lambda v: model(v) @ row[0], grid.reshape(-1, 2)[::997])
    assert float(step.abs().sum(-1).max()) * 2 / 1000 < 0.01  # the grid is fine enough (sampled slopes)
    best = float(values.min())
    lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    for offset, expected in ((-0.05, "unsat"), (0.01, "sat")):
        prop = Property(lo, hi, ((row, torch.tensor([best + offset], dtype=torch.float64)),))
        res = verify_property(net, prop, timeout=60, attack_restarts=0, attack_steps=0)
        assert (res.status, res.info["split"]) == (expected, "input"), (offset, res.status, res.info)
        _check_answer(net, prop, res)

def test_certify_bab_matches_milp_and_reports_status() -> None:
    model = tiny_net("mlp", 3)
    x = tiny_inputs(5, 3)
    tm = rl.ThreatModel("linf", 0.08)
    bab = certify(model, x, None, tm, "bab", time_limit=30)
    milp = certify(model, x, None, tm, "milp", time_limit=30)
    assert len(bab.info["status"]) == 5 and bab.info["method"] == "bab"
    for sb, sm in zip(bab.info["status"], milp.info["status"]):
        if sm != "unknown":
            assert sb == sm
    assert torch.equal(~bab.abstain, torch.tensor([s == "verified" for s in bab.info["status"]]))
    assert bool((bab.radius[~bab.abstain] == 0.08).all())
    wrong = (model(x).argmax(1) + 1) % 4
    assert all(s == "counterexample" for s in certify(model, x, wrong, tm, "bab", time_limit=5).info["status"])


def test_bad_arguments_are_refused() -> None:
    model = tiny_net("mlp", 0)
    x = tiny_inputs(1, 0)
    net = trace(model, x)
    prop = robustness_property(x[0] - 0.1, x[0] + 0.1, 0, 4)
    with pytest.raises(ValueError, match="timeout"):
        verify_property(net, prop, timeout=0)
    with pytest.raises(ValueError, match="shape"):
        verify_property(net, robustness_property(torch.zeros(16), torch.ones(16), 0, 4), timeout=1)
    with pytest.raises(ValueError, match="outputs"):
        verify_property(net, robustness_property(x[0] - 0.1, x[0] + 0.1, 0, 5), timeout=1)
    with pytest.raises(ValueError, match="branching"):
        verify_property(net, prop, timeout=1, branching="random")
    with pytest.raises(ValueError, match="split"):
        verify_property(net, prop, timeout=1, split="neurons")
    with pytest.raises(TypeError, match="Network"):
        verify_property(model, prop, timeout=1)
    with pytest.raises(ValueError, match="linf"):
        certify(model, x, None, rl.ThreatModel("l2", 0.1), "bab")


def test_bab_certifier_is_registered() -> None:
    from robustlab.evaluate.suite import CERTIFIERS

    assert "bab" in CERTIFIERS and CERTIFIERS["bab"].defaults["time_limit"] > 0


def test_ascend_stops_at_the_deadline() -> None:
    """A deadline already past leaves the parameters where one step would (the first evaluation only);
    without one the ascent reaches the maximiser of -(p - 0.7)^2 on [0, 1]."""
    def value(params, idx):
        return -(params[0][..., 0] - 0.7) ** 2  # (S, N)

    start = [torch.zeros(2, 3, 1)]
    full, v_full = ascend(value, start, [0.1], [(0.0, 1.0)], 60)
    late, v_late = ascend(value, start, [0.1], [(0.0, 1.0)], 60, deadline=time.perf_counter() - 1.0)
    one, v_one = ascend(value, start, [0.1], [(0.0, 1.0)], 1)
    assert torch.equal(late[0], one[0]) and torch.equal(v_late, v_one)
    assert bool((v_full > v_late).all()) and float((full[0] - 0.7).abs().max()) < 0.05



def test_input_split_agrees_with_relu_split_on_iris() -> None:
    """Real data with few inputs: an MLP trained on scikit-learn's iris (4 features scaled to [0, 1]).
    For held-out flowers at radii where some are robust and some are not, splitting the input box and
    splitting ReLUs must give the same decided answer, each answer checked as everywhere here."""
    from sklearn.datasets import load_iris

    data = load_iris()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[order[:100]]), y[order[:100]]).backward()
        opt.step()
    model.eval()
    net = trace(model, x[:1])
    statuses = set()
    for i in order[100:110].tolist():
        for radius in (0.05, 0.15):
            prop = robustness_property((x[i] - radius).clamp(0, 1), (x[i] + radius).clamp(0, 1),
                                       int(y[i]), 3)
            # no attack first: the search itself must find the counterexamples
            by_input = verify_property(net, prop, timeout=30, split="input", attack_restarts=0, attack_steps=0)
            by_relu = verify_property(net, prop, timeout=30, split="relu")
            assert by_input.status in ("unsat", "sat") and by_input.status == by_relu.status, (i, radius)
            _check_answer(net, prop, by_input)
            statuses.add(by_input.status)
    assert statuses == {"unsat", "sat"}  # both answers occur
