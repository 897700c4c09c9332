"""RBF output layer (Goodfellow et al. 2015, Sec. 7): outputs, gradients, the head swap, and the
rubbish-input test on digits (Gaussian noise is never classified with confidence)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.models.rbf import RBFHead, rbf_confidence, with_rbf_head


def test_outputs_equal_negative_scaled_squared_distances():
    head = RBFHead(5, 3, gamma=0.7, generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    brute = -0.7 * ((x[:, None, :] - head.centers[None]) ** 2).sum(-1)
    assert torch.allclose(head(x), brute, atol=1e-12)
    assert torch.allclose(head(head.centers.detach()).diagonal(), torch.zeros(3, dtype=torch.float64))
    p = rbf_confidence(head(x))
    assert bool(((p > 0) & (p <= 1)).all())


def test_gradients_match_closed_form_and_gradcheck():
    head = RBFHead(4, 3, gamma=1.3, learn_gamma=True, generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    (gx,) = torch.autograd.grad(head(x)[:, 1].sum(), x)
    assert torch.allclose(gx, -2 * 1.3 * (x - head.centers[1]).detach(), atol=1e-10)  # d/dx of -g||x-w||^2
    assert torch.autograd.gradcheck(lambda a: head(a), (x,))
    head(x).sum().backward()
    assert head.centers.grad is not None and head.log_gamma.grad is not None


def test_confidence_vanishes_far_from_the_centres():
    head = RBFHead(16, 10, gamma=1.0, generator=torch.Generator().manual_seed(0))
    linear = nn.Linear(16, 10)
    far = 100 * torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    assert float(rbf_confidence(head(far)).detach().max()) < 1e-6
    assert float(torch.softmax(linear(far), 1).detach().max(1).values.min()) > 0.5  # a linear layer is sure of itself


def test_with_rbf_head_swaps_last_linear_only(digits_train):
    model = rl.models.create("small-cnn", digits_train, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    rbf = with_rbf_head(model, gamma=0.5, seed=0)
    assert isinstance(rbf.net[-1], RBFHead) and isinstance(model.net[-1], nn.Linear)
    assert rbf.net[-1].in_features == 100 and rbf.net[-1].out_features == 10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert rbf(digits_train.images[:3]).shape == (3, 10)
    with pytest.raises(ValueError, match="no nn.Linear"):
        with_rbf_head(nn.Sequential(nn.Flatten(), nn.ReLU()))
    with pytest.raises(ValueError, match="gamma"):
        RBFHead(4, 3, gamma=0.0)
    with pytest.raises(ValueError, match="features"):
        RBFHead(4, 3)(torch.zeros(2, 5))


def test_rubbish_inputs_on_digits(digits_train, digits_test):
    """Trained RBF-head network: accurate on digits, never confident on Gaussian noise images."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = with_rbf_head(rl.models.create("mlp", digits_train, seed=0), gamma=0.05, seed=0)
        g = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        x, y = digits_train.images, digits_train.labels
        for _ in range(5):
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0], 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(digits_test.images).argmax(1) == digits_test.labels).double().mean()
        noise = torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(4))
        p_noise = rbf_confidence(model(noise)).max(1).values
    assert float(acc) > 0.9
    assert float((p_noise > 0.5).double().mean()) == 0.0


def test_rbf_nll_is_the_per_class_bernoulli_likelihood():
    from robustlab.models.rbf import rbf_nll

    z = torch.tensor([[-0.1, -2.0, -5.0], [-3.0, -0.5, -0.2]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    p = z.exp()
    manual = -(torch.log(p[0, 0]) + torch.log(1 - p[0, 1]) + torch.log(1 - p[0, 2])
               + torch.log(p[1, 2]) + torch.log(1 - p[1, 0]) + torch.log(1 - p[1, 1])) / 2
    assert torch.allclose(rbf_nll(z, y), manual)
    assert torch.isfinite(rbf_nll(torch.zeros(2, 3), y))  # p = 1 for a wrong class: clamped, finite
