"""Deformation attacks (ADef, Spatial) and the deformation threat model, on the digits model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robustlab.attacks.adef import ADef, DeformationThreat, deform, field_norm, gaussian_smooth
from robustlab.testing import check_attack


def test_threat_refuses_non_positive_radius():
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_norm"):
            DeformationThreat(bad)
    with pytest.raises(ValueError, match="padding"):
        DeformationThreat(1.0, padding="wrap")


def test_zero_field_is_identity_and_integer_shift_moves_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 7, 9, generator=g, dtype=torch.float64)
    tau = torch.zeros(2, 2, 7, 9, dtype=torch.float64)
    assert torch.allclose(deform(x, tau), x, atol=1e-12)
    tau[:, 0] = 1.0  # x_tau(r, c) = x(r, c + 1)
    out = deform(x, tau)
    assert torch.allclose(out[..., :-1], x[..., 1:], atol=1e-12)
    tau = torch.zeros_like(tau)
    tau[:, 1] = -2.0  # x_tau(r, c) = x(r - 2, c)
    assert torch.allclose(deform(x, tau)[..., 2:, :], x[..., :-2, :], atol=1e-12)


def test_field_norm_and_projection():
    tau = torch.zeros(3, 2, 4, 4)
    tau[0, 0, 1, 1], tau[0, 1, 1, 1] = 3.0, 4.0  # one vector of length 5
    tau[1] = 0.5
    norms = field_norm(tau)
    assert torch.allclose(norms, torch.tensor([5.0, math.sqrt(0.5), 0.0]))
    th = DeformationThreat(2.0)
    proj = th.project(tau)
    assert torch.allclose(field_norm(proj), torch.tensor([2.0, math.sqrt(0.5), 0.0]))
    assert torch.equal(proj[1], tau[1])
    assert bool(th.contains(proj).all()) and not bool(th.contains(tau)[0])


def test_gaussian_smoothing_is_self_adjoint():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 2, 9, 11, generator=g, dtype=torch.float64)
    b = torch.randn(2, 2, 9, 11, generator=g, dtype=torch.float64)
    lhs = (gaussian_smooth(a, 1.3) * b).sum()
    rhs = (a * gaussian_smooth(b, 1.3)).sum()
    assert torch.allclose(lhs, rhs, atol=1e-10)


def test_adef_succeeds_with_small_fields(model, batch):
    x, y = batch
    res = ADef().attack(model, x, y)
    assert res.norm == "deformation"
    assert res.success_rate >= 0.9
    # digits are 8x8 images: the fields found move no pixel by more than about two pixels
    assert float(res.distance[res.success].median()) < 1.5
    assert float(res.iterations[res.success].float().mean()) <= 10
    # the returned image is exactly grid_sample of x with the returned field
    tau = res.info["tau"]
    assert torch.allclose(field_norm(tau), res.distance)
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], -1).expand(n, h, w, 2) + tau.permute(0, 2, 3, 1) * torch.tensor([2 / (w - 1), 2 / (h - 1)])
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    assert torch.allclose(res.x_adv, ref, atol=1e-6)


def test_adef_respects_the_deformation_budget(model, batch):
    x, y = batch[0][:8], batch[1][:8]
    free = ADef(steps=20).attack(model, x, y)
    r = float(free.distance[free.success].median())
    res = ADef(DeformationThreat(r), steps=20).attack(model, x, y)
    assert bool((res.distance <= r + 1e-5).all())
    assert res.success_rate <= free.success_rate


@pytest.mark.slow
def test_adef_targeted(model, batch):
    x, y = batch[0][:8], batch[1][:8]
    target = (y + 1) % 10
    res = ADef(steps=50).attack(model, x, y, target=target)
    assert res.success_rate >= 0.7
    pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred[res.success], target[res.success])


@pytest.mark.parametrize("gradient", ["interpolant", "central"])
def test_adef_property_suite(model, batch, gradient):
    x, y = batch
    check_attack(lambda seed: ADef(steps=10, gradient=gradient, seed=seed), model, x[:8], y[:8])


def test_adef_bad_arguments():
    with pytest.raises(ValueError, match="max_norm"):
        ADef(0.0)
    with pytest.raises(ValueError, match="steps"):
        ADef(steps=0)
    with pytest.raises(ValueError, match="gradient"):
        ADef(gradient="sobel")
    with pytest.raises(TypeError, match="threat"):
        ADef("l2")  # type: ignore[arg-type]


# -- Spatial (Engstrom et al. 2019) ------------------------------------------------------------

from robustlab.attacks.spatial import Spatial, rigid_field  # noqa: E402


def test_rigid_field_matches_affine_grid():
    """A rotation + translation field deforms exactly as affine_grid's rigid motion."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 9, 9, generator=g, dtype=torch.float64)
    angle, shift = torch.tensor([20.0], dtype=torch.float64), torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    ours = deform(x, rigid_field(angle, shift, 9, 9), padding="zeros")
    th = math.radians(20.0)
    theta = torch.tensor([[[math.cos(th), -math.sin(th), 1.0 * 2 / 8], [math.sin(th), math.cos(th), -2.0 * 2 / 8]]], dtype=torch.float64)
    ref = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=True), padding_mode="zeros", align_corners=True)
    assert torch.allclose(ours, ref, atol=1e-10)
    # ||tau||_T of a pure translation is its length
    assert torch.allclose(field_norm(rigid_field(torch.zeros(1, dtype=torch.float64), shift, 9, 9)), torch.tensor([math.sqrt(5.0)], dtype=torch.float64))


def test_spatial_finds_a_fooling_rotation(model, batch):
    x, y = batch
    att = Spatial(max_angle=30.0, angles=31, max_shift=0.0, shifts=1)
    res = att.attack(model, x, y)
    assert res.success_rate > 0.2
    hit = res.success
    assert bool((res.info["angle"][hit].abs() > 0).all())
    # the image is the rotated digit, and the model misclassifies it
    tau = rigid_field(res.info["angle"], res.info["shift"], 8, 8)
    assert torch.allclose(deform(x, tau, padding="zeros"), res.x_adv, atol=1e-6)
    assert bool((model(res.x_adv).argmax(1)[hit] != y[hit]).all())
    # the grid is searched in increasing ||tau||_T: a smaller angle range never finds a smaller motion
    small = Spatial(max_angle=10.0, angles=11, max_shift=0.0, shifts=1).attack(model, x, y)
    both = small.success & res.success
    assert bool((res.distance[both] <= small.distance[both] + 1e-6).all())


def test_spatial_property_suite(model, batch):
    x, y = batch
    check_attack(lambda seed: Spatial(angles=7, shifts=3, seed=seed), model, x[:8], y[:8])
    with pytest.raises(ValueError, match="padding"):
        Spatial(padding="wrap")
    with pytest.raises(ValueError, match="angles"):
        Spatial(angles=0)


# -- ADef adversarial training --------------------------------------------------------------------

from robustlab.training import from_args  # noqa: E402
from robustlab.training.deformation import ADefAdversary  # noqa: E402


def test_adef_adversary_loss_on_deformed_batch(digits_model, batch):
    import copy

    model = copy.deepcopy(digits_model).train()
    x, y = batch[0][:8], batch[1][:8]
    adv = from_args("adef", {"max_norm": 1.0, "steps": 5})
    assert isinstance(adv, ADefAdversary) and adv.config()["max_norm"] == 1.0
    g = torch.Generator().manual_seed(0)
    loss, logits = adv.loss_and_logits(model, x, y, generator=g)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())  # crafting left no parameter gradients
    assert loss.requires_grad and torch.isfinite(loss) and logits.shape == (8, 10)
    model.eval()
    x_def = adv.craft(model, x, y)
    res = ADef(DeformationThreat(1.0), steps=5).attack(model, x, y)
    assert torch.allclose(x_def, res.x_adv) and bool((res.distance <= 1.0 + 1e-5).all())
    assert torch.equal(adv.craft(model, x, y, eps_scale=0.0), x)  # warm-up at 0: the clean batch
    with pytest.raises(ValueError, match="max_norm"):
        ADefAdversary(0.0)


def test_deformation_attacks_refuse_non_images(model):
    with pytest.raises(ValueError, match="H, W >= 2"):
        ADef().attack(model, torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))
