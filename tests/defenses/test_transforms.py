"""Input-transformation defences: shape and range, bad input, BPDA surrogates, and the adaptive
attacks that break them (BPDA on a zero-gradient threshold, EOT on random rotation)."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks import BPDA, EOT, PGD
from robustlab.defenses.transforms import (
    JPEG, BitDepth, GaussianBlur, MagNetAutoencoder, MedianFilter, RandomRotateScale, Randomized, Reconstruct, Threshold,
    median_filter, train_autoencoder,
)
from robustlab.testing import check_attack


@pytest.fixture(scope="module")
def autoencoder(digits_train):
    return train_autoencoder(MagNetAutoencoder(1, 8), digits_train.images, epochs=4, batch_size=32, lr=3e-3, seed=0)


FACTORIES = {
    "bitdepth": lambda m, ae: BitDepth(m, 2),
    "threshold": lambda m, ae: Threshold(m, 0.5),
    "median2": lambda m, ae: MedianFilter(m, 2),
    "median3": lambda m, ae: MedianFilter(m, 3),
    "blur": lambda m, ae: GaussianBlur(m, 0.8),
    "jpeg": lambda m, ae: JPEG(m, 50),
    "randomized": lambda m, ae: Randomized(m, 1.25, seed=0),
    "rotate": lambda m, ae: RandomRotateScale(m, 20.0, (0.9, 1.1), seed=0),
    "reconstruct": lambda m, ae: Reconstruct(m, ae),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_transform_keeps_shape_and_box_and_returns_logits(name, model, batch, autoencoder):
    x, _ = batch
    defended = FACTORIES[name](model, autoencoder)
    t = defended.preprocess(x).detach()
    assert t.shape == x.shape and t.dtype == x.dtype
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    with torch.no_grad():
        assert defended(x).shape == (x.shape[0], 10)
    # accuracy stays well above chance on clean digits
    with torch.no_grad():
        assert float((defended(x).argmax(1) == batch[1]).float().mean()) >= 0.5


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_transform_refuses_images_outside_the_unit_box(name, model, batch, autoencoder):
    x, _ = batch
    defended = FACTORIES[name](model, autoencoder)
    with pytest.raises(ValueError, match=r"expected images in \[0.0, 1.0\]"):
        defended(x + 1.5)
    with pytest.raises(ValueError, match="shape"):
        defended(x[0])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_surrogate_gradient_is_nonzero_and_forward_is_exact(name, model, batch, autoencoder):
    x, y = batch
    defended = FACTORIES[name](model, autoencoder).eval()
    view = defended.bpda()
    if defended.random:
        defended.reset()
        a = view(x)
        defended.reset()
        b = defended(x)
    else:
        a, b = view(x), defended(x)
    assert torch.allclose(a, b, atol=1e-6)  # the BPDA view computes the defended model exactly
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(view(xr), y), xr)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0


@pytest.mark.parametrize("cls", [BitDepth, Threshold])
def test_quantisers_have_zero_true_gradient(cls, model, batch):
    x, y = batch
    defended = cls(model, 1) if cls is BitDepth else cls(model, 0.5)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(defended(xr), y), xr)
    assert float(g.abs().max()) == 0.0


def test_threshold_closed_form_and_median_matches_sorting():
    x = torch.tensor([0.1, 0.5, 0.50001, 0.9]).reshape(1, 1, 2, 2)
    t = Threshold(torch.nn.Flatten(), 0.5).preprocess(x)
    assert t.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 1, 6, 6, generator=g)
    out = median_filter(img, 2)
    padded = torch.nn.functional.pad(img, (1, 0, 1, 0), mode="reflect")
    for i, j in [(0, 0), (3, 4), (5, 5)]:
        window = padded[0, 0, i : i + 2, j : j + 2].flatten()
        assert out[0, 0, i, j] == window.median()


def test_bad_parameters_are_refused(model):
    with pytest.raises(ValueError, match="bits"):
        BitDepth(model, 0)
    with pytest.raises(ValueError, match="t must be"):
        Threshold(model, 1.5)
    with pytest.raises(ValueError, match="quality"):
        JPEG(model, 101)
    with pytest.raises(ValueError, match="max_scale"):
        Randomized(model, 0.5)
    with pytest.raises(TypeError, match="model"):
        BitDepth("not a model", 2)  # type: ignore[arg-type]


def test_random_transforms_are_seeded(model, batch):
    x, _ = batch
    a = RandomRotateScale(model, 30.0, seed=3)
    b = RandomRotateScale(model, 30.0, seed=3)
    assert torch.equal(a.preprocess(x), b.preprocess(x))
    assert not torch.equal(a.preprocess(x), a.preprocess(x))  # a fresh draw per call
    a.reset()
    b.reset()
    assert torch.equal(a.preprocess(x), b.preprocess(x))


def test_threshold_fools_plain_pgd_but_not_bpda(model, digits_test):
    x, y = digits_test.images[:64], digits_test.labels[:64]
    defended = Threshold(model, 0.5)
    tm = rl.ThreatModel("linf", 0.3)
    plain = PGD(tm, steps=10, seed=0).attack(defended, x, y)
    bpda = BPDA(PGD(tm, steps=10, seed=0)).attack(defended, x, y)
    assert plain.robust_accuracy >= 0.7  # zero gradients: PGD only moves by its random start
    assert bpda.robust_accuracy <= plain.robust_accuracy - 0.4


def test_bpda_attack_passes_the_property_suite(model, batch):
    x, y = batch
    defended = BitDepth(model, 3).eval()
    check_attack(lambda seed: BPDA(PGD(rl.ThreatModel("linf", 0.1), steps=5, seed=seed)), defended, x[:8], y[:8], check_dtype=False)


def test_bpda_needs_a_defended_model(model, batch):
    x, y = batch
    with pytest.raises(TypeError, match="bpda"):
        BPDA(PGD(rl.ThreatModel("linf", 0.1), steps=2)).attack(model, x, y)


def test_eot_pgd_beats_plain_pgd_on_random_rotation(model, digits_test):
    x, y = digits_test.images[:64], digits_test.labels[:64]
    defended = RandomRotateScale(model, 20.0, (0.9, 1.1), seed=0)
    tm = rl.ThreatModel("linf", 0.2)

    def expected_accuracy(x_adv):  # accuracy over 8 draws of the randomness
        defended.reset(1)
        with torch.no_grad():
            return float(torch.stack([(defended(x_adv).argmax(1) == y).float() for _ in range(8)]).mean())

    plain = PGD(tm, steps=10, seed=0).attack(defended, x, y)
    eot = EOT(PGD(tm, steps=10, seed=0), n=4).attack(defended, x, y)
    assert expected_accuracy(eot.x_adv) < expected_accuracy(plain.x_adv) - 0.05



def test_autoencoder_seed_fixes_the_initial_weights_without_touching_the_global_rng():
    state = torch.get_rng_state()
    a, b = MagNetAutoencoder(1, 8, seed=3), MagNetAutoencoder(1, 8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left where it was
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    c = MagNetAutoencoder(1, 8, seed=4)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)
    torch.manual_seed(3)
    unseeded = MagNetAutoencoder(1, 8)  # seed=None: the global RNG, as any nn.Module
    assert torch.equal(unseeded.net[0].weight, a.net[0].weight)
    with pytest.raises(TypeError, match="seed"):
        MagNetAutoencoder(1, 8, seed=1.5)
