"""One-pixel and few-pixel attack by differential evolution (Su, Vargas, Sakurai 2019,
arXiv:1710.08864). Score-based: the model is seen only through
:class:`robustlab.attacks.queries.ScoreOracle`.

A candidate is ``k`` pixels, each ``(row, col, v_1..v_C)``: the image with those pixels set to those
values (an L0 perturbation of at most ``k`` pixels). Differential evolution (Storn & Price 1997,
DE/rand/1 without crossover, as in Sec. 3 of the paper) keeps a population of ``P`` candidates per
image; each generation every member ``i`` proposes ``c_i = x_{r1} + F (x_{r2} - x_{r3})`` with
distinct ``r1, r2, r3 != i``, and the child replaces its parent iff its fitness is lower. Fitness is
the probability of the true class (targeted: minus the probability of the target). Initialisation
follows the paper: positions uniform over the image, values ``N(mid, half-width)`` of the box
(``N(128, 127)`` for 8-bit images), clipped.

All images and their populations go through the model in one batched pass per generation (in
chunks of ``chunk`` rows), ``P`` queries per active image per generation; an image stops at its
first adversarial candidate (the paper's early stop), so it stops costing queries.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult
from robustlab.attacks.queries import ScoreOracle, check_budget
from robustlab.losses import is_adversarial
from robustlab.threat import ThreatModel


def apply_pixels(x: Tensor, cand: Tensor) -> Tensor:
    """Images ``x`` (m, C, H, W) with candidates ``cand`` (m, P, k, 2 + C) applied: (m, P, C, H, W).

    Positions are rounded and clamped into the image; where two of a candidate's pixels share a
    position the larger value wins per channel (deterministic on every device).
    """
    m, c, h, w = x.shape
    p, k = cand.shape[1], cand.shape[2]
    rows = cand[..., 0].round().clamp(0, h - 1).long()
    cols = cand[..., 1].round().clamp(0, w - 1).long()
    pos = (rows * w + cols)[:, :, None, :].expand(m, p, c, k)  # (m, P, C, k)
    vals = cand[..., 2:].permute(0, 1, 3, 2).to(x.dtype)  # (m, P, C, k)
    base = x[:, None].expand(m, p, c, h, w).reshape(m, p, c, h * w)
    out = base.scatter_reduce(3, pos, vals, reduce="amax", include_self=False)
    return out.reshape(m, p, c, h, w)


class OnePixel(Attack):
    """Few-pixel attack (L0, ``pixels = k``) by differential evolution.

    Args:
        pixels: ``k``, the number of pixels changed (1, 3, 5 in the paper), or ``ThreatModel("l0", k)``.
        population: candidates per image ``P`` (paper: 400).
        generations: DE generations (paper: 100); queries per image <= ``P * (generations + 1)``.
        F: DE scale factor (paper: 0.5).
        bounds: the input box (when ``pixels`` is a number).
        chunk: rows per forward pass (default 512: bounds memory and keeps the batch cache-sized on CPU,
            where 8192-row passes of an MNIST CNN cost 2-3x more per row); results do not depend on it.
        seed: seed of the initial population and the DE draws.
    """

    query_based = True

    def __init__(self, pixels: "int | ThreatModel" = 1, *, population: int = 400, generations: int = 100,
                 F: float = 0.5, bounds: tuple[float, float] = (0.0, 1.0), chunk: int = 512, seed: int = 0) -> None:
        if isinstance(pixels, ThreatModel):
            if pixels.norm != "l0":
                raise ValueError(f"OnePixel is an l0 attack: pass ThreatModel('l0', k), got norm {pixels.norm!r}")
            threat = pixels
        else:
            k = check_budget(pixels, "pixels")
            threat = ThreatModel("l0", k, float(bounds[0]), float(bounds[1]))
        if threat.eps < 1:
            raise ValueError(f"pixels must be >= 1, got {threat.eps:g}")
        self.threat = threat
        self.pixels = int(threat.eps)
        self.population = check_budget(population, "population")
        if self.population < 4:
            raise ValueError(f"population must be >= 4 (DE/rand/1 draws three others), got {population!r}")
        self.generations = int(check_positive(generations, "generations", integer=True, allow_zero=True))
        self.F = float(check_positive(F, "F"))
        self.chunk = check_budget(chunk, "chunk")
        self.seed = int(seed)

    @property
    def max_queries(self) -> int:
        """Queries per image at most: the initial population plus one population per generation."""
        return self.population * (self.generations + 1)

    def _check_input(self, x: Tensor) -> None:
        h, w = x.shape[2], x.shape[3]
        if self.pixels > h * w:
            raise ValueError(f"pixels={self.pixels} is more than the {h}x{w}={h * w} pixels of the images")

    def _fitness(self, scores: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        probs = scores.softmax(dim=1)
        if target is None:
            return probs.gather(1, y[:, None]).squeeze(1)
        return -probs.gather(1, target[:, None]).squeeze(1)

    def _evaluate(self, oracle: ScoreOracle, x: Tensor, act: Tensor, cand: Tensor, y: Tensor,
                  target: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(fitness (m, P), any adversarial (m,), first adversarial image or x (m, C, H, W)) of the
        candidates (m, P, k, 2 + C), in groups of images of at most ``chunk`` rows per forward pass."""
        m, p = cand.shape[:2]
        per = max(1, self.chunk // p)
        fits, hits, wins = [], [], []
        for s in range(0, m, per):
            sl = slice(s, s + per)
            imgs = apply_pixels(x[sl], cand[sl])  # (g, P, C, H, W)
            g = imgs.shape[0]
            scores = oracle(imgs.reshape(g * p, *x.shape[1:]), act[sl].repeat_interleave(p))
            y_rep = y[sl].repeat_interleave(p)
            t_rep = None if target is None else target[sl].repeat_interleave(p)
            fits.append(self._fitness(scores, y_rep, t_rep).reshape(g, p))
            adv = is_adversarial(scores, y_rep, t_rep).reshape(g, p)
            hits.append(adv.any(dim=1))
            wins.append(imgs[torch.arange(g, device=x.device), adv.float().argmax(dim=1)])
        return torch.cat(fits), torch.cat(hits), torch.cat(wins)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        p, k = self.population, self.pixels
        lo, hi = self.threat.box
        oracle = ScoreOracle(model, n, dev, budget=self.max_queries)
        # initial population (n, P, k, 2 + C): positions uniform, values N(mid, half-width)
        pos = torch.rand((n, p, k, 2), generator=generator, device=dev, dtype=dt) * torch.tensor([h - 1, w - 1], device=dev, dtype=dt)
        vals = (lo + hi) / 2 + (hi - lo) / 2 * torch.randn((n, p, k, c), generator=generator, device=dev, dtype=dt)
        pop = torch.cat([pos, vals.clamp(lo, hi)], dim=3)
        everyone = torch.arange(n, device=dev)
        fit, done, win = self._evaluate(oracle, x, everyone, pop, y, target)
        out = torch.where(done[:, None, None, None], win, x)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        limits = torch.tensor([h - 1, w - 1] + [hi] * c, device=dev, dtype=dt)
        floors = torch.tensor([0, 0] + [lo] * c, device=dev, dtype=dt)
        members = torch.arange(p, device=dev)
        for _ in range(self.generations):
            act = everyone[~done]
            m = act.numel()
            if m == 0:
                break
            # DE/rand/1: r1, r2, r3 distinct and != i, drawn per (image, member)
            o1 = torch.randint(1, p, (m, p), generator=generator, device=dev)
            o2 = torch.randint(1, p - 1, (m, p), generator=generator, device=dev)
            o3 = torch.randint(1, p - 2, (m, p), generator=generator, device=dev)
            o2 = o2 + (o2 >= o1).long()  # offsets from i: o1 != o2 != o3, all in [1, P-1]
            lo_o, hi_o = torch.minimum(o1, o2), torch.maximum(o1, o2)
            o3 = o3 + (o3 >= lo_o).long()
            o3 = o3 + (o3 >= hi_o).long()
            r1, r2, r3 = ((members + o) % p for o in (o1, o2, o3))
            pa = pop[act]  # (m, P, k, 2 + C)
            take = lambda r: pa.gather(1, r[:, :, None, None].expand_as(pa))  # noqa: E731
            child = take(r1) + self.F * (take(r2) - take(r3))
            child = torch.maximum(torch.minimum(child, limits), floors)
            cfit, hit, win = self._evaluate(oracle, x[act], act, child, y[act], None if target is None else target[act])
            better = cfit < fit[act]
            pop[act] = torch.where(better[:, :, None, None], child, pa)
            fit[act] = torch.where(better, cfit, fit[act])
            iterations[act] += 1
            out[act[hit]] = win[hit]
            done[act[hit]] = True
        return RawResult(out, iterations, oracle.counts.clone())
