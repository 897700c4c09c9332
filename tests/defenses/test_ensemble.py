"""Ensembles: hard and soft voting equal the hand computation; mismatched members are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.attacks import BPDA, PGD
from robustlab.defenses.ensemble import Ensemble
from robustlab.testing import check_attack


class Fixed(nn.Module):
    """Returns fixed logits per sample (plus 0 * x, so gradients exist)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]] + 0.0 * x.flatten(1).sum(1, keepdim=True)


def _members():
    # 3 samples, 3 classes, 3 members.
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 0.0]])
    c = torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    return [Fixed(a), Fixed(b), Fixed(c)], torch.stack([a, b, c])


def test_soft_voting_is_the_log_of_the_mean_probability():
    members, z = _members()
    x = torch.zeros(3, 1, 2, 2)
    out = Ensemble(members, voting="soft")(x)
    expected = torch.softmax(z, dim=-1).mean(0).log()
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-6)


def test_hard_voting_is_the_majority_with_ties_to_the_mean_probability():
    members, z = _members()
    x = torch.zeros(3, 1, 2, 2)
    ens = Ensemble(members, voting="hard")
    votes = ens.votes(x)
    # by hand: sample 0 votes (0, 0, 1) -> class 0 twice; sample 1 (1, 2, 2) -> class 2; sample 2 (0, 1, 2): a
    # three-way tie, broken by the mean probability, whose argmax is class 2 (member c is sure).
    assert votes.tolist() == [[2, 1, 0], [0, 1, 2], [1, 1, 1]]
    pred = ens(x).argmax(1)
    assert pred.tolist() == [0, 2, 2]
    assert int(torch.softmax(z, -1).mean(0)[2].argmax()) == 2
    # the output is a probability vector: (v + p/2) / (M + 1/2)
    p = torch.softmax(z, -1).mean(0)
    assert torch.allclose(ens(x).exp(), (votes + 0.5 * p) / 3.5, atol=1e-6)


def test_hard_voting_bpda_has_the_hard_value_and_the_soft_gradient():
    members, _ = _members()
    lin = [nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(3)]
    torch.manual_seed(0)
    x = torch.rand(3, 1, 2, 2)
    hard, soft = Ensemble(lin, voting="hard"), Ensemble(lin, voting="soft")
    view = hard.bpda()
    assert torch.allclose(view(x), hard(x))
    xr = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(view(xr)[:, 0].sum(), xr)
    (g2,) = torch.autograd.grad(soft(xr)[:, 0].sum(), xr)
    assert torch.allclose(g1, g2, atol=1e-6)
    assert hard.surrogate().voting == "soft"


def test_mismatched_members_are_refused():
    a = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    b = nn.Sequential(nn.Flatten(), nn.Linear(4, 5))
    with pytest.raises(ValueError, match="number of classes"):
        Ensemble([a, b])(torch.rand(2, 1, 2, 2))
    with pytest.raises(ValueError, match="number of classes"):
        Ensemble([a, b], input_shape=(1, 2, 2))
    c = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    with pytest.raises(ValueError, match="does not accept inputs of shape"):
        Ensemble([a, c], input_shape=(1, 2, 2))
    a.metadata = {"architecture": {"in_channels": 1, "input_size": [28, 28], "num_classes": 10}}
    c.metadata = {"architecture": {"in_channels": 3, "input_size": [32, 32], "num_classes": 10}}
    with pytest.raises(ValueError, match="input shape"):
        Ensemble([a, c])
    with pytest.raises(ValueError, match="voting"):
        Ensemble([a], voting="mean")
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])
    with pytest.raises(TypeError, match="list"):
        Ensemble(a)  # type: ignore[arg-type]


def test_ensemble_is_a_model_that_attacks_run_on(model, batch):
    x, y = batch
    soft = Ensemble([model, model], voting="soft").eval()
    with torch.no_grad():
        assert torch.equal(soft(x).argmax(1), model(x).argmax(1))
    check_attack(lambda seed: PGD(rl.ThreatModel("linf", 0.1), steps=5, seed=seed), soft, x[:8], y[:8])
    hard = Ensemble([model, model, model], voting="hard")
    res = BPDA(PGD(rl.ThreatModel("linf", 0.3), steps=10, seed=0)).attack(hard, x, y)
    assert res.robust_accuracy <= 0.5
