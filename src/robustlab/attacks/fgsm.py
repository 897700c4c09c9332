"""Fast gradient attacks: one step of steepest ascent of the loss.

FGSM (Goodfellow, Shlens, Szegedy 2015, arXiv:1412.6572, eq. for eta):
``x' = clip(x + eps * sign(grad_x L(f(x), y)))``. With an l2 (or l1) threat model the same step
uses the threat model's unit-norm ascent direction, ``x' = x + eps * g / ||g||_2`` — the
"fast gradient" L2 variant (Goodfellow et al.; Miyato et al. 2016). Targeted: descend the loss of
the target class (Kurakin et al. 2017).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult
from robustlab.attacks.fastpath import FastPath, FastSpec
from robustlab.losses import LossFn, get_loss
from robustlab.threat import ThreatModel
from robustlab.attacks.spelling import spellings


class FGSM(Attack):
    """One gradient step of size ``eps`` along ``threat.ascent(grad)`` (sign for linf, g/||g|| for l2).

    Args:
        threat: the threat model; ``threat.eps`` is the step length.
        loss: ``"ce"`` (default), ``"cw"``, ``"dlr"`` or a callable ``(logits, y, target) -> (N,)``.
        random_start: start from a random point of the ball and step ``step_size`` from there
            (R+FGSM, Tramer et al. 2018); the result is projected back into the ball.
        step_size: step length when ``random_start`` (default ``eps``; formerly ``step``).
        fast: the fast path (:class:`~robustlab.attacks.fastpath.FastPath` or a preset name;
            off by default): the gradient is taken under bf16 autocast / channels_last /
            ``torch.compile``; success is still judged by the model itself.
    """

    @spellings(renamed={"step": "step_size"})
    def __init__(
        self,
        threat: ThreatModel,
        *,
        loss: "str | LossFn" = "ce",
        random_start: bool = False,
        step_size: Optional[float] = None,
        seed: int = 0,
        fast: FastSpec = None,
    ) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        self.threat = threat
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss_fn = get_loss(loss)
        self.random_start = bool(random_start)
        self.step_size = float(check_positive(step_size, "step_size")) if step_size is not None else threat.eps
        self.seed = int(seed)
        self._fast = FastPath.resolve(fast)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        start = self.threat.random_start(x, generator) if self.random_start else x
        _, _, grad = self._gradient(model, start, lambda z: self._loss_fn(z, y, target))
        x_adv = self.threat.project(start + self.step_size * self.threat.ascent(grad, start), x)
        return RawResult(x_adv, torch.ones(x.shape[0], dtype=torch.long, device=x.device))
