"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard 2016, arXiv:1511.04599, Algorithms 2 and 3).

At each iteration the classifier is linearised around ``x_i``; for every candidate class ``k``
(the ``candidates`` classes with the highest clean logits other than the label ``y``) with
``w_k = grad (Z_k - Z_y)`` and ``f_k = Z_k - Z_y``, the closest linearised boundary is::

    l = argmin_k |f_k| / ||w_k||_q          (q = 2 for L2, q = 1 for Linf: the dual norm)
    r_i = (|f_l| + 1e-4) / ||w_l||_2^2 * w_l           (L2)
    r_i = (|f_l| + 1e-4) / ||w_l||_1 * sign(w_l)        (Linf)

and ``x_{i+1} = clip(x + (1 + overshoot) sum_j r_j)`` with ``overshoot = 0.02``, until the label
changes. For a linear classifier one step lands at distance ``(1 + overshoot)(|f| + 1e-4)/||w||``
of ``x`` (the exact hyperplane distance, up to the overshoot). The gradients of all candidate
classes come from one forward pass and one ``torch.autograd.grad`` for the whole batch
(:func:`robustlab.attacks.base.input_jacobian`: the batch repeated once per candidate, so memory
grows with candidates x batch size); samples leave the batch once they are misclassified.
Targeted use (``target`` given): the only candidate is the target class.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult, predict, resolve_threat
from robustlab.losses import margin
from robustlab.threat import ThreatModel


class DeepFool(Attack):
    """Multi-class DeepFool for ``l2`` and ``linf``.

    Args:
        threat: ``"l2"`` / ``"linf"`` (unbounded: ``distance`` is the perturbation found) or a
            ThreatModel of those norms (the result is projected into its ball).
        steps: maximum iterations (50).
        overshoot: the final perturbation is ``(1 + overshoot)`` times the accumulated one (0.02).
        candidates: the number of classes considered, counting the label (10, as the paper).
        tol: a sample is done once it is misclassified with a logit gap above ``tol`` (1e-4);
            steps continue from points that sit on the boundary within round-off.
        bounds: the input box when ``threat`` is a norm name.
    """

    minimal = True

    def __init__(
        self,
        threat: "ThreatModel | str" = "l2",
        *,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        tol: float = 1e-4,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self.threat, self.distance_norm, self.bounds = resolve_threat(threat, ("l2", "linf"), bounds, "DeepFool")
        self.steps = int(check_positive(steps, "steps", integer=True))
        self.overshoot = float(check_positive(overshoot, "overshoot", allow_zero=True))
        self.candidates = int(check_positive(candidates, "candidates", integer=True))
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2 (the label and at least one other class), got {candidates}")
        self.tol = float(check_positive(tol, "tol", allow_zero=True))
        self.seed = int(seed)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev = x.shape[0], x.device
        lower, upper = self.box
        logits0 = predict(model, x)
        k = logits0.shape[1]
        if target is None:
            c = min(self.candidates, k) - 1
            others = logits0.masked_fill(torch.nn.functional.one_hot(y, k).bool(), float("-inf"))
            cand = others.topk(c, dim=1).indices  # (N, c) the most likely other classes
        else:
            cand = target[:, None]
        linf = self.norm == "linf"

        out = x.clone()
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        idx = torch.arange(n, device=dev)
        x0, y0, cd, t0 = x, y, cand, target
        r_tot = torch.zeros_like(x)
        xa = x.clone()
        for _ in range(self.steps):
            y_col, cd_col = y0, cd

            def outputs(z: Tensor) -> Tensor:  # f_k = Z_k - Z_y for the candidates, (N, c)
                return z.gather(1, cd_col) - z.gather(1, y_col[:, None])

            f, logits, jac = self._jacobian(model, xa, outputs, cd.shape[1])  # (N, c), (N, K), (c, N, ...)
            # Done once misclassified by a margin above float round-off: a point exactly on the
            # boundary (margin ~1e-6, common once clipping eats the overshoot on MNIST) can flip
            # back when the model is evaluated in a batch of another size.
            gap = -margin(logits, y0) if t0 is None else margin(logits, t0)
            hit = gap > self.tol  # > 0 implies a unique argmax other than y (or = t)
            if bool(hit.any()):
                out[idx[hit]] = xa[hit]
                keep = ~hit
                idx, x0, y0, cd, r_tot, xa, f, jac = idx[keep], x0[keep], y0[keep], cd[keep], r_tot[keep], xa[keep], f[keep], jac[:, keep]
                t0 = None if t0 is None else t0[keep]
                if idx.numel() == 0:
                    break
            w = jac.transpose(0, 1).flatten(2)  # (N, c, D)
            dual = w.abs().sum(2) if linf else w.norm(dim=2)  # (N, c)
            ratio = f.abs() / dual.clamp_min(1e-12)
            ratio = ratio.masked_fill(dual <= 0, float("inf"))  # a class with zero gradient is unreachable
            best = ratio.argmin(dim=1)  # (N,)
            w_l = w.gather(1, best[:, None, None].expand(-1, 1, w.shape[2])).squeeze(1)  # (N, D)
            f_l = f.gather(1, best[:, None]).squeeze(1).abs() + 1e-4
            if linf:
                r = (f_l / w_l.abs().sum(1).clamp_min(1e-12))[:, None] * w_l.sign()
            else:
                r = (f_l / w_l.square().sum(1).clamp_min(1e-12))[:, None] * w_l
            r_tot = r_tot + r.reshape(xa.shape)
            xa = (x0 + (1 + self.overshoot) * r_tot).clamp(lower, upper)
            iterations[idx] += 1
        else:
            # Out of steps: the last iterate (adversarial or not) for the rest.
            out[idx] = xa
        return RawResult(out, iterations)
