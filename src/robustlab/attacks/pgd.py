"""Projected gradient descent on the negative loss (Madry et al. 2018, arXiv:1706.06083, eq. 2).

``x^{t+1} = Proj_{B(x)}(x^t + alpha * d(grad_x L(f(x^t), y)))`` with ``d`` the threat model's
steepest-ascent direction: ``sign`` for linf, ``g / ||g||_2`` for l2, and for l1 the sparse signed
direction of SLIDE (Tramer & Boneh 2019, arXiv:1904.13000) with the exact projection onto
the l1 ball ∩ box. Random start inside the ball, restarts, targeted or untargeted.

Compute is spent only where it is still needed: a sample leaves the working batch at the first
iterate that is adversarial (per-sample early stop), and restarts run only on samples that are
still robust (as AutoAttack does).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult, predict
from robustlab.attacks.fastpath import FastPath, FastSpec, SettledStop, exact_model
from robustlab.losses import LossFn, get_loss, is_adversarial
from robustlab.threat import ThreatModel
from robustlab.attacks.spelling import spellings


class PGD(Attack):
    """PGD with random start and restarts.

    Args:
        threat: the threat model (any norm).
        steps: iterations per restart (>= 1).
        step_size: absolute step ``alpha`` (default ``2.5 * eps / steps``, Madry et al.).
        restarts: random restarts; each runs only on samples not yet broken.
        random_start: start uniformly in the ball (otherwise at ``x``: BIM, Kurakin et al. 2017).
        loss: ``"ce"``, ``"cw"``, ``"dlr"`` or a callable ``(logits, y, target) -> (N,)`` to maximise.
        early_stop: stop per sample at the first adversarial iterate (False: run all steps and
            return the last iterate, e.g. for high-confidence transfer examples).
        sparsity: for l1, the fraction of gradient coordinates left out of each step.
        seed: seed of the random starts.
        fast: the fast path (:class:`~robustlab.attacks.fastpath.FastPath` or a preset name such
            as ``"bf16"``; off by default): bf16 autocast, channels_last, ``torch.compile`` and
            success checked on the host every ``check_every`` steps, each early stop confirmed
            by the model in its own precision.
    """

    @spellings(positional=("steps", "step_size"))
    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 40,
        step_size: Optional[float] = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: "str | LossFn" = "ce",
        early_stop: bool = True,
        sparsity: float = 0.99,
        seed: int = 0,
        fast: FastSpec = None,
    ) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        self.threat = threat
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.restarts = int(check_positive(restarts, "restarts", integer=True))
        if step_size is None:
            step_size = 2.5 * threat.eps / self.steps if threat.norm != "l0" else 1.0
        self.step_size = float(check_positive(step_size, "step_size", allow_zero=threat.eps == 0))
        self.random_start = bool(random_start)
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss_fn = get_loss(loss)
        self.early_stop = bool(early_stop)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        self.sparsity = float(sparsity)
        self.seed = int(seed)
        self._fast = FastPath.resolve(fast)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        tm = self.threat
        n = x.shape[0]
        out = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        remaining = torch.arange(n, device=x.device)
        every = self._fast.check_every if self._fast is not None else 1
        exact = exact_model(model)
        for restart in range(self.restarts):
            idx = remaining
            x0, y0 = x[idx], y[idx]
            t0 = None if target is None else target[idx]
            xa = tm.random_start(x0, generator) if self.random_start else x0.clone()
            stop = SettledStop(xa, every, exact) if self.early_stop else None
            for step in range(self.steps):
                _, logits, grad = self._gradient(model, xa, lambda z: self._loss_fn(z, y0, t0))
                if stop is not None:
                    stop.observe(is_adversarial(logits, y0, t0), xa)
                    done = stop.settle(y0, t0) if stop.due(step) else None
                    if done is not None:  # retire the adversarial samples (one host sync per window)
                        out[idx[done]] = stop.first[done]
                        keep = ~done
                        idx, xa, x0, y0, grad = idx[keep], xa[keep], x0[keep], y0[keep], grad[keep]
                        t0 = None if t0 is None else t0[keep]
                        stop.compact(keep)
                        if idx.numel() == 0:
                            break
                xa = tm.project(xa + self.step_size * tm.ascent(grad, xa, sparsity=self.sparsity), x0)
                iterations[idx] += 1 if stop is None else stop.running
            if stop is not None and not stop.plain and idx.numel():
                done = stop.settle(y0, t0)  # hits of an unfinished window
                if done is not None:
                    out[idx[done]] = stop.first[done]
                    idx, xa, x0, y0 = idx[~done], xa[~done], x0[~done], y0[~done]
                    t0 = None if t0 is None else t0[~done]
            if idx.numel() == 0:
                remaining = idx
                break
            out[idx] = xa  # last iterate for the rest: adversarial or the final point of this restart
            if restart == self.restarts - 1:
                break  # no restart follows: the base class judges success (one forward pass fewer)
            hit = is_adversarial(predict(exact if exact is not None else model, xa), y0, t0)
            remaining = idx[~hit]
            if remaining.numel() == 0:
                break
        return RawResult(out, iterations)


class BIM(PGD):
    """Basic Iterative Method (Kurakin, Goodfellow, Bengio 2017, arXiv:1607.02533): PGD from ``x``
    with no random start, step ``alpha = eps / steps`` unless given."""

    @spellings(positional=("steps", "step_size"))
    def __init__(self, threat: ThreatModel, *, steps: int = 10, step_size: Optional[float] = None, **kwargs) -> None:
        kwargs.setdefault("random_start", False)
        if step_size is None:
            step_size = threat.eps / max(int(steps), 1) if threat.eps > 0 else 0.0
        super().__init__(threat, steps=steps, step_size=step_size, **kwargs)
