"""Randomized smoothing (Cohen, Rosenfeld, Kolter 2019, arXiv:1902.02918).

The smoothed classifier ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``, is
robust in L2: if the top class has probability ``pA >= pA_lower > 1/2`` then ``g`` is constant on
the L2 ball of radius ``sigma * Phi^-1(pA_lower)`` (Theorem 1 with ``pB = 1 - pA``). ``certify`` is
the paper's CERTIFY: pick the class with ``n0`` samples, estimate ``pA_lower`` from ``n`` fresh
samples with a one-sided Clopper-Pearson bound at level ``alpha``; ``predict`` is PREDICT: the
two-sided binomial test of the top two counts.

Beyond the reference, :meth:`Smoothed.certify_adaptive` stops sampling early per image with a
union bound over looks (see its docstring). Noise is sampled on the model's device from a seeded
``torch.Generator``; one forward pass holds up to ``batch_size`` (image, noise draw) pairs drawn
from many images at once.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import stats as st
from torch import Tensor, nn

from robustlab._checks import check_images, check_positive, check_probability
from robustlab.attacks.base import eval_mode, model_device
from robustlab.certificates import Certificate
from robustlab.stats import clopper_pearson


def min_samples_to_certify(alpha: float) -> int:
    """The smallest ``n`` for which ``n`` agreeing samples give ``pA_lower > 1/2``: the one-sided
    Clopper-Pearson bound for ``k = n`` is ``alpha^(1/n)``, so ``n > log2(1/alpha)``."""
    check_probability(alpha, "alpha")
    return int(math.floor(math.log2(1.0 / alpha))) + 1


class Smoothed(nn.Module):
    """The Gaussian-smoothed version of ``model`` (an ``nn.Module`` itself).

    ``forward`` returns the log of the Monte Carlo soft-smoothed probabilities
    ``log mean_k softmax(f(x + sigma eps_k))`` over ``n_forward`` draws with a fixed seed, a
    deterministic and differentiable surrogate for attacks on the smoothed classifier (Salman et al.
    2019, arXiv:1906.04584); ``predict`` / ``certify`` implement the hard smoothed classifier.
    """

    def __init__(self, model: nn.Module, sigma: float, *, num_classes: Optional[int] = None, batch_size: int = 1000,
                 n_forward: int = 32, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.base = model
        self.sigma = float(check_positive(sigma, "sigma"))
        self.num_classes = num_classes
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        self.n_forward = int(check_positive(n_forward, "n_forward", integer=True))
        self.seed = int(seed)

    # -- the soft surrogate ------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        n, k = x.shape[0], self.n_forward
        reps = x.repeat_interleave(k, dim=0)  # (N*k, C, H, W)
        noise = torch.randn(reps.shape, generator=gen, device=x.device, dtype=x.dtype)
        probs = torch.softmax(self.base(reps + self.sigma * noise), dim=1)  # (N*k, K)
        return probs.reshape(n, k, -1).mean(dim=1).clamp_min(1e-12).log()

    # -- Monte Carlo counts ---------------------------------------------------------------
    def _num_classes(self, x: Tensor) -> int:
        if self.num_classes is None:
            with torch.no_grad():
                self.num_classes = int(self.base(x[:1]).shape[1])
        return self.num_classes

    def sample_counts(self, x: Tensor, num: int, generator: torch.Generator, batch_size: Optional[int] = None) -> Tensor:
        """Class counts (N, K) of ``f(x_i + sigma delta)`` over ``num`` draws per image.

        The N*num (image, draw) pairs are processed in slices of ``batch_size``, so one forward pass
        mixes many images and draws and memory stays bounded by ``batch_size``.
        """
        bs = int(batch_size or self.batch_size)
        n = x.shape[0]
        k = self._num_classes(x)
        counts = torch.zeros(n, k, dtype=torch.long, device=x.device)
        total = n * num
        with eval_mode(self.base), torch.no_grad():
            for start in range(0, total, bs):
                idx = torch.arange(start, min(start + bs, total), device=x.device) // num  # image of each pair
                batch = x[idx]
                batch = batch + self.sigma * torch.randn(batch.shape, generator=generator, device=x.device, dtype=x.dtype)
                pred = self.base(batch).argmax(dim=1)
                counts.index_put_((idx, pred), torch.ones_like(pred), accumulate=True)
        return counts

    def _validate(self, x: Tensor, alpha: float, batch_size: Optional[int], **sizes: int) -> None:
        check_images(x, "x")
        check_probability(alpha, "alpha")
        for name, value in sizes.items():
            check_positive(value, name, integer=True)
        if batch_size is not None:
            check_positive(batch_size, "batch_size", integer=True)
        dev = model_device(self.base, x.device)
        if dev != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {dev}")

    def _generator(self, x: Tensor, seed: Optional[int]) -> torch.Generator:
        return torch.Generator(device=x.device).manual_seed(self.seed if seed is None else int(seed))

    # -- Cohen et al.'s PREDICT and CERTIFY ------------------------------------------------
    def predict(self, x: Tensor, n: int, alpha: float = 0.001, *, batch_size: Optional[int] = None,
                seed: Optional[int] = None) -> Tensor:
        """PREDICT: the top class if a two-sided binomial test of the top two counts (nA vs nB,
        ``p = 1/2``) rejects at level ``alpha``, else -1 (abstain). Wrong with probability <= alpha."""
        self._validate(x, alpha, batch_size, n=n)
        counts = self.sample_counts(x, n, self._generator(x, seed), batch_size)
        top2 = counts.topk(2, dim=1)
        na, nb = top2.values[:, 0].cpu().numpy(), top2.values[:, 1].cpu().numpy()
        pval = np.minimum(1.0, 2.0 * st.binom.cdf(np.minimum(na, nb), na + nb, 0.5))
        pred = top2.indices[:, 0].clone()
        pred[torch.as_tensor(pval > alpha, device=x.device)] = -1
        return pred

    def certify(self, x: Tensor, n0: int, n: int, alpha: float = 0.001, *, batch_size: Optional[int] = None,
                seed: Optional[int] = None) -> Certificate:
        """CERTIFY: ``cA`` = the top class over ``n0`` draws; ``pA_lower`` = one-sided
        Clopper-Pearson lower bound of ``P(f(x + delta) = cA)`` from ``n`` fresh draws;
        radius ``sigma * Phi^-1(pA_lower)``, abstain when ``pA_lower <= 1/2``.

        Refuses an ``n`` too small to certify anything at ``alpha`` (see
        :func:`min_samples_to_certify`) rather than abstaining on every input.
        """
        self._validate(x, alpha, batch_size, n0=n0, n=n)
        need = min_samples_to_certify(alpha)
        if n < need:
            raise ValueError(f"n={n} cannot certify anything at alpha={alpha}: even {n} agreeing samples give "
                             f"pA_lower <= 1/2; use n >= {need}")
        gen = self._generator(x, seed)
        c_a = self.sample_counts(x, n0, gen, batch_size).argmax(dim=1)
        counts = self.sample_counts(x, n, gen, batch_size)
        n_a = counts.gather(1, c_a[:, None]).squeeze(1)
        p_low, _ = clopper_pearson(n_a.cpu().numpy(), n, alpha, side="lower")
        return self._certificate(c_a, torch.as_tensor(p_low, device=x.device), alpha,
                                 torch.full_like(n_a, n0 + n), {"method": "cohen", "n0": n0, "n": n, "sigma": self.sigma})

    def certify_two_class(self, x: Tensor, n0: int, n: int, alpha: float = 0.001, *, batch_size: Optional[int] = None,
                          seed: Optional[int] = None) -> Certificate:
        """Theorem 1 in its general form, ``R = sigma / 2 (Phi^-1(pA_lower) - Phi^-1(pB_upper))``,
        with simultaneous bounds by Bonferroni: ``pA_lower`` at ``alpha / 2`` and an upper bound on
        every other class at ``alpha / (2 (K - 1))``; ``pB_upper = min(max_c pc_upper, 1 - pA_lower)``."""
        self._validate(x, alpha, batch_size, n0=n0, n=n)
        gen = self._generator(x, seed)
        c_a = self.sample_counts(x, n0, gen, batch_size).argmax(dim=1)
        counts = self.sample_counts(x, n, gen, batch_size)
        k = counts.shape[1]
        n_a = counts.gather(1, c_a[:, None]).squeeze(1).cpu().numpy()
        p_low, _ = clopper_pearson(n_a, n, alpha / 2, side="lower")
        others = counts.scatter(1, c_a[:, None], -1).amax(dim=1).clamp_min(0).cpu().numpy()
        _, p_up = clopper_pearson(others, n, alpha / (2 * max(k - 1, 1)), side="upper")
        p_b = np.minimum(p_up, 1.0 - p_low)
        with np.errstate(divide="ignore"):
            radius = 0.5 * self.sigma * (st.norm.ppf(p_low) - st.norm.ppf(p_b))
        abstain = torch.as_tensor(p_low <= p_b, device=x.device)
        pred = torch.where(abstain, torch.full_like(c_a, -1), c_a)
        rad = torch.where(abstain, torch.zeros(len(radius), device=x.device),
                          torch.as_tensor(np.nan_to_num(radius, posinf=0.0), dtype=torch.float32, device=x.device))
        return Certificate(pred, rad, abstain, "l2", alpha, torch.full_like(c_a, n0 + n),
                           {"method": "two-class", "n0": n0, "n": n, "sigma": self.sigma})

    def _certificate(self, c_a: Tensor, p_low: Tensor, alpha: float, samples: Tensor, info: dict) -> Certificate:
        abstain = p_low <= 0.5
        radius = self.sigma * torch.as_tensor(st.norm.ppf(p_low.double().cpu().numpy()), device=c_a.device)
        radius = torch.where(abstain, torch.zeros_like(radius), radius).float()
        pred = torch.where(abstain, torch.full_like(c_a, -1), c_a)
        return Certificate(pred, radius, abstain, "l2", alpha, samples, info)

    # -- adaptive sampling ---------------------------------------------------------------
    def certify_adaptive(self, x: Tensor, n0: int, n_max: int, alpha: float = 0.001, *,
                         radius: "float | Sequence[float] | None" = None,
                         looks: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                         seed: Optional[int] = None) -> Certificate:
        """CERTIFY with early stopping per image, keeping the guarantee.

        Samples are drawn in growing blocks up to cumulative sizes ``looks`` (default: 4x steps from
        ``n_max / 256`` to ``n_max``). At look ``j`` the one-sided Clopper-Pearson bound is taken at
        level ``alpha / L`` (``L`` looks): by the union bound the probability that *any* look's bound
        is wrong is at most ``alpha``, so whichever look an image stops at, its radius holds with
        probability >= 1 - alpha. An image stops (a) certified, once its radius reaches ``radius``
        (the largest radius the caller cares about; default: the radius ``n_max`` agreeing samples
        would give, i.e. never early); (b) abstaining, once even all remaining samples agreeing could
        not lift ``pA_lower`` above 1/2; (c) when ``radius`` is a grid of radii of interest, once an
        optimistic projection (the empirical rate plus two standard errors carried on to ``n_max``)
        would not move the certified radius past another grid point. Any stopping rule keeps the
        guarantee, since every look is covered by the union bound. Images that stop no longer cost
        forward passes.
        """
        self._validate(x, alpha, batch_size, n0=n0, n_max=n_max)
        if looks is None:
            looks, m = [], n_max
            while m >= max(n_max // 256, 1) and len(looks) < 5:
                looks.insert(0, m)
                m //= 4
        looks = sorted({int(v) for v in looks})
        if looks[-1] != n_max or looks[0] < 1:
            raise ValueError(f"looks must be positive cumulative sample sizes ending at n_max={n_max}, got {looks}")
        a_look = alpha / len(looks)
        if n_max < min_samples_to_certify(a_look):
            raise ValueError(f"n_max={n_max} cannot certify anything at alpha/looks={a_look:.3g}; use n_max >= "
                             f"{min_samples_to_certify(a_look)} or fewer looks")
        grid = np.sort(np.atleast_1d(np.asarray(radius, dtype=np.float64))) if radius is not None else None
        target = float(grid[-1]) if grid is not None else math.inf
        gen = self._generator(x, seed)
        n = x.shape[0]
        c_a = self.sample_counts(x, n0, gen, batch_size).argmax(dim=1)
        n_a = torch.zeros(n, dtype=torch.long, device=x.device)
        used = torch.zeros(n, dtype=torch.long, device=x.device)
        p_low = torch.zeros(n, dtype=torch.float64, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        drawn = 0
        for look in looks:
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            block = look - drawn
            counts = self.sample_counts(x[idx], block, gen, batch_size)
            n_a[idx] += counts.gather(1, c_a[idx, None]).squeeze(1)
            used[idx] = look
            drawn = look
            lo, _ = clopper_pearson(n_a[idx].cpu().numpy(), look, a_look, side="lower")
            p_low[idx] = torch.as_tensor(lo, dtype=torch.float64, device=x.device)
            rad = self.sigma * st.norm.ppf(np.clip(lo, 1e-300, 1.0))
            best, _ = clopper_pearson((n_a[idx] + (n_max - look)).cpu().numpy(), n_max, a_look, side="lower")
            stop = (rad >= target) | (best <= 0.5)
            if grid is not None and grid.size > 1 and look < n_max:
                k = n_a[idx].cpu().numpy()
                p_hat = k / look
                rate = np.minimum(1.0, p_hat + 2.0 * np.sqrt(p_hat * (1 - p_hat) / look) + 1.0 / look)
                k_opt = np.minimum(n_max, np.floor(k + (n_max - look) * rate))
                opt, _ = clopper_pearson(k_opt, n_max, a_look, side="lower")
                r_opt = np.where(opt > 0.5, self.sigma * st.norm.ppf(np.clip(opt, 1e-300, 1.0)), -1.0)
                r_now = np.where(lo > 0.5, rad, -1.0)
                stop |= np.searchsorted(grid, r_now, side="right") == np.searchsorted(grid, r_opt, side="right")
            done = torch.as_tensor(stop, device=x.device)
            active[idx[done]] = False
        cert = self._certificate(c_a, p_low, alpha, used + n0,
                                 {"method": "adaptive", "n0": n0, "n_max": n_max, "looks": looks, "sigma": self.sigma,
                                  "target_radius": radius})
        return cert
