"""Dataset-level attacks on the digits model: the adversarial patch and universal perturbations."""

from __future__ import annotations

import pytest
import torch

from robustlab.attacks.patch import AdversarialPatch
from robustlab.attacks.universal import UniversalPerturbation, fooling_rate
from robustlab.threat import ThreatModel


def test_patch_is_pasted_where_asked():
    ap = AdversarialPatch(3, scale=(1.0, 1.0), max_rotation=0.0)
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    patch = torch.full((1, 3, 3), 0.7, dtype=torch.float64)
    out = ap.paste(x, patch, torch.ones(1), torch.zeros(1), torch.tensor([[4.0, 2.0]]))
    assert torch.allclose(out[0, 0, 1:4, 3:6], torch.full((3, 3), 0.7, dtype=torch.float64))
    out[0, 0, 1:4, 3:6] = 0
    assert float(out.abs().max()) < 1e-12  # nothing outside the patch changed


def test_patch_larger_than_image_is_refused(digits_model, digits_train):
    with pytest.raises(ValueError, match="larger than the image"):
        AdversarialPatch(8, scale=(0.9, 1.1)).fit(digits_model, digits_train.images[:10], 0)
    with pytest.raises(ValueError, match="patch_size"):
        AdversarialPatch(0)


def test_patch_targeted_success_above_chance(digits_model, digits_train, digits_test):
    """A 5x5 patch (39% of an 8x8 digit, pasted anywhere) trained on the training digits sends
    held-out digits to the target class far more often than a random patch of the same size."""
    target = 3
    ap = AdversarialPatch(5, scale=(0.9, 1.1), max_rotation=10.0, steps=150, batch_size=64, step_size=0.1, seed=0)
    before = [p.detach().clone() for p in digits_model.parameters()]
    patch = ap.fit(digits_model, digits_train.images, target)
    assert patch.shape == (1, 5, 5) and float(patch.min()) >= 0 and float(patch.max()) <= 1
    assert all(torch.equal(a, b) for a, b in zip(before, digits_model.parameters()))
    assert all(p.grad is None for p in digits_model.parameters())
    x, y = digits_test.images, digits_test.labels
    ours = ap.success_rate(digits_model, x, y, draws=2)
    noise = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(5))
    chance = ap.success_rate(digits_model, x, y, patch=noise, draws=2)
    assert ours > 0.25 and ours > chance + 0.15
    # same seed, same patch
    assert torch.equal(AdversarialPatch(4, steps=5, seed=1).fit(digits_model, digits_train.images[:64], target),
                       AdversarialPatch(4, steps=5, seed=1).fit(digits_model, digits_train.images[:64], target))


@pytest.mark.parametrize("norm,eps", [pytest.param("linf", 0.25, marks=pytest.mark.slow), ("l2", 2.0)])
def test_universal_perturbation_fools_held_out_digits(digits_model, digits_train, digits_test, norm, eps):
    tm = ThreatModel(norm, eps)
    up = UniversalPerturbation(tm, epochs=2, batch_size=32, deepfool_steps=20, seed=0)
    v = up.fit(digits_model, digits_train.images[:256])
    assert v.shape == (1, 1, 8, 8)
    size = v.abs().max() if norm == "linf" else v.flatten().norm()
    assert float(size) <= eps + 1e-6
    rate = up.fooling_rate(digits_model, digits_test.images)
    assert rate > 0.1
    # a random perturbation of the same size fools far fewer
    g = torch.Generator().manual_seed(0)
    r = torch.randn(1, 1, 8, 8, generator=g)
    r = (r.sign() * eps) if norm == "linf" else r / r.norm() * eps
    assert rate > fooling_rate(digits_model, digits_test.images, r)
    assert up.result_ is not None and len(up.result_.train_fooling_rate) == up.result_.epochs


def test_universal_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        UniversalPerturbation(ThreatModel("l1", 1.0))
    with pytest.raises(ValueError, match="eps"):
        UniversalPerturbation(ThreatModel("l2", 0.0))
    with pytest.raises(TypeError, match="ThreatModel"):
        UniversalPerturbation("l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fit"):
        UniversalPerturbation(ThreatModel("l2", 1.0)).apply(torch.zeros(1, 1, 8, 8))
