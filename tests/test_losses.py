"""The attack losses, written once: margins are right for negative logits, DLR matches its formula."""

from __future__ import annotations

import pytest
import torch

from robustlab.losses import cross_entropy, cw_margin, dlr, get_loss, is_adversarial, margin, max_other


def test_max_other_with_negative_logits():
    # The true class has the largest logit; all others are negative: the best other is -1, not 0.
    z = torch.tensor([[5.0, -1.0, -3.0]])
    y = torch.tensor([0])
    assert max_other(z, y).tolist() == [-1.0]
    assert margin(z, y).tolist() == [6.0]
    assert cw_margin(z, y).tolist() == [-6.0]


def test_cw_targeted_and_kappa():
    z = torch.tensor([[1.0, 4.0, 2.0]])
    y, t = torch.tensor([0]), torch.tensor([1])
    assert cw_margin(z, y, t).tolist() == [2.0]  # z_t - max_{j != t} z_j
    assert cw_margin(z, y, t, kappa=0.5).tolist() == [0.5]


def test_dlr_formula():
    z = torch.tensor([[3.0, 1.0, 0.5, -2.0]])
    y = torch.tensor([1])
    # -(z_y - max_other) / (z_pi1 - z_pi3) = -(1 - 3) / (3 - 0.5)
    assert torch.allclose(dlr(z, y), torch.tensor([2.0 / 2.5]))
    t = torch.tensor([2])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2) = -(1 - 0.5) / (3 - (0.5 - 2)/2)
    assert torch.allclose(dlr(z, y, t), torch.tensor([-0.5 / 3.75]))
    # Invariant to shift and positive scale.
    assert torch.allclose(dlr(7 * z + 3, y), dlr(z, y))


def test_cross_entropy_targeted_sign_and_success():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0])
    assert bool((cross_entropy(z, y) > 0).all())
    assert bool((cross_entropy(z, y, torch.tensor([1, 1])) < 0).all())
    assert is_adversarial(z, y).tolist() == [False, True]
    assert is_adversarial(z, y, torch.tensor([1, 1])).tolist() == [False, True]


def test_loss_lookup_and_errors():
    assert get_loss("dlr") is dlr
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr(torch.zeros(2, 2), torch.tensor([0, 1]))
