"""Operations on a model that every layer needs (no attack, no data): eval mode restored after
use, the model's device, input gradients and Jacobians (one forward, one backward; EOT averaging),
and gradient-free prediction in chunks. Attacks, models, defenses and verify import them from here
(``robustlab.attacks.base`` re-exports them), so ``models/`` does not depend on ``attacks/``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

__all__ = ["eval_mode", "model_device", "input_gradient", "input_jacobian", "predict"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own ``training`` flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def model_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer (``default`` for parameter-free models)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return default


def input_gradient(
    model: nn.Module,
    x: Tensor,
    objective: Callable[[Tensor], Tensor],
    *,
    draws: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(objective values (N,), logits (N, K), d sum(objective) / dx)`` in one forward/backward.

    Gradients are taken with ``torch.autograd.grad`` with respect to ``x`` only, so the model's
    parameters never receive ``.grad``. Samples are independent (the model is in eval mode), so the
    gradient of the sum is the per-sample gradient. With ``draws > 1`` (EOT, Athalye et al. 2018,
    arXiv:1707.07397) the model is evaluated ``draws`` times and values, logits and gradients are
    averaged: ``grad = (1/n) sum_i grad_x L(f_i(x))``, an unbiased estimate of ``grad_x E[L]``.
    """
    x = x.detach().requires_grad_(True)
    values_sum = logits_sum = grad_sum = None
    with torch.enable_grad():
        for _ in range(draws):
            logits = model(x)
            values = objective(logits)
            (grad,) = torch.autograd.grad(values.sum(), x)
            if values_sum is None:
                values_sum, logits_sum, grad_sum = values.detach(), logits.detach(), grad.detach()
            else:
                values_sum = values_sum + values.detach()
                logits_sum = logits_sum + logits.detach()
                grad_sum = grad_sum + grad.detach()
    if draws == 1:
        return values_sum, logits_sum, grad_sum  # type: ignore[return-value]
    return values_sum / draws, logits_sum / draws, grad_sum / draws  # type: ignore[operator,return-value]


def input_jacobian(
    model: nn.Module,
    x: Tensor,
    outputs: Callable[[Tensor], Tensor],
    columns: int,
    *,
    draws: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(outputs (N, M), logits (N, K), J (M, N, *x.shape[1:]))`` for ``M = columns`` outputs,
    with ``J[m, i] = d out[i, m] / d x_i``.

    The batch is repeated M times along the batch dimension, block ``m`` selects output column
    ``m``, and one forward and one ``torch.autograd.grad`` give all M input gradients (samples are
    independent in eval mode); no loop over samples or classes in the backward pass. Memory grows
    with ``M x N``. ``draws > 1`` averages over forward passes of a randomised model (EOT).
    """
    n = x.shape[0]
    out_sum = logits_sum = jac_sum = None
    with torch.enable_grad():
        for _ in range(draws):
            m = int(columns)
            xr = x.detach().repeat(m, *([1] * (x.dim() - 1))).requires_grad_(True)  # (M*N, C, H, W)
            logits_r = model(xr).reshape(m, n, -1)  # (M, N, K)
            sel = torch.stack([outputs(logits_r[j])[:, j] for j in range(m)])  # (M, N)
            (grad,) = torch.autograd.grad(sel.sum(), xr)
            jac = grad.reshape(m, *x.shape)  # (M, N, C, H, W)
            logits = logits_r[0].detach()
            out = outputs(logits)
            if out_sum is None:
                out_sum, logits_sum, jac_sum = out, logits, jac
            else:
                out_sum = out_sum + out
                logits_sum = logits_sum + logits
                jac_sum = jac_sum + jac
    if draws == 1:
        return out_sum, logits_sum, jac_sum  # type: ignore[return-value]
    return out_sum / draws, logits_sum / draws, jac_sum / draws  # type: ignore[operator,return-value]


def predict(model: nn.Module, x: Tensor, batch_size: Optional[int] = None) -> Tensor:
    """Logits without gradient, optionally in chunks of ``batch_size``."""
    with torch.no_grad():
        if batch_size is None or x.shape[0] <= batch_size:
            return model(x)
        return torch.cat([model(c) for c in x.split(batch_size)])
