"""Adversaries for the one training loop: each turns a clean batch into a training loss.

All share the :class:`~robustlab.training.base.Adversary` contract
``loss(model, x, y, *, generator, eps_scale) -> scalar``: the loop calls it with the model in
train mode; adversarial points are crafted with the model in eval mode (BatchNorm statistics are
not updated by adversarial crafting, dropout is off; TRADES' reference code does the same) and
treated as constants, then the loss is computed in train mode. ``eps_scale`` in [0, 1] is the
linear eps warm-up factor the loop passes.

The crafting adversaries (FGSM-RS, PGD, TRADES, MART) take ``fast=`` (a
:class:`~robustlab.attacks.fastpath.FastPath` or a preset name such as ``"bf16"``; off by
default): the inner maximisation then runs under bf16 autocast / channels_last / ``torch.compile``.
It has no early stop, hence no host synchronisation in its step loop either way; the training
loss itself is computed by the model as the loop runs it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import eval_mode, input_gradient
from robustlab.attacks.fastpath import FastPath, FastSpec
from robustlab.training.base import Adversary
from robustlab.threat import ThreatModel


def _threat(tm: object) -> ThreatModel:
    if not isinstance(tm, ThreatModel):
        raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(tm).__name__}")
    if tm.norm == "l0":
        raise ValueError("adversarial training supports the linf, l2 and l1 threat models, got norm 'l0'")
    return tm


def _check_step(tm: ThreatModel, step: float, name: str) -> float:
    """A linf step of more than twice eps jumps across the whole ball: refuse it (l2 / l1 steps
    are projected back onto the sphere and may be large)."""
    if tm.norm == "linf" and step > 2 * tm.eps > 0:
        raise ValueError(f"{name}={step} is more than twice eps={tm.eps}: every step would jump across the whole "
                         f"linf ball; expected {name} <= 2 * eps")
    return step


def _with_fast(config: dict, fast: Optional[FastPath]) -> dict:
    """``config`` plus the fast-path settings when they are on (absent otherwise)."""
    if fast is not None:
        config["fast"] = fast.to_dict()
    return config


def _scaled(tm: ThreatModel, eps_scale: float) -> ThreatModel:
    return tm if eps_scale >= 1.0 else tm.with_eps(tm.eps * max(0.0, float(eps_scale)))


def pgd_ascent(
    model: nn.Module,
    objective,
    x: Tensor,
    tm: ThreatModel,
    steps: int,
    step_size: float,
    start: Tensor,
    fast: Optional[FastPath] = None,
) -> Tensor:
    """``steps`` projected steepest-ascent steps of ``objective(logits) -> (N,)`` from ``start``,
    with no early stop (training wants the high-loss point, Madry et al. 2018). Eval mode;
    gradients through the fast path when ``fast`` is given."""
    xa = start.detach()
    with eval_mode(model):
        search = fast.wrap(model) if fast is not None else model
        for _ in range(steps):
            _, _, grad = input_gradient(search, xa, objective)
            xa = tm.project(xa + step_size * tm.ascent(grad, xa), x)
    return xa.detach()


class FGSMRegularized(Adversary):
    """Goodfellow, Shlens, Szegedy 2015 (arXiv:1412.6572, Sec. 5): the adversarial objective
    ``J~(x) = alpha J(x) + (1 - alpha) J(x + eps sign(grad_x J(x)))``, alpha = 0.5 in the paper.

    The input gradient comes from the same forward pass as the clean loss (train mode), so the
    regulariser costs one extra forward and backward.
    """

    name = "fgsm-reg"

    def __init__(self, threat: ThreatModel, alpha: float = 0.5) -> None:
        self.threat = _threat(threat)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        tm = _scaled(self.threat, eps_scale)
        xg = x.detach().requires_grad_(True)
        clean = F.cross_entropy(model(xg), y)
        (g,) = torch.autograd.grad(clean, xg, retain_graph=True)
        x_adv = tm.project(x + tm.eps * tm.ascent(g.detach(), x), x).detach()
        return self.alpha * clean + (1.0 - self.alpha) * F.cross_entropy(model(x_adv), y)

    def config(self) -> dict:
        return {"name": self.name, "threat": self.threat.to_dict(), "alpha": self.alpha}


class FGSMRS(Adversary):
    """FGSM from a random start (Wong, Rice, Kolter 2020, "Fast is better than free",
    arXiv:2001.03994, Alg. 3): ``delta ~ U(B_eps)``, ``delta <- Proj(delta + step * sign(grad))``,
    train on ``x + delta``. The paper's step is ``1.25 eps``.

    Catastrophic overfitting (PGD robust accuracy collapsing while FGSM accuracy soars) is
    detected by the training loop's robust validation hook (:func:`robust_validation`).
    """

    name = "fgsm-rs"

    def __init__(self, threat: ThreatModel, step: Optional[float] = None, *, fast: FastSpec = None) -> None:
        self.threat = _threat(threat)
        self.step = float(check_positive(step, "step")) if step is not None else 1.25 * self.threat.eps
        _check_step(self.threat, self.step, "step")
        self.fast = FastPath.resolve(fast)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        tm = _scaled(self.threat, eps_scale)
        step = self.step * min(1.0, max(0.0, float(eps_scale)))
        start = tm.random_start(x, generator)
        x_adv = pgd_ascent(model, lambda z: F.cross_entropy(z, y, reduction="none"), x, tm, 1, step, start, self.fast)
        return F.cross_entropy(model(x_adv), y)

    def config(self) -> dict:
        return _with_fast({"name": self.name, "threat": self.threat.to_dict(), "step": self.step}, self.fast)


class PGDAdversary(Adversary):
    """Madry et al. 2018 (arXiv:1706.06083, eq. 2.1): ``min_theta E max_{delta in B} L(f(x + delta), y)``,
    the inner max by ``steps`` of PGD from a random start with step ``step_size``
    (default ``2.5 eps / steps``)."""

    name = "pgd"

    def __init__(self, threat: ThreatModel, steps: int = 10, step_size: Optional[float] = None, random_start: bool = True,
                 *, fast: FastSpec = None) -> None:
        self.threat = _threat(threat)
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.step_size = float(check_positive(step_size, "step_size")) if step_size is not None else 2.5 * self.threat.eps / self.steps
        _check_step(self.threat, self.step_size, "step_size")
        self.random_start = bool(random_start)
        self.fast = FastPath.resolve(fast)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        tm = _scaled(self.threat, eps_scale)
        start = tm.random_start(x, generator) if self.random_start else x
        step = self.step_size * min(1.0, max(0.0, float(eps_scale)))
        return pgd_ascent(model, lambda z: F.cross_entropy(z, y, reduction="none"), x, tm, self.steps, step, start,
                          self.fast)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return F.cross_entropy(model(self.perturb(model, x, y, generator, eps_scale)), y)

    def config(self) -> dict:
        return _with_fast({"name": self.name, "threat": self.threat.to_dict(), "steps": self.steps,
                           "step_size": self.step_size, "random_start": self.random_start}, self.fast)


def _kl_rows(log_p_adv: Tensor, p_clean: Tensor) -> Tensor:
    """``KL(p_clean || p_adv)`` per sample from log-probabilities of the adversarial point."""
    return (p_clean * (p_clean.clamp_min(1e-12).log() - log_p_adv)).sum(dim=1)


class TRADES(Adversary):
    """Zhang et al. 2019 (arXiv:1901.08573, eq. 5): ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` with
    ``x' = argmax_{x' in B(x)} KL(f(x) || f(x'))`` found by PGD from ``x + 0.001 N(0, I)``.
    beta = 6 in the paper (1/lambda)."""

    name = "trades"

    def __init__(self, threat: ThreatModel, beta: float = 6.0, steps: int = 10, step_size: Optional[float] = None,
                 *, fast: FastSpec = None) -> None:
        self.threat = _threat(threat)
        self.beta = float(check_positive(beta, "beta", allow_zero=True))
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.step_size = float(check_positive(step_size, "step_size")) if step_size is not None else 2.5 * self.threat.eps / self.steps
        _check_step(self.threat, self.step_size, "step_size")
        self.fast = FastPath.resolve(fast)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        tm = _scaled(self.threat, eps_scale)
        with eval_mode(model), torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        start = tm.project(x + noise, x)
        step = self.step_size * min(1.0, max(0.0, float(eps_scale)))
        x_adv = pgd_ascent(model, lambda z: _kl_rows(F.log_softmax(z, dim=1), p_clean), x, tm, self.steps, step, start,
                           self.fast)
        logits = model(x)
        robust = _kl_rows(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1)).mean()
        return F.cross_entropy(logits, y) + self.beta * robust

    def config(self) -> dict:
        return _with_fast({"name": self.name, "threat": self.threat.to_dict(), "beta": self.beta, "steps": self.steps,
                           "step_size": self.step_size}, self.fast)


class MART(Adversary):
    """Misclassification-aware adversarial training (Wang et al. 2020, ICLR, eq. 9):
    ``BCE(p(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x))`` with
    ``BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k)`` and ``x'`` from PGD on the cross-entropy.
    beta = 6 in the paper."""

    name = "mart"

    def __init__(self, threat: ThreatModel, beta: float = 6.0, steps: int = 10, step_size: Optional[float] = None,
                 *, fast: FastSpec = None) -> None:
        self.threat = _threat(threat)
        self.beta = float(check_positive(beta, "beta", allow_zero=True))
        self._pgd = PGDAdversary(threat, steps, step_size, fast=fast)
        self.fast = self._pgd.fast
        self.steps, self.step_size = self._pgd.steps, self._pgd.step_size

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        x_adv = self._pgd.perturb(model, x, y, generator, eps_scale)
        logits_adv, logits = model(x_adv), model(x)
        p_adv, p = F.softmax(logits_adv, dim=1), F.softmax(logits, dim=1)
        onehot = F.one_hot(y, p.shape[1]).bool()
        best_other = p_adv.masked_fill(onehot, 0.0).amax(dim=1)
        bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log((1.0 - best_other).clamp_min(1e-12))
        p_true = p.gather(1, y[:, None]).squeeze(1)
        kl = _kl_rows(F.log_softmax(logits_adv, dim=1), p)
        return (bce + self.beta * kl * (1.0 - p_true)).mean()

    def config(self) -> dict:
        return _with_fast({"name": self.name, "threat": self.threat.to_dict(), "beta": self.beta, "steps": self.steps,
                           "step_size": self.step_size}, self.fast)


def robust_validation(threat: ThreatModel, *, n: int = 500, steps: int = 10, restarts: int = 1,
                      collapse: float = 0.2, seed: int = 0):
    """An ``evaluate_fn`` for :func:`robustlab.training.train`: PGD robust accuracy on the first
    ``n`` validation images after every epoch, used to keep the most robust epoch. It also detects
    catastrophic overfitting (Wong et al. 2020, Sec. 5.1): when the PGD robust accuracy falls more
    than ``collapse`` below the best seen so far, it asks the loop to stop (the best epoch is kept)."""
    from robustlab.attacks.pgd import PGD
    from robustlab.attacks.base import model_device
    from robustlab.models.metrics import as_tensors

    attack = PGD(_threat(threat), steps=steps, restarts=restarts, seed=seed)
    best = {"value": -1.0}

    def evaluate(model: nn.Module, val_data) -> dict:
        if val_data is None:
            raise ValueError("robust_validation needs val_data in train()")
        x, y = as_tensors(val_data)
        dev = model_device(model, x.device)
        res = attack.attack(model, x[:n].to(dev), y[:n].to(dev))
        acc = res.robust_accuracy
        out = {"robust_accuracy": acc}
        if best["value"] - acc > collapse:
            out.update(stop=True, reason=f"PGD robust accuracy fell from {best['value']:.3f} to {acc:.3f} "
                                         "(catastrophic overfitting)")
        best["value"] = max(best["value"], acc)
        return out

    evaluate.config = {"name": "robust_validation", "attack": "PGD", "threat": threat.to_dict(), "n": n,  # type: ignore[attr-defined]
                       "steps": steps, "restarts": restarts, "collapse": collapse, "seed": seed}
    return evaluate
