"""Ensembles of classifiers as one model: ``Ensemble(models, voting="hard" | "soft")``.

With members ``f_1..f_M`` and ``p_i = softmax(f_i(x))``:

- **soft** voting returns ``log((1/M) sum_i p_i)``: log-probabilities of the mean prediction,
  differentiable, attacked like any model;
- **hard** voting predicts the majority class ``argmax_c v_c`` with ``v_c = #{i : argmax f_i(x) = c}``,
  ties broken by the mean probability. It returns ``log((v + p_bar / 2) / (M + 1/2))`` (a
  log-probability vector whose argmax is that rule; ``p_bar`` is the mean probability, < 1, so it
  never overturns a vote). Vote counts are piecewise constant, so its gradient is only the
  tie-break's: ``.bpda()`` gives the model with the hard forward pass and the soft ensemble's
  gradient (Athalye et al. 2018, arXiv:1802.00420, BPDA), ``.surrogate()`` the soft ensemble.

Members must agree on the number of classes and the input shape: shapes recorded in the members'
metadata (robustlab models) are compared at construction, ``input_shape`` is probed when given,
and class counts are checked on every forward pass.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.base import eval_mode

__all__ = ["Ensemble"]


def _recorded_shape(model: nn.Module) -> tuple[Optional[tuple[int, ...]], Optional[int]]:
    """``((C, H, W) or None, num_classes or None)`` from a robustlab model's metadata."""
    arch = (getattr(model, "metadata", None) or {}).get("architecture") or {}
    shape = None
    if "in_channels" in arch and "input_size" in arch:
        shape = (int(arch["in_channels"]), *[int(s) for s in arch["input_size"]])
    k = arch.get("num_classes")
    return shape, (int(k) if k is not None else None)


class Ensemble(nn.Module):
    """Majority (``"hard"``) or mean-probability (``"soft"``) vote over ``models``.

    Args:
        models: at least one ``nn.Module`` mapping images to logits, same classes and input shape.
        voting: ``"hard"`` or ``"soft"``.
        input_shape: optional (C, H, W); each member is probed with a zero batch of that shape.
    """

    def __init__(self, models: Sequence[nn.Module], voting: str = "soft", *, input_shape: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if isinstance(models, nn.Module) or not isinstance(models, (list, tuple, nn.ModuleList)):
            raise TypeError(f"models must be a list of torch.nn.Module, got {type(models).__name__}")
        if len(models) == 0:
            raise ValueError("models must hold at least one model, got an empty list")
        for i, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{i}] must be a torch.nn.Module, got {type(m).__name__}")
        if voting not in ("hard", "soft"):
            raise ValueError(f"voting must be 'hard' or 'soft', got {voting!r}")
        self.members = nn.ModuleList(models)
        self.voting = voting
        self._check_recorded()
        if input_shape is not None:
            self._probe(tuple(int(s) for s in input_shape))

    def _check_recorded(self) -> None:
        facts = [_recorded_shape(m) for m in self.members]
        for kind, idx in (("input shape", 0), ("number of classes", 1)):
            known = [(i, f[idx]) for i, f in enumerate(facts) if f[idx] is not None]
            if len({v for _, v in known}) > 1:
                detail = ", ".join(f"models[{i}]: {v}" for i, v in known)
                raise ValueError(f"ensemble members disagree on the {kind} ({detail}); expected one for all")

    def _probe(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {shape!r}")
        classes = []
        for i, m in enumerate(self.members):
            dev = next(iter(m.parameters()), torch.empty(0)).device
            try:
                with eval_mode(m), torch.no_grad():
                    out = m(torch.zeros(1, *shape, device=dev))
            except RuntimeError as exc:
                raise ValueError(f"models[{i}] does not accept inputs of shape {shape}: {exc}") from exc
            if out.dim() != 2:
                raise ValueError(f"models[{i}] returned shape {tuple(out.shape)} for input {shape}; expected logits (1, K)")
            classes.append(out.shape[1])
        if len(set(classes)) > 1:
            raise ValueError(f"ensemble members disagree on the number of classes: {classes}")

    def member_logits(self, x: Tensor) -> Tensor:
        """(M, N, K) logits of every member."""
        outs = [m(x) for m in self.members]
        ks = [o.shape[-1] for o in outs]
        if len(set(ks)) > 1:
            raise ValueError(f"ensemble members disagree on the number of classes: {ks}")
        return torch.stack(outs)

    def forward(self, x: Tensor) -> Tensor:
        return _combine(self.member_logits(x), self.voting).to(x.dtype)

    def votes(self, x: Tensor) -> Tensor:
        """(N, K) number of members predicting each class."""
        z = self.member_logits(x)
        return torch.nn.functional.one_hot(z.argmax(dim=-1), z.shape[-1]).sum(dim=0)

    def surrogate(self) -> "Ensemble":
        """The soft-voting ensemble of the same members (a differentiable stand-in)."""
        return self if self.voting == "soft" else Ensemble(list(self.members), voting="soft")

    def bpda(self) -> nn.Module:
        """Forward: this ensemble exactly; backward: the soft ensemble's gradient."""
        return self if self.voting == "soft" else _HardBPDA(self)

    def extra_repr(self) -> str:
        return f"voting={self.voting!r}, members={len(self.members)}"


def _combine(z: Tensor, voting: str) -> Tensor:
    """(M, N, K) member logits -> (N, K) ensemble log-probabilities (see the module docstring)."""
    mean = torch.softmax(z.float(), dim=-1).mean(dim=0)  # (N, K)
    if voting == "soft":
        return mean.clamp_min(1e-30).log()
    m, k = z.shape[0], z.shape[-1]
    votes = torch.nn.functional.one_hot(z.argmax(dim=-1), k).sum(dim=0).to(mean.dtype)  # (N, K)
    return ((votes + 0.5 * mean) / (m + 0.5)).clamp_min(1e-30).log()


class _HardBPDA(nn.Module):
    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: Tensor) -> Tensor:
        z = self.ensemble.member_logits(x)  # (M, N, K)
        hard, soft = _combine(z, "hard"), _combine(z, "soft")
        return (soft + (hard - soft).detach()).to(x.dtype)  # value of `hard`, gradient of `soft`
