"""Radial-basis-function output layers (Goodfellow, Shlens, Szegedy 2015, arXiv:1412.6572, Sec. 7).

The paper's shallow RBF network models each class with ``p(y = i | x) = exp((x - mu_i)^T beta
(x - mu_i))``, ``beta`` negative definite; with ``beta = -gamma I`` this is
``p_i(x) = exp(-gamma ||x - w_i||^2)``. Unlike a linear layer, whose logits grow without bound
along any direction, every ``p_i`` decays to 0 away from its centre: an RBF network cannot be
confident far from the data (it is fooled by FGSM at eps 0.25 in 55.4% of cases but with 1.2%
mean confidence on the mistakes, and classifies Gaussian-noise images as digits with p > 0.5 in 0%
of cases, against 98.35% for a maxout network, paper Sec. 7 and App. A).

:class:`RBFHead` returns ``z_i = -gamma ||x - w_i||^2 = log p_i(x)`` as logits (N, K), so the
usual softmax cross-entropy trains it and every attack and metric works on it unchanged;
:func:`rbf_confidence` gives the paper's per-class probabilities ``exp(z_i)`` (not normalised
over classes: all can be near 0 at once). :func:`rbf_nll` is the likelihood of that per-class
model (train with it to get the paper's calibrated confidences; softmax cross-entropy only
orders the classes and leaves ``exp(z)`` tiny). :func:`with_rbf_head` swaps a model's last
``nn.Linear`` for an RBF head.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive

__all__ = ["RBFHead", "rbf_confidence", "rbf_nll", "with_rbf_head"]


class RBFHead(nn.Module):
    """``z_i(x) = -gamma ||x - w_i||^2`` for K learned centres ``w_i`` (K, features).

    Args:
        features: input width D.
        classes: K >= 2.
        gamma: the RBF precision (> 0); a learned parameter (kept positive through its log)
            when ``learn_gamma``.
        generator: draws the initial centres ``N(0, 1/D)`` (default: the global RNG, as ``nn.Linear``).
    """

    def __init__(self, features: int, classes: int, gamma: float = 1.0, *, learn_gamma: bool = False,
                 generator: "torch.Generator | None" = None) -> None:
        super().__init__()
        features = int(check_positive(features, "features", integer=True))
        classes = int(check_positive(classes, "classes", integer=True))
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        gamma = float(check_positive(gamma, "gamma"))
        self.in_features, self.out_features = features, classes
        self.centers = nn.Parameter(torch.randn(classes, features, generator=generator) / features**0.5)  # (K, D)
        log_gamma = torch.tensor(gamma).log()
        if learn_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @property
    def gamma(self) -> Tensor:
        return self.log_gamma.exp()

    def extra_repr(self) -> str:
        return f"features={self.in_features}, classes={self.out_features}, gamma={float(self.gamma):.4g}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"RBFHead expects (N, {self.in_features}) features, got shape {tuple(x.shape)}")
        w = self.centers.to(x.dtype)
        # ||x - w||^2 = ||x||^2 - 2 x.w + ||w||^2, batched; clamp the rounding below 0
        d2 = (x.square().sum(1, keepdim=True) - 2 * x @ w.t() + w.square().sum(1)).clamp_min(0)  # (N, K)
        return -self.gamma.to(x.dtype) * d2


def rbf_confidence(logits: Tensor) -> Tensor:
    """The paper's per-class probabilities ``p_i = exp(z_i)`` in (0, 1] from :class:`RBFHead` logits."""
    return logits.exp()


def rbf_nll(logits: Tensor, y: Tensor) -> Tensor:
    """Mean negative log-likelihood of independent per-class Bernoullis ``p_i = exp(z_i)``:
    ``-log p_y - sum_{i != y} log(1 - p_i)`` (the paper's RBF model read as K one-vs-rest
    probabilities); ``log(1 - e^z)`` is computed as ``log(-expm1(z))`` with ``z <= -1e-6``."""
    z = logits.clamp_max(-1e-6)
    log_not = torch.log(-torch.expm1(z))  # (N, K): log(1 - p_i)
    own = torch.nn.functional.one_hot(y, z.shape[1]).to(torch.bool)
    return -(torch.where(own, z, log_not).sum(dim=1)).mean()


def with_rbf_head(model: nn.Module, gamma: float = 1.0, *, learn_gamma: bool = False,
                  seed: "int | None" = None) -> nn.Module:
    """A deep copy of ``model`` whose last ``nn.Linear`` (in registration order) is replaced by an
    :class:`RBFHead` of the same width (fresh centres, drawn with ``seed`` when given); ``model`` itself is not changed. Works for
    every robustlab architecture (their last Linear layer produces the logits)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    new = copy.deepcopy(model)
    last = None
    for name, module in new.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to replace")
    parent_name, _, child = last.rpartition(".")
    parent = new.get_submodule(parent_name) if parent_name else new
    old = getattr(parent, child)
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    head = RBFHead(old.in_features, old.out_features, gamma, learn_gamma=learn_gamma, generator=gen)
    head.to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, child, head)
    return new
