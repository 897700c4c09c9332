"""NATTACK: learning the distribution of adversarial examples (Li, Li, Wang, Zhang, Gong 2019,
arXiv:1905.00441). Score-based: the model is seen only through
:class:`robustlab.attacks.queries.ScoreOracle`.

An isotropic Gaussian ``N(mu, sigma^2 I)`` over ``z`` in the tanh space of the image is searched by
natural evolution strategies. A draw ``z`` maps to an input by (Sec. 2, eq. 2-3)

    g(z) = m + r * tanh(arctanh((x - m) / r) + z),   m, r = centre and half-width of the box,
    x' = x + Proj_eps(g(z) - x)                      (clip for linf, rescale for l2),

so every candidate lies in the ball and the box. The loss (eq. 4) is the log-probability margin
``f(x') = max(0, log p_y(x') - max_{c != y} log p_c(x'))`` (targeted: ``max(0, max_{c != t} log
p_c - log p_t)``), minimised. Each iteration first queries ``x'(mu)`` and stops the sample if it is
adversarial; otherwise it draws ``b`` samples ``eps_i ~ N(0, I)``, queries ``x'(mu + sigma eps_i)``
(an adversarial draw also ends the sample: it is in the ball and already paid for), standardises
the losses ``f_i -> (f_i - mean) / std`` and takes the NES step (eq. 5)

    mu <- mu - step_size / (b * sigma) * sum_i f_i * eps_i.

All images and their populations go through the model in one batched pass per iteration (in
chunks of ``chunk`` rows); each iteration costs ``1 + population`` queries per active image.

A property of the tanh parametrisation worth knowing: a pixel at the edge of the box (0 or 1, most
of an MNIST digit) sits at ``arctanh(+-(1 - 1e-6)) ~ +-7.25`` where ``tanh' ~ 2e-6``, so draws of
size ``sigma`` barely move it; on such images NATTACK searches mostly over the non-saturated pixels
(the paper evaluates CIFAR-10 and ImageNet).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import Attack, RawResult
from robustlab.attacks.queries import ScoreOracle, check_budget
from robustlab.losses import is_adversarial, max_other
from robustlab.threat import ThreatModel
from robustlab.attacks.spelling import spellings


def log_margin_loss(scores: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """``max(0, log p_y - max_{c != y} log p_c)`` from logits (targeted: with ``t`` and reversed sign)."""
    logp = scores.log_softmax(dim=1)
    if target is None:
        return (logp.gather(1, y[:, None]).squeeze(1) - max_other(logp, y)).clamp_min(0)
    return (max_other(logp, target) - logp.gather(1, target[:, None]).squeeze(1)).clamp_min(0)


class NATTACK(Attack):
    """NATTACK, linf or l2.

    Args:
        threat: ``ThreatModel("linf", eps)`` or ``ThreatModel("l2", eps)``.
        queries: model evaluations per sample (>= population + 2: one NES iteration).
        population: draws ``b`` per iteration (paper: 300).
        sigma: standard deviation of the search distribution (paper: 0.1).
        step_size: NES learning rate ``eta`` (paper: 0.02; formerly ``lr``).
        chunk: rows per forward pass (default 512: bounds memory and keeps the batch cache-sized on CPU,
            where 8192-row passes of an MNIST CNN cost 2-3x more per row); the noise is drawn per group of
            images, so the draws (not their law) depend on it.
        seed: seed of the initial mean and the draws.
    """

    query_based = True

    @spellings(positional=("queries",), renamed={"lr": "step_size"})
    def __init__(self, threat: ThreatModel, *, queries: int = 30_000, population: int = 300, sigma: float = 0.1,
                 step_size: float = 0.02, chunk: int = 512, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in ("linf", "l2"):
            raise ValueError(f"NATTACK supports the norms linf and l2, got {threat.norm!r}")
        self.threat = threat
        self.queries = check_budget(queries, "queries")
        self.population = check_budget(population, "population")
        if self.population < 2:
            raise ValueError(f"population must be >= 2 (the losses are standardised), got {population!r}")
        if self.queries < self.population + 2:
            raise ValueError(
                f"queries={self.queries} cannot pay for one NES iteration: it needs >= population + 2 = "
                f"{self.population + 2} (the mean, the {self.population} draws, and one more for the update's mean)"
            )
        self.sigma = float(check_positive(sigma, "sigma"))
        self.step_size = float(check_positive(step_size, "step_size"))
        self.chunk = check_budget(chunk, "chunk")
        self.seed = int(seed)

    def _candidates(self, x: Tensor, w: Tensor, z: Tensor) -> Tensor:
        """``x + Proj(g(z) - x)`` for ``z`` (..., C, H, W) broadcast against ``x`` and its tanh-space ``w``."""
        tm = self.threat
        mid, half = (tm.upper + tm.lower) / 2, (tm.upper - tm.lower) / 2
        delta = mid + half * torch.tanh(w + z) - x
        if tm.norm == "linf":
            delta = delta.clamp(-tm.eps, tm.eps)
        else:
            norms = delta.flatten(-3).norm(dim=-1)[..., None, None, None]  # (..., 1, 1, 1)
            delta = delta * (tm.eps / norms.clamp_min(1e-12)).clamp_max(1.0)
        return (x + delta).clamp(tm.lower, tm.upper)

    def _nes_step(self, oracle: ScoreOracle, act: Tensor, xa: Tensor, wa: Tensor, ya: Tensor, ta: Optional[Tensor],
                  mu: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One population for the images ``act``: (adversarial draw found (m,), that draw, updated mean)."""
        m, b, dev = act.numel(), self.population, xa.device
        noise = torch.randn((m, b, *xa.shape[1:]), generator=generator, device=dev, dtype=xa.dtype)  # (m, b, C, H, W)
        pop = self._candidates(xa[:, None], wa[:, None], mu[:, None] + self.sigma * noise)
        scores = oracle(pop.reshape(m * b, *xa.shape[1:]), act.repeat_interleave(b))  # (m*b, K)
        y_rep = ya.repeat_interleave(b)
        t_rep = None if ta is None else ta.repeat_interleave(b)
        loss = log_margin_loss(scores, y_rep, t_rep).reshape(m, b)
        adv = is_adversarial(scores, y_rep, t_rep).reshape(m, b)
        found = adv.any(dim=1)
        win = pop[torch.arange(m, device=dev), adv.float().argmax(dim=1)]  # the first adversarial draw
        f = (loss - loss.mean(dim=1, keepdim=True)) / loss.std(dim=1, keepdim=True).clamp_min(1e-12)
        step = torch.einsum("mb,mb...->m...", f, noise) * (self.step_size / (b * self.sigma))
        return found, win, mu - step

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        tm = self.threat
        n, dev, b = x.shape[0], x.device, self.population
        oracle = ScoreOracle(model, n, dev, budget=self.queries)
        mid, half = (tm.upper + tm.lower) / 2, (tm.upper - tm.lower) / 2
        w = torch.atanh(((x - mid) / half).clamp(-1 + 1e-6, 1 - 1e-6))  # x in tanh space
        mu = 1e-3 * torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        out = x.clone()
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        alive = torch.ones(n, dtype=torch.bool, device=dev)  # budget left for another mean query
        everyone = torch.arange(n, device=dev)
        while True:
            act = everyone[~done & alive]
            if act.numel() == 0:
                break
            xa, wa, ya = x[act], w[act], y[act]
            ta = None if target is None else target[act]
            # 1. the mean of the search distribution
            cand = self._candidates(xa, wa, mu[act])
            hit = is_adversarial(oracle(cand, act), ya, ta)
            out[act] = cand
            done[act[hit]] = True
            go = ~hit & (oracle.remaining(act) >= b + 1)  # the draws and the next mean
            alive[act[~go]] = False
            act, xa, wa, ya, cand = act[go], xa[go], wa[go], ya[go], cand[go]
            ta = None if ta is None else ta[go]
            m = act.numel()
            if m == 0:
                continue
            # 2.-3. b draws around each mean and the NES step, in groups of images of <= chunk rows
            iterations[act] += 1
            per = max(1, self.chunk // b)
            for s in range(0, m, per):
                sl = slice(s, s + per)
                ga = act[sl]
                found, win, mu_new = self._nes_step(oracle, ga, xa[sl], wa[sl], ya[sl],
                                                    None if ta is None else ta[sl], mu[ga], generator)
                out[ga[found]] = win[found]
                done[ga[found]] = True
                mu[ga] = mu_new
        return RawResult(out, iterations, oracle.counts.clone())
