"""Bounds: soundness on random and PGD points, ordering of the methods, closed forms, refusals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from verify_nets import ACTIVATION_KINDS, KINDS, tiny_inputs, tiny_net

import robustlab as rl
from robustlab.models.architectures import BasicBlock
from robustlab.verify import bounds, trace
from robustlab.verify.bounds import activation_relaxation, verified

METHODS = ("ibp", "crown", "alpha-crown", "lp", "crown-ibp")
TOL = 1e-5


def _samples_in_ball(x: torch.Tensor, tm: rl.ThreatModel, m: int, seed: int) -> torch.Tensor:
    """m random points of the ball ∩ box around each image (corners included for linf): (m, N, ...)."""
    g = torch.Generator().manual_seed(seed)
    pts = []
    for _ in range(m):
        start = tm.random_start(x, generator=g)
        if tm.norm == "linf":  # corners of the box are where bounds are tightest
            corner = x + tm.eps * torch.sign(torch.rand(x.shape, generator=g) - 0.5)
            start = torch.where(torch.rand(x.shape, generator=g) < 0.5, corner, start)
        pts.append(tm.project(start, x))
    return torch.stack(pts)


def _pgd_points(model: nn.Module, x: torch.Tensor, tm: rl.ThreatModel, seed: int) -> torch.Tensor:
    """PGD points pushing each logit up and down (2K points per image): (2K, N, ...)."""
    k = model(x[:1]).shape[1]
    out = []
    for j in range(k):
        for sign in (1.0, -1.0):
            target = torch.full((x.shape[0],), j, dtype=torch.long)
            res = rl.attacks.PGD(tm, steps=5, loss=lambda z, y, t, s=sign: s * z.gather(1, y[:, None]).squeeze(1),
                                 seed=seed, early_stop=False).attack(model, x, target)
            out.append(res.x_adv)
    return torch.stack(out)


def _check_sound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tm: rl.ThreatModel, pts: torch.Tensor,
                 method: str) -> None:
    with torch.no_grad():
        z = model(pts.reshape(-1, *x.shape[1:])).reshape(pts.shape[0], x.shape[0], -1)  # (M, N, K)
    lo, hi = bounds(model, x, tm, method, "logits")
    assert bool((z >= lo - TOL).all()) and bool((z <= hi + TOL).all()), method
    mlo, mhi = bounds(model, x, tm, method, "margin", y)
    margin = z.gather(2, y.reshape(1, -1, 1).expand(z.shape[0], -1, 1)) - z  # (M, N, K)
    assert bool((margin >= mlo - TOL).all()) and bool((margin <= mhi + TOL).all()), method


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000), norm=st.sampled_from(["linf", "l2"]),
       eps=st.floats(0.01, 0.3))
def test_bounds_contain_random_points(kind: str, seed: int, norm: str, eps: float) -> None:
    model = tiny_net(kind, seed)
    x = tiny_inputs(3, seed + 1)
    tm = rl.ThreatModel(norm, eps)
    y = model(x).argmax(1)
    pts = torch.cat([_samples_in_ball(x, tm, 32, seed), x.unsqueeze(0)])
    for method in METHODS:
        _check_sound(model, x, y, tm, pts, method)


@pytest.mark.parametrize(("kind", "seed"), [("mlp", 0), ("conv", 1), ("maxpool", 2), ("avgpool-bn", 3)])
def test_bounds_contain_pgd_points(kind: str, seed: int) -> None:
    model = tiny_net(kind, seed)
    x = tiny_inputs(2, seed)
    tm = rl.ThreatModel("linf", 0.1)
    y = model(x).argmax(1)
    pts = _pgd_points(model, x, tm, seed)
    for method in METHODS:
        _check_sound(model, x, y, tm, pts, method)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_lines_hold_on_their_whole_interval(kind: str, dtype: torch.dtype) -> None:
    """Tangent / chord lines (CROWN Table 1) lie below / above f on a dense grid of each interval:
    intervals on either side of 0, across it (both the chord and the tangent-through-an-end cases),
    narrow, wide and degenerate ones."""
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(4000, generator=g, dtype=torch.float64) * 4
    hi = lo + torch.rand(4000, generator=g, dtype=torch.float64) ** 3 * 12
    lo = torch.cat([lo, torch.tensor([-1e-3, 0.0, -8.0, 0.0, 2.0, -30.0, -0.5])])
    hi = torch.cat([hi, torch.tensor([1e-3, 0.0, 8.0, 1e-12, 2.0, 30.0, 40.0])])
    a_lo, b_lo, a_up, b_up = activation_relaxation(kind, lo.to(dtype), hi.to(dtype))
    assert a_lo.dtype == dtype
    t = torch.linspace(0, 1, 401, dtype=torch.float64).unsqueeze(1)
    x = lo.to(dtype).double() + (hi.to(dtype).double() - lo.to(dtype).double()) * t  # (401, M)
    f = torch.sigmoid(x) if kind == "sigmoid" else torch.tanh(x)
    assert bool((a_lo.double() * x + b_lo.double() <= f).all())
    assert bool((a_up.double() * x + b_up.double() >= f).all())
    # Not loose: the gap between the lines is at most curvature x width^2 (max |f''| is 0.1 for the
    # sigmoid, 0.77 for tanh); a box [f(l), f(u)] would give a gap of order the width.
    curvature = 0.1 if kind == "sigmoid" else 0.77
    gap = ((a_up.double() - a_lo.double()) * x + b_up.double() - b_lo.double()).amax(0)
    assert bool((gap <= curvature * (hi - lo) ** 2 + 1e-5).all())


@pytest.mark.parametrize("kind", ACTIVATION_KINDS)
@pytest.mark.parametrize("eps", [0.02, 0.2])
def test_sigmoid_and_tanh_networks_are_bounded_soundly(kind: str, eps: float) -> None:
    model = tiny_net(kind, 3)
    x = tiny_inputs(3, 3)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", eps)
    pts = torch.cat([_samples_in_ball(x, tm, 48, 1), _pgd_points(model, x, tm, 1), x.unsqueeze(0)])
    for method in METHODS:
        _check_sound(model, x, y, tm, pts, method)
    ilo, ihi = bounds(model, x, tm, "ibp", "margin", y)
    clo, chi = bounds(model, x, tm, "crown", "margin", y)
    assert float((chi - clo).mean()) <= float((ihi - ilo).mean()) + 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_crown_is_tighter_than_ibp_on_average_and_alpha_never_looser(seed: int) -> None:
    model = tiny_net("mlp", seed)
    x = tiny_inputs(8, seed)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", 0.05)
    ilo, ihi = bounds(model, x, tm, "ibp", "margin", y)
    clo, chi = bounds(model, x, tm, "crown", "margin", y)
    alo, ahi = bounds(model, x, tm, "alpha-crown", "margin", y)
    # CROWN is not pointwise tighter than IBP in general (Zhang et al. 2020, Sec. 3), but on
    # small eps it is typically much tighter on average.
    assert float((chi - clo).mean()) < float((ihi - ilo).mean())
    assert bool((alo >= clo - 1e-6).all()) and bool((ahi <= chi + 1e-6).all())


@pytest.mark.parametrize("kind", KINDS)
def test_crown_lp_and_alpha_are_never_looser_than_ibp_and_lower_only_is_the_same(kind: str) -> None:
    from robustlab.verify.bounds import bound_network, spec_matrix

    model = tiny_net(kind, 7)
    x = tiny_inputs(8, 7)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", 0.3)  # large eps: where IBP's final bound can beat CROWN's own
    ilo, ihi = bounds(model, x, tm, "ibp", "margin", y)
    for method in ("crown", "alpha-crown", "lp"):
        lo, hi = bounds(model, x, tm, method, "margin", y)
        assert bool((lo >= ilo - 1e-6).all()) and bool((hi <= ihi + 1e-6).all()), method
    net = trace(model, x)
    c = spec_matrix("margin", y, x.shape[0], net.num_classes, x)
    for method in ("ibp", "crown", "crown-ibp"):
        with torch.no_grad():
            both, _ = bound_network(net, x, tm, method, c)
            low, none = bound_network(net, x, tm, method, c, upper=False)
        assert none is None and torch.allclose(low, both, atol=1e-6), method


def test_margin_spec_is_tighter_than_differencing_logit_bounds() -> None:
    model = tiny_net("mlp", 3)
    x = tiny_inputs(6, 3)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", 0.1)
    lo, hi = bounds(model, x, tm, "crown", "logits")
    mlo, _ = bounds(model, x, tm, "crown", "margin", y)
    diff = lo.gather(1, y[:, None]) - hi  # z_y >= lo_y, z_j <= hi_j
    diff[torch.arange(6), y] = 0
    assert bool((mlo >= diff - 1e-6).all()) and float((mlo - diff).sum()) > 0


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("method", METHODS)
def test_single_linear_layer_equals_dual_norm_formula(norm: str, method: str) -> None:
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(16, 5)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    eps = 0.05
    x = 0.2 + 0.6 * torch.rand(4, 1, 4, 4, generator=g)  # the ball stays inside [0, 1]^d
    tm = rl.ThreatModel(norm, eps)
    q = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}[norm]
    with torch.no_grad():
        z = model(x)
        rad = eps * lin.weight.norm(p=q, dim=1)  # dual norm of each row
        lo, hi = bounds(model, x, tm, method, "logits")
    torch.testing.assert_close(lo, z - rad, atol=1e-5, rtol=0)
    torch.testing.assert_close(hi, z + rad, atol=1e-5, rtol=0)


def test_single_linear_layer_near_the_box_edge_uses_the_clipped_box() -> None:
    lin = nn.Linear(16, 3)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.zeros(2, 1, 4, 4)
    x[1] = 1.0
    tm = rl.ThreatModel("linf", 0.1)
    with torch.no_grad():
        w, b = lin.weight, lin.bias
        lo_box, hi_box = (x - 0.1).clamp(0, 1).flatten(1), (x + 0.1).clamp(0, 1).flatten(1)
        exp_lo = lo_box @ w.clamp(min=0).t() + hi_box @ w.clamp(max=0).t() + b
        exp_hi = hi_box @ w.clamp(min=0).t() + lo_box @ w.clamp(max=0).t() + b
        for method in ("ibp", "crown"):
            lo, hi = bounds(model, x, tm, method)
            torch.testing.assert_close(lo, exp_lo, atol=1e-5, rtol=0)
            torch.testing.assert_close(hi, exp_hi, atol=1e-5, rtol=0)


def test_zero_eps_bounds_are_the_logits() -> None:
    model = tiny_net("maxpool", 0)
    x = tiny_inputs(3, 0)
    with torch.no_grad():
        z = model(x)
    for method in METHODS:
        lo, hi = bounds(model, x, rl.ThreatModel("linf", 0.0), method)
        torch.testing.assert_close(lo, z, atol=1e-5, rtol=0)
        torch.testing.assert_close(hi, z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "small-cnn"])
def test_robustlab_architectures_trace_exactly(arch: str) -> None:
    model = rl.models.create(arch, dataset="digits").eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    net = trace(model, x)
    with torch.no_grad():
        torch.testing.assert_close(net.forward(x), model(x), atol=1e-5, rtol=1e-5)
    lo, hi = bounds(model, x[:1], rl.ThreatModel("linf", 0.01), "crown" if arch != "cnn" else "ibp")
    assert bool((lo <= hi).all())


@pytest.mark.parametrize("module", [nn.GELU(), nn.MaxPool2d(3, stride=1), nn.LeakyReLU()])
def test_unsupported_layer_is_refused_by_name_and_type(module: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), module, nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(2, 1, 4, 4)
    model(x)
    with pytest.raises(TypeError, match=rf"'1' of type {type(module).__name__}"):
        bounds(model, x, rl.ThreatModel("linf", 0.1))


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(x.flatten(1)))


class _PreActBlock(BasicBlock):
    """A residual block with another forward (pre-activation): not the block the tracer knows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(x))))) + self.shortcut(x)


def test_custom_module_and_unknown_residual_blocks_are_refused() -> None:
    with pytest.raises(TypeError, match="_Custom"):
        bounds(_Custom().eval(), torch.rand(1, 1, 4, 4), rl.ThreatModel("linf", 0.1))
    block = nn.Sequential(_PreActBlock(1, 2, 1), nn.Flatten(), nn.Linear(32, 3)).eval()
    with pytest.raises(TypeError, match="_PreActBlock"):
        bounds(block, torch.rand(1, 1, 4, 4), rl.ThreatModel("linf", 0.1))
    resnet = rl.models.create("resnet18", dataset="digits").eval()  # the package's own ResNet-18 is supported
    lo, hi = bounds(resnet, torch.rand(1, 1, 8, 8), rl.ThreatModel("linf", 0.0), "ibp")
    assert lo.shape == (1, 10) and bool((lo <= hi).all())


def test_train_mode_model_is_bounded_in_eval_mode_and_restored() -> None:
    model = tiny_net("avgpool-bn", 5).train()
    x = tiny_inputs(4, 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lo, hi = bounds(model, x, rl.ThreatModel("linf", 0.0), "crown")
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(lo, model(x), atol=1e-5, rtol=0)  # eval-mode semantics


def test_float64_and_argument_validation() -> None:
    model = tiny_net("conv", 2, torch.float64)
    x = tiny_inputs(2, 2, torch.float64)
    lo, hi = bounds(model, x, rl.ThreatModel("l2", 0.2), "crown")
    assert lo.dtype == torch.float64 and bool((lo <= hi).all())
    with pytest.raises(ValueError, match="method"):
        bounds(model, x, rl.ThreatModel("linf", 0.1), "deeppoly")
    with pytest.raises(ValueError, match="labels"):
        bounds(model, x, rl.ThreatModel("linf", 0.1), "crown", "margin")
    with pytest.raises(ValueError, match="norm"):
        bounds(model, x, rl.ThreatModel("l0", 1), "crown")
    with pytest.raises(TypeError, match="dtype"):
        bounds(model, x.float(), rl.ThreatModel("linf", 0.1))


def test_verified_reads_the_margin_lower_bounds() -> None:
    low = torch.tensor([[0.0, 0.5, 0.2], [0.3, 0.0, -0.1]])
    assert verified(low, torch.tensor([0, 1])).tolist() == [True, False]


def test_residual_blocks_trace_exactly_and_bound_soundly() -> None:
    from robustlab.models.architectures import ResNet18

    model = tiny_net("residual", 5)
    x = tiny_inputs(3, 5)
    with torch.no_grad():
        assert torch.allclose(trace(model, x).forward(x), model(x), atol=1e-5)
    y = model(x).argmax(1)
    tm = rl.ThreatModel("linf", 0.05)
    pts = torch.cat([_pgd_points(model, x, tm, 0), _samples_in_ball(x, tm, 16, 0)])
    for method in METHODS:
        _check_sound(model, x, y, tm, pts, method)
    ilo, ihi = bounds(model, x, tm, "ibp", "margin", y)
    clo, chi = bounds(model, x, tm, "crown", "margin", y)
    assert float((chi - clo).mean()) < float((ihi - ilo).mean())
    # the package's whole ResNet-18 (11 M parameters) on a small input: traced exactly, IBP sound
    torch.manual_seed(0)
    net = ResNet18(1, 3).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    xr = tiny_inputs(2, 1).repeat(1, 1, 2, 2)  # (2, 1, 8, 8)
    with torch.no_grad():
        z = net(xr)
        assert torch.allclose(trace(net, xr).forward(xr), z, atol=1e-4 * float(z.abs().max()))
    lo, hi = bounds(net, xr, rl.ThreatModel("linf", 0.001), "ibp", "logits")
    assert bool((lo <= z + 1e-4).all()) and bool((z <= hi + 1e-4).all())
