"""accuracy(): batched, no gradients, the model's mode restored."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.models import accuracy, predictions


def test_accuracy_matches_a_direct_computation_and_restores_mode(model, digits_test):
    with torch.no_grad():
        direct = float((model(digits_test.images).argmax(1) == digits_test.labels).float().mean())
    assert direct > 0.9
    model.train()
    try:
        for bs in (1000, 7):
            assert accuracy(model, digits_test, batch_size=bs) == pytest.approx(direct, abs=1e-6)
        assert model.training and all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
    pair = (digits_test.images[:50], digits_test.labels[:50])
    assert predictions(model, pair).shape == (50,) and 0.0 <= accuracy(model, pair) <= 1.0
    assert not model.training


def test_accuracy_rejects_bad_data(model):
    with pytest.raises(ValueError, match="data is empty"):
        accuracy(model, (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(TypeError, match="Dataset or an \\(images, labels\\) pair"):
        accuracy(model, torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="labels \\(N,\\)"):
        accuracy(model, (torch.zeros(3, 1, 8, 8), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        rl.models.accuracy(model, (torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)), batch_size=0)
