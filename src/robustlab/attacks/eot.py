"""Adaptive attacks on randomised and non-differentiable defences (Athalye, Carlini, Wagner 2018,
"Obfuscated Gradients Give a False Sense of Security", arXiv:1802.00420).

**EOT** (Expectation over Transformation, Athalye et al. 2018, arXiv:1707.07397): against a
randomised model ``f(x; r)`` the attacker ascends ``E_r[L(f(x; r))]``, whose gradient is
estimated by ``(1/n) sum_i grad_x L(f(x; r_i))``. ``EOT(attack, n)`` wraps *any* gradient attack:
every gradient (and DeepFool's Jacobian) the attack takes goes through the base class's
``_gradient`` / ``_jacobian`` hooks, which then average ``n`` forward/backward passes (logits and
loss values are averaged too, so early stopping judges the expected prediction). This is the
right place for the average: averaging logits inside a model wrapper would differentiate
``L(E[f])``, not ``E[L(f)]``.

The model's own randomness usually comes from torch's global generator. ``EOT`` runs the inner
attack inside ``torch.random.fork_rng`` seeded from the attack's seed, so the caller's global RNG
state is left untouched and the same seed gives the same result. (The base class's final success
check is one more forward pass outside that scope.)

**BPDA** (Backward Pass Differentiable Approximation, same paper, sec. 4.1):
``BPDAWrapper(preprocess, surrogate)`` is a module whose forward pass applies the
non-differentiable ``preprocess`` (quantisation, JPEG, median filtering, ...) and whose backward
pass uses the vector-Jacobian product of a differentiable ``surrogate`` at the same input
(default: the identity, i.e. the straight-through estimator). Put it in front of the classifier,
``nn.Sequential(BPDAWrapper(squeeze), model)``, and every attack works on the defended model
unchanged.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult, Wrapper


class EOT(Wrapper):
    """``attack`` with every gradient averaged over ``n`` draws of a randomised model.

    Args:
        attack: any robustlab attack that takes gradients (FGSM, PGD, APGD, CW, DeepFool, FMN, ...).
        n: draws per gradient (the cost of each step grows by this factor).
    """

    def __init__(self, attack: Attack, n: int = 10) -> None:
        super().__init__(attack)
        self.n = int(check_positive(n, "n", integer=True))

    @property
    def name(self) -> str:
        return f"EOT[{self.inner.name}]"

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        inner = self.inner._with_draws(self.n * self._eot_draws)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        if x.device.type == "cpu":
            scope = torch.random.fork_rng(devices=[])
        else:
            scope = torch.random.fork_rng(devices=[x.device], device_type=x.device.type)
        with scope:
            torch.manual_seed(seed)
            return inner._run(model, x, y, target, generator)


class _StraightThrough(torch.autograd.Function):
    """forward: ``preprocess(x)``; backward: ``J_surrogate(x)^T grad`` (identity if no surrogate)."""

    @staticmethod
    def forward(ctx, x: Tensor, preprocess: Callable[[Tensor], Tensor], surrogate: Optional[Callable[[Tensor], Tensor]]) -> Tensor:  # type: ignore[override]
        ctx.surrogate = surrogate
        ctx.save_for_backward(x)
        with torch.no_grad():
            return preprocess(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if ctx.surrogate is None:
            return grad_out, None, None
        with torch.enable_grad():
            xs = x.detach().requires_grad_(True)
            out = ctx.surrogate(xs)
            (grad,) = torch.autograd.grad(out, xs, grad_out)
        return grad, None, None


class BPDAWrapper(nn.Module):
    """Apply a non-differentiable ``preprocess`` forward, differentiate a ``surrogate`` backward.

    Args:
        preprocess: a function or module (N, ...) -> (N, ...), e.g. bit-depth reduction.
        surrogate: a differentiable approximation with the same output shape (default identity:
            straight-through, right when ``preprocess(x) ≈ x``).
    """

    def __init__(self, preprocess: Callable[[Tensor], Tensor], surrogate: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        super().__init__()
        if not callable(preprocess):
            raise TypeError(f"preprocess must be callable, got {type(preprocess).__name__}")
        if surrogate is not None and not callable(surrogate):
            raise TypeError(f"surrogate must be callable or None, got {type(surrogate).__name__}")
        self.preprocess = preprocess
        self.surrogate = surrogate

    def forward(self, x: Tensor) -> Tensor:
        return _StraightThrough.apply(x, self.preprocess, self.surrogate)
