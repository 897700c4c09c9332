"""Square attack: score-based random search (Andriushchenko, Croce, Flammarion, Hein 2020,
arXiv:1912.00049).

Random search on the margin loss ``L(x') = z_y(x') - max_{j != y} z_j(x')`` (targeted:
``max_{j != t} z_j - z_t``), minimised; a sample is done as soon as its iterate is adversarial.
Each iteration proposes a change on one square window of side ``s`` and keeps it iff it lowers the
loss; only scores are observed, through :class:`robustlab.attacks.queries.ScoreOracle`.

* **linf** (Alg. 2 of the paper): start from vertical stripes ``x + eps * sign`` (one random sign
  per column and channel); a proposal sets the whole window to ``x + eps * sign`` with one random
  sign per channel (redrawn when it would not change the window), then projects onto the ball ∩ box.
* **l2** (Alg. 3): start from a grid of ``h // 5``-sized blocks, each filled with the
  pseudo-Gaussian pattern ``eta`` (nested squares weighted ``1/(k+1)^2``, two halves of opposite
  sign, randomly transposed) and a random sign per channel, rescaled to norm ``eps``. A proposal
  picks two windows W1, W2: the mass of the perturbation on W1 ∪ W2 is moved into W1 as
  ``eta * sign + delta_W1 / ||delta_W1||``, rescaled so the whole perturbation keeps (up to)
  norm eps, W2 is zeroed, and the result is renormalised to ``eps`` and clipped to the box.

The window side is ``s = round(sqrt(p * h * w))``, where the fraction ``p`` follows a piecewise
constant schedule: ``p = p_init / 2^k`` with ``k`` the number of thresholds of
``(10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)`` that the schedule iteration ``t`` exceeds
(``t <= 10``: ``p_init``; ``10 < t <= 50``: ``p_init / 2``; ...; ``t > 8000``: ``p_init / 512``). Two
readings of ``t`` at iteration ``i`` of a budget of ``Q`` queries (option ``schedule``):

* ``"rescaled"``: ``t = floor(i * 10000 / Q)``, the thresholds stretched to the budget, as in the
  paper's code (written for 10,000 queries) and AutoAttack's ``SquareAttack(resc_schedule=True)``
  default: every budget goes through all nine halvings;
* ``"absolute"``: ``t = i``, the thresholds at fixed iterations, as AutoAttack's ``standard`` runs
  it (``resc_schedule=False``, 5,000 queries: halvings up to ``p_init / 128``); a budget of 1,000
  stops at ``p_init / 16``, so the windows stay larger (fewer, coarser moves late in the search).

Every image draws its own windows; one batched forward pass per iteration serves all images still
robust. The budget counts every model evaluation, the initial one included (as in the paper).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_probability
from robustlab.attacks.base import Attack, RawResult
from robustlab.attacks.queries import ScoreOracle, check_budget
from robustlab.losses import is_adversarial, margin
from robustlab.threat import ThreatModel
from robustlab.attacks.spelling import spellings

#: Iterations (of 10,000) after which ``p`` halves (Andriushchenko et al. 2020, Sec. 3 / App. B).
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: How iterations map onto :data:`P_SCHEDULE`: stretched to the budget, or as they are.
SCHEDULES = ("rescaled", "absolute")


def square_p(iteration: int, total: int, p_init: float, schedule: str = "rescaled") -> float:
    """The fraction of pixels ``p`` changed at ``iteration`` of ``total``: ``"rescaled"`` reads the
    thresholds at ``iteration * 10000 / total`` (the paper's code), ``"absolute"`` at ``iteration``
    (AutoAttack's ``standard``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    it = int(iteration / max(total, 1) * 10000) if schedule == "rescaled" else int(iteration)
    for k, bound in enumerate(P_SCHEDULE):
        if it <= bound:
            return p_init / 2**k
    return p_init / 2 ** len(P_SCHEDULE)


def margin_loss(scores: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Loss to minimise: ``z_y - max_{j != y} z_j`` (targeted ``max_{j != t} z_j - z_t``)."""
    return margin(scores, y) if target is None else -margin(scores, target)


def pseudo_gaussian(s: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The paper's window pattern ``eta`` (s, s), unit L2 norm: two stacked halves (rows
    ``[0, s//2)`` positive, ``[s//2, s)`` negative), each the sum of nested squares around its centre
    with weights ``1/(k+1)^2``: ``eta(i, j) = sum_{k >= d(i, j)} 1/(k+1)^2``, ``d`` the Chebyshev
    distance to the centre."""

    def half(a: int, b: int) -> Tensor:
        if a == 0:
            return torch.zeros(0, b, dtype=dtype, device=device)
        levels = max(a // 2, b // 2) + 1
        w = 1.0 / torch.arange(1, levels + 1, dtype=dtype, device=device).square()  # (levels,)
        tail = w.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} w_k
        i = (torch.arange(a, device=device) - a // 2).abs()
        j = (torch.arange(b, device=device) - b // 2).abs()
        d = torch.maximum(i[:, None], j[None, :])  # (a, b)
        out = tail[d]
        return out / out.norm()

    eta = torch.cat([half(s // 2, s), -half(s - s // 2, s)], dim=0)  # (s, s)
    return eta / eta.norm()


def _window_masks(r: Tensor, q: Tensor, s: int, h: int, w: int) -> Tensor:
    """Bool (m, 1, h, w): the s x s window with top-left corner (r, q) for each of m images."""
    rows = torch.arange(h, device=r.device)
    cols = torch.arange(w, device=r.device)
    in_r = (rows >= r[:, None]) & (rows < r[:, None] + s)  # (m, h)
    in_c = (cols >= q[:, None]) & (cols < q[:, None] + s)  # (m, w)
    return (in_r[:, :, None] & in_c[:, None, :]).unsqueeze(1)


def _window_index(r: Tensor, q: Tensor, s: int) -> tuple[Tensor, Tensor, Tensor]:
    """Advanced indices selecting each image's window: ``t[i, :, rows, cols]`` -> (m, s, s, C)."""
    m = r.shape[0]
    ar = torch.arange(m, device=r.device)[:, None, None]  # (m, 1, 1)
    rows = (r[:, None] + torch.arange(s, device=r.device))[:, :, None]  # (m, s, 1)
    cols = (q[:, None] + torch.arange(s, device=r.device))[:, None, :]  # (m, 1, s)
    return ar, rows, cols


def _random_signs(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


class Square(Attack):
    """Square attack, linf or l2, with a per-sample query budget.

    Args:
        threat: ``ThreatModel("linf", eps)`` or ``ThreatModel("l2", eps)``.
        queries: model evaluations per sample (>= 1), the initial one included (paper: 10,000;
            AutoAttack's ``standard``: 5,000).
        p_init: initial fraction of pixels per window, in (0, 1) (default 0.8 as AutoAttack; the
            paper uses 0.05 for linf on ImageNet, 0.1 for l2).
        schedule: how ``p`` decays with the iteration ``i`` of the budget ``Q``: ``p = p_init /
            2^k``, ``k = #{b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000) : t > b}``, with
            ``t = floor(i * 10000 / Q)`` for ``"rescaled"`` (default: the paper's code, all nine
            halvings within any budget) or ``t = i`` for ``"absolute"`` (AutoAttack's ``standard``,
            ``resc_schedule=False``: at 1,000 queries ``p`` ends at ``p_init / 16``, at 5,000 at
            ``p_init / 128``).
        output: what the attacker observes: ``"logits"`` or softmax ``"probs"``.
        seed: seed of the random search.
    """

    query_based = True

    @spellings(positional=("queries",))
    def __init__(self, threat: ThreatModel, *, queries: int = 5000, p_init: float = 0.8,
                 schedule: str = "rescaled", output: str = "logits", seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in ("linf", "l2"):
            raise ValueError(f"Square supports the norms linf and l2, got {threat.norm!r}")
        self.threat = threat
        self.queries = check_budget(queries, "queries")
        self.p_init = check_probability(p_init, "p_init")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.schedule = schedule
        if output not in ("logits", "probs"):
            raise ValueError(f"output must be 'logits' or 'probs', got {output!r}")
        self.output = output
        self.seed = int(seed)

    # -- proposals ------------------------------------------------------------------------------
    def _init(self, x: Tensor, g: torch.Generator) -> Tensor:
        tm = self.threat
        n, c, h, w = x.shape
        if tm.norm == "linf":
            stripes = tm.eps * _random_signs((n, c, 1, w), g, x)  # one sign per column and channel
            return (x + stripes).clamp(*tm.box)
        s = max(h // 5, 1)
        start_h, start_w = (h - 5 * s) // 2 if h >= 5 * s else 0, (w - 5 * s) // 2 if w >= 5 * s else 0
        nb_h, nb_w = (h - start_h) // s, (w - start_w) // s
        eta = pseudo_gaussian(s, dtype=x.dtype, device=x.device)  # (s, s)
        flip = torch.rand((n, 1, nb_h, nb_w), generator=g, device=x.device, dtype=x.dtype) < 0.5
        signs = _random_signs((n, c, nb_h, nb_w), g, x)
        # (n, c, nb_h, nb_w, s, s): a pattern per block, randomly transposed, signed per channel.
        blocks = torch.where(flip[..., None, None], eta.T, eta) * signs[..., None, None]
        tile = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, nb_h * s, nb_w * s)
        delta = torch.zeros_like(x)
        delta[:, :, start_h : start_h + nb_h * s, start_w : start_w + nb_w * s] = tile
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(n, 1, 1, 1) * tm.eps
        return (x + delta).clamp(*tm.box)

    def _propose_linf(self, x: Tensor, xb: Tensor, p: float, g: torch.Generator,
                      lo: Optional[Tensor] = None, hi: Optional[Tensor] = None) -> Tensor:
        """Candidates for the images ``x`` at their iterates ``xb``; ``lo``/``hi`` (optional) are
        the precomputed ball-and-box bounds ``clamp(x -+ eps)``."""
        tm = self.threat
        m, c, h, w = x.shape
        s = max(min(int(round(math.sqrt(p * h * w))), h - 1, w - 1), 1)
        r = torch.randint(0, h - s + 1, (m,), generator=g, device=x.device)
        q = torch.randint(0, w - s + 1, (m,), generator=g, device=x.device)
        mask = _window_masks(r, q, s, h, w)  # (m, 1, h, w)
        if lo is None or hi is None:
            lo, hi = torch.clamp(x - tm.eps, min=tm.lower), torch.clamp(x + tm.eps, max=tm.upper)
        signs = _random_signs((m, c, 1, 1), g, x)
        cand = torch.where(mask, (x + tm.eps * signs).clamp(lo, hi), xb)
        # The paper resamples the signs while the window would not change. For eps > 0 every other
        # sign vector changes it (x + eps and x - eps never clip to the same value), so one draw
        # uniform over the other 2^c - 1 sign vectors (a non-zero flip pattern) is the same law.
        same = ((cand - xb).abs() < 1e-7).flatten(1).all(dim=1)  # (m,)
        if tm.eps > 0 and bool(same.any()):
            if c <= 16:
                code = torch.randint(1, 2**c, (m, 1), generator=g, device=x.device)
                bits = (code >> torch.arange(c, device=x.device)) & 1  # (m, c), not all zero
            else:
                bits = torch.nn.functional.one_hot(torch.randint(0, c, (m,), generator=g, device=x.device), c)
            flip = (1 - 2 * bits).to(x.dtype)[:, :, None, None]
            signs = torch.where(same[:, None, None, None], signs * flip, signs)
            cand = torch.where(mask, (x + tm.eps * signs).clamp(lo, hi), xb)
        return cand

    def _propose_l2(self, x: Tensor, xb: Tensor, p: float, g: torch.Generator,
                    lo: Optional[Tensor] = None, hi: Optional[Tensor] = None) -> Tensor:
        tm = self.threat
        m, c, h, w = x.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s += 1 - s % 2  # odd side
        s = max(min(s, h - 1, w - 1), 1)
        dev = x.device
        r1, q1 = (torch.randint(0, h - s + 1, (m,), generator=g, device=dev),
                  torch.randint(0, w - s + 1, (m,), generator=g, device=dev))
        r2, q2 = (torch.randint(0, h - s + 1, (m,), generator=g, device=dev),
                  torch.randint(0, w - s + 1, (m,), generator=g, device=dev))
        w1, w2 = _window_masks(r1, q1, s, h, w), _window_masks(r2, q2, s, h, w)  # (m, 1, h, w)
        delta = xb - x
        norm_img = delta.flatten(1).norm(dim=1).reshape(m, 1, 1, 1)
        norm_w1 = (delta * w1).square().sum(dim=(2, 3), keepdim=True).sqrt()  # (m, c, 1, 1)
        norm_w12 = (delta * (w1 | w2)).square().sum(dim=(2, 3), keepdim=True).sqrt()
        ar, rows, cols = _window_index(r1, q1, s)
        old = delta[ar, :, rows, cols].permute(0, 3, 1, 2)  # (m, c, s, s)
        eta = pseudo_gaussian(s, dtype=x.dtype, device=dev)
        flip = torch.rand((m, 1, 1, 1), generator=g, device=dev, dtype=x.dtype) < 0.5
        new = torch.where(flip, eta.T, eta) * _random_signs((m, c, 1, 1), g, x)  # (m, c, s, s)
        new = new + old / (norm_w1 + 1e-10)
        room = ((tm.eps**2 - norm_img.square()).clamp_min(0) / c + norm_w12.square()).sqrt()
        new = new / new.square().sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * room
        delta = delta.masked_fill(w2, 0.0)
        delta[ar, :, rows, cols] = new.permute(0, 2, 3, 1)
        total = delta.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(m, 1, 1, 1)
        return (x + delta / total * tm.eps).clamp(*tm.box)

    # -- the search ----------------------------------------------------------------------------
    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n = x.shape[0]
        tm = self.threat
        oracle = ScoreOracle(model, n, x.device, budget=self.queries, output=self.output)
        everyone = torch.arange(n, device=x.device)
        x_best = self._init(x, generator)
        scores = oracle(x_best, everyone)
        loss_best = margin_loss(scores, y, target)
        done = is_adversarial(scores, y, target)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        total = self.queries
        propose = self._propose_linf if tm.norm == "linf" else self._propose_l2
        # The images still robust, compacted (same order as ``everyone``): their inputs, iterates,
        # losses and ball-and-box bounds are gathered once and re-gathered only when one of them
        # succeeds, not at every iteration; finished rows are written back to ``x_best``.
        act = everyone[~done]
        xa, xba, lossa, ya = x[act], x_best[act], loss_best[act], y[act]
        ta = None if target is None else target[act]
        lo = hi = None
        if tm.norm == "linf":
            lo, hi = torch.clamp(xa - tm.eps, min=tm.lower), torch.clamp(xa + tm.eps, max=tm.upper)
        ran = 0  # iterations run so far (one query each for every image still in the search)
        for it in range(total - 1):
            if act.numel() == 0:
                break
            cand = propose(xa, xba, square_p(it, total, self.p_init, self.schedule), generator, lo, hi)
            scores = oracle(cand, act)
            ran = it + 1
            loss = margin_loss(scores, ya, ta)
            hit = is_adversarial(scores, ya, ta)
            accept = (loss < lossa) | hit
            xba = torch.where(accept[:, None, None, None], cand, xba)
            lossa = torch.where(accept, loss, lossa)
            if bool(hit.any()):  # these images are done: write them back, drop them from the search
                iterations[act[hit]] = ran
                x_best[act[hit]] = xba[hit]
                keep = ~hit
                act, xa, xba, lossa, ya = act[keep], xa[keep], xba[keep], lossa[keep], ya[keep]
                ta = None if ta is None else ta[keep]
                if lo is not None and hi is not None:
                    lo, hi = lo[keep], hi[keep]
        iterations[act] = ran
        x_best[act] = xba
        return RawResult(x_best, iterations, oracle.counts.clone())
