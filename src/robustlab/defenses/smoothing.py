"""Randomized smoothing (Cohen, Rosenfeld, Kolter 2019, arXiv:1902.02918).

The smoothed classifier is ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``,
for any base classifier ``f``. Theorem 1: if the top class ``cA`` has probability
``pA >= pA_lower`` and every other class ``pB <= pB_upper`` with ``pA_lower > pB_upper``, then
``g(x + e) = cA`` for all ``||e||_2 < R = sigma / 2 (Phi^-1(pA_lower) - Phi^-1(pB_upper))``; with
``pB_upper = 1 - pA_lower`` this is ``R = sigma * Phi^-1(pA_lower)``. The bound is tight (a linear
``f`` attains it).

* :meth:`Smoothed.predict` is PREDICT (Alg. 1): the top two counts ``nA, nB`` of ``n`` noisy
  samples; return ``cA`` if the two-sided binomial test of ``nA`` out of ``nA + nB`` against
  ``p = 1/2`` rejects at level ``alpha``, else abstain (-1). Wrong with probability <= alpha.
* :meth:`Smoothed.certify` is CERTIFY (Alg. 1): select ``cA`` from ``n0`` samples, count it in
  ``n`` fresh samples, ``pA_lower`` = the one-sided Clopper-Pearson lower bound at level ``alpha``,
  radius ``sigma * Phi^-1(pA_lower)``; abstain when ``pA_lower <= 1/2``. The radius is too large
  with probability <= alpha.
* :meth:`Smoothed.certify_two_class` uses the two-class form with simultaneous (Bonferroni) bounds.
* :meth:`Smoothed.certify_adaptive` stops sampling per input as soon as the answer is clear, with
  the same guarantee (statistics in :mod:`robustlab.defenses.smoothing_adaptive`).

Sampling: every (input, noise draw) pair is one row of a forward pass; a pass holds up to
``batch_size`` rows drawn from many inputs at once (``n0 = 100`` costs one pass for 10 inputs
with ``batch_size=1000``), noise comes from a seeded ``torch.Generator`` on the model's device into
a reused buffer, and class counts are accumulated on the device with ``index_add_``. Noise is
*not* clipped to the image box, as in the paper: the base classifier must be trained on the same
distribution (:class:`robustlab.training.GaussianNoise`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from functools import partial
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from scipy import stats as st
from torch import Tensor, nn

from robustlab._checks import check_images, check_logits, check_positive, check_probability
from robustlab.attacks.base import eval_mode, model_device
from robustlab.attacks.fastpath import FastPath, FastSpec
from robustlab.attacks.prepacked import PrepackedForward
from robustlab.certificates import Certificate
from robustlab.defenses.smoothing_adaptive import REASONS, AdaptivePlan, radius_from_p
from robustlab.stats import clopper_pearson

__all__ = [
    "Smoothed",
    "cohen_radius",
    "min_samples_to_certify",
    "min_samples_to_predict",
    "predict_pvalue",
    "two_class_radius",
]


# ------------------------------------------------------------------------------------------
# The statistics, on counts (numpy; one call per batch, never per sample)


def min_samples_to_certify(alpha: float) -> int:
    """Smallest ``n`` that can certify anything at level ``alpha``.

    With ``k = n`` (all samples agree) the one-sided Clopper-Pearson bound is ``alpha^(1/n)``,
    which exceeds 1/2 iff ``n > log2(1 / alpha)``; smaller ``n`` abstains on every input.
    """
    alpha = check_probability(alpha, "alpha")
    n = max(1, int(math.floor(math.log2(1.0 / alpha))) + 1)
    while alpha ** (1.0 / n) <= 0.5:  # guard against rounding in log2
        n += 1
    while n > 1 and alpha ** (1.0 / (n - 1)) > 0.5:
        n -= 1
    return n


def min_samples_to_predict(alpha: float) -> int:
    """Smallest ``n`` for which PREDICT can return a class: ``n`` agreeing samples give the
    two-sided p-value ``2 * 2^-n``, which must be <= alpha, so ``n >= log2(2 / alpha)``."""
    alpha = check_probability(alpha, "alpha")
    n = max(1, int(math.ceil(math.log2(2.0 / alpha) - 1e-12)))
    while 2.0 * 0.5**n > alpha:
        n += 1
    return n


def min_samples_two_class(alpha: float, num_classes: int) -> int:
    """Smallest ``n`` that can certify anything with :func:`two_class_radius`: with all samples
    agreeing ``pA_lower = (alpha/2)^(1/n)`` must exceed ``pB_upper = min(1 - (alpha / (2 (K -
    1)))^(1/n), 1 - pA_lower)``."""
    alpha = check_probability(alpha, "alpha")
    a_b = alpha / (2 * max(num_classes - 1, 1))
    n = 1
    while (alpha / 2) ** (1.0 / n) <= min(1.0 - a_b ** (1.0 / n), 1.0 - (alpha / 2) ** (1.0 / n)):
        n += 1
    return n


def cohen_radius(count: "np.ndarray | Tensor", n: int, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``(pA_lower, radius)`` of CERTIFY from the count of the selected class in ``n`` samples:
    ``pA_lower = B(alpha; k, n - k + 1)`` (one-sided Clopper-Pearson), ``radius = sigma *
    Phi^-1(pA_lower)`` where ``pA_lower > 1/2``, else -1 (abstain)."""
    p_low, _ = clopper_pearson(count, n, alpha, side="lower")
    return p_low, radius_from_p(p_low, sigma)


def two_class_radius(count_a: "np.ndarray | Tensor", count_b: "np.ndarray | Tensor", n: int, alpha: float,
                     sigma: float, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Theorem 1 in its two-class form with simultaneous bounds.

    ``pA_lower`` at level ``alpha / 2``; an upper bound on *every* other class at level
    ``alpha / (2 (K - 1))`` (Bonferroni: all K bounds hold together with probability >= 1 - alpha),
    whose maximum is the bound of the runner-up count ``count_b``; ``pB_upper = min(that,
    1 - pA_lower)``. Radius ``sigma / 2 (Phi^-1(pA_lower) - Phi^-1(pB_upper))`` where
    ``pA_lower > pB_upper``, else -1. Returns ``(pA_lower, pB_upper, radius)``.
    """
    p_low, _ = clopper_pearson(count_a, n, alpha / 2, side="lower")
    _, p_up = clopper_pearson(count_b, n, alpha / (2 * max(num_classes - 1, 1)), side="upper")
    p_b = np.minimum(p_up, 1.0 - p_low)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 0.5 * sigma * (st.norm.ppf(p_low) - st.norm.ppf(p_b))
    return p_low, p_b, np.where(p_low > p_b, r, -1.0)


def predict_pvalue(n_a: "np.ndarray | Tensor", n_b: "np.ndarray | Tensor") -> np.ndarray:
    """Two-sided binomial test of ``n_a`` successes in ``n_a + n_b`` against ``p = 1/2``:
    ``min(1, 2 P(X <= min(n_a, n_b)))``, ``X ~ Bin(n_a + n_b, 1/2)`` (exact, as scipy's binomtest)."""
    a = np.asarray(n_a.cpu() if isinstance(n_a, Tensor) else n_a, dtype=np.float64)
    b = np.asarray(n_b.cpu() if isinstance(n_b, Tensor) else n_b, dtype=np.float64)
    return np.minimum(1.0, 2.0 * st.binom.cdf(np.minimum(a, b), a + b, 0.5))


def _split_normalize(model: nn.Module) -> tuple[nn.Module, Optional[nn.Module]]:
    """``(net, normalize)`` when ``model`` is exactly robustlab's :class:`Normalize` (its
    standardisation can then run in place on the noise buffer, bitwise equal to
    ``model.forward``), else ``(model, None)``."""
    from robustlab.models.normalize import Normalize

    if type(model) is Normalize:
        return model.net, model
    return model, None


def _add_owners(rows: Tensor, x: Tensor, start: int, num: int) -> None:
    """``rows[r] += x[(start + r) // num]`` for every row ``r`` of a slice (``num`` consecutive rows
    per input, the slice beginning at overall row ``start``), in place, in at most three broadcast
    additions (a partial first input, the whole inputs, a partial last one) instead of a gather."""
    m, r, i = rows.shape[0], 0, start // num
    if start % num:  # the slice starts inside input i
        r = min(m, (i + 1) * num - start)
        rows[:r].add_(x[i])
        i += 1
    whole = (m - r) // num
    if whole:  # (whole, num, C, H, W) += (whole, 1, C, H, W)
        rows[r : r + whole * num].view(whole, num, *x.shape[1:]).add_(x[i : i + whole].unsqueeze(1))
        r, i = r + whole * num, i + whole
    if r < m:  # the slice ends inside input i
        rows[r:].add_(x[i])


def _derive_seed(seed: int, stream: int) -> int:
    return (int(seed) * 1_000_003 + stream) % (2**63 - 1)


# ------------------------------------------------------------------------------------------
# The smoothed classifier


#: Input values per forward pass of the base model on a CPU while counting votes (334 MNIST
#: images, 85 CIFAR images). Measured on the MNIST small-cnn, 1,000 noisy rows, 1 thread: 43.5 ms in
#: one pass, 21.7 ms in pieces of 250 (glibc; on jemalloc 27.6 -> 22.0 ms; 2 threads 30.3 -> 21.2
#: ms), with bitwise the same logits.
CPU_FORWARD_VALUES = 1 << 18


class Smoothed(nn.Module):
    """The Gaussian-smoothed version of ``model``, itself an ``nn.Module``.

    Args:
        model: the base classifier, images in [0, 1] (N, C, H, W) -> logits (N, K).
        sigma: noise standard deviation in pixel units (> 0).
        num_classes: K; inferred from one forward pass when None.
        batch_size: (input, noise) rows per forward pass of the base model (memory bound).
        seed: seeds the noise streams; the same seed and the same calls give the same results.
        n_forward: noise draws per input in :meth:`forward` (the attack surrogate).
        fresh_noise: :meth:`forward` draws new noise at every call (a randomised classifier, to be
            attacked with EOT); False reuses the same draws at every call (a deterministic function).
        autocast: run the base model under bf16 autocast (fast path; may flip near-tied votes, so
            it is off by default and recorded in every certificate's ``info``).
        channels_last: feed the base model channels_last inputs (fast path for convolutions).
        optimize: count votes with a traced, frozen copy of the base model
            (``torch.jit.optimize_for_inference``: prepacked oneDNN weights, fused conv + ReLU on
            CPU). Logits differ from the eager model in the last bits only; the copy is checked
            against the eager model on the first slice and refused if any vote differs. Off by
            default; for models without data-dependent control flow (tracing records one path).
        fast: the library-wide fast path (:class:`~robustlab.attacks.fastpath.FastPath` or a
            preset name such as ``"bf16"``; off by default): its ``precision="bf16"`` turns on
            ``autocast``, its ``channels_last`` turns on ``channels_last``, and its ``compile``
            counts votes with ``torch.compile(base)`` (eager if it does not compile). Recorded in
            every certificate's ``info``. Vote counting never synchronises with the host.

    ``forward(x)`` returns ``log mean_k softmax(f(x + sigma delta_k))`` over ``n_forward`` draws:
    the log of the soft-smoothed probabilities (Salman et al. 2019, arXiv:1906.04584, Sec. 3), a
    differentiable surrogate of the smoothed classifier with the same shape (N, K) as logits, so
    every attack and metric works on it; each call is one EOT-style average over fresh noise.
    ``predict`` / ``certify`` implement the hard smoothed classifier ``g`` and never use it.
    """

    def __init__(self, model: nn.Module, sigma: float, *, num_classes: Optional[int] = None, batch_size: int = 1000,
                 seed: int = 0, n_forward: int = 32, fresh_noise: bool = True, autocast: bool = False,
                 channels_last: bool = False, optimize: bool = False, fast: FastSpec = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module mapping images to logits, got {type(model).__name__}")
        self.base = model
        self.sigma = float(check_positive(sigma, "sigma"))
        if num_classes is not None:
            check_positive(num_classes, "num_classes", integer=True)
            if num_classes < 2:
                raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.n_forward = int(check_positive(n_forward, "n_forward", integer=True))
        self.fresh_noise = bool(fresh_noise)
        self.autocast = bool(autocast)
        self.channels_last = bool(channels_last)
        self.optimize = bool(optimize)
        self.fast = FastPath.resolve(fast)
        if self.fast is not None:
            self.autocast = self.autocast or self.fast.precision == "bf16"
            self.channels_last = self.channels_last or self.fast.channels_last
            if self.optimize and self.fast.compile:
                raise ValueError("optimize=True (torch.jit) and a fast path with compile=True exclude each other; pick one")
        if self.optimize and self.autocast:
            raise ValueError("optimize=True traces the fp32 model; it cannot be combined with autocast=True")
        self._streams: dict[tuple[str, int], torch.Generator] = {}
        self._optimized: dict[tuple, nn.Module] = {}
        self._prepacked: dict[int, PrepackedForward] = {}

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, batch_size={self.batch_size}, seed={self.seed}, n_forward={self.n_forward}"

    # -- noise streams ------------------------------------------------------------------
    def reset_noise(self, seed: Optional[int] = None) -> None:
        """Restart the noise streams (from ``seed``, default the constructor's)."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an integer, got {seed!r}")
            self.seed = seed
        self._streams.clear()

    def _stream(self, device: torch.device, stream: int, seed: Optional[int] = None) -> torch.Generator:
        """The module's generator for ``stream`` (0: certify/predict, 1: forward) on ``device``,
        or a fresh one seeded with ``seed`` for a single call."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an integer, got {seed!r}")
            return torch.Generator(device=device).manual_seed(_derive_seed(seed, stream))
        key = (str(device), stream)
        if key not in self._streams:
            self._streams[key] = torch.Generator(device=device).manual_seed(_derive_seed(self.seed, stream))
        return self._streams[key]

    @contextlib.contextmanager
    def _fast_path(self, device: torch.device) -> Iterator[None]:
        if self.autocast:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    # -- the soft surrogate (attacks) ---------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """``log mean_k softmax(f(x + sigma delta_k))``, (N, K), differentiable in ``x``."""
        n, k = x.shape[0], self.n_forward
        if self.fresh_noise:
            gen = self._stream(x.device, 1)
        else:
            gen = torch.Generator(device=x.device).manual_seed(_derive_seed(self.seed, 1))
        reps = x.repeat_interleave(k, dim=0)  # (N*k, C, H, W), input-major
        noise = torch.randn(reps.shape, generator=gen, device=x.device, dtype=x.dtype)
        noisy = reps + self.sigma * noise
        if self.channels_last and noisy.dim() == 4:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with self._fast_path(x.device):
            logits = self.base(noisy)
        probs = torch.softmax(logits.float(), dim=1).reshape(n, k, -1).mean(dim=1)  # (N, K)
        return probs.clamp_min(1e-12).log().to(x.dtype)

    # -- Monte Carlo counts --------------------------------------------------------------
    def _infer_classes(self, x: Tensor) -> int:
        if self.num_classes is None:
            with eval_mode(self.base), torch.no_grad():
                out = check_logits(self.base(x[:1]), 1, "the base model's output")
            self.num_classes = int(out.shape[1])
        return self.num_classes

    def sample_counts(self, x: Tensor, num: int, generator: Optional[torch.Generator] = None,
                      batch_size: Optional[int] = None) -> Tensor:
        """Class counts (N, K), int64, of ``f(x_i + sigma delta)`` over ``num`` draws per input.

        The ``N * num`` (input, draw) rows are taken in slices of ``batch_size``: one forward pass
        mixes several inputs (or part of one), memory stays bounded by ``batch_size``. Draws come
        from ``generator`` (default: the module's stream); results are reproducible for a fixed
        seed, device and batch size (another batch size gives other, equally valid draws).
        """
        bs = int(batch_size or self.batch_size)
        n = x.shape[0]
        k = self._infer_classes(x)
        dev = x.device
        gen = generator if generator is not None else self._stream(dev, 0)
        counts = torch.zeros(n * k, dtype=torch.long, device=dev)  # flat (N*K,)
        total = n * num
        if total == 0:
            return counts.reshape(n, k)
        rows = min(bs, total)
        fmt = torch.channels_last if (self.channels_last and x.dim() == 4) else torch.contiguous_format
        # One buffer reused by every slice: fresh allocations cost page faults on the CPU.
        buf = torch.empty((rows, *x.shape[1:]), device=dev, dtype=x.dtype).contiguous(memory_format=fmt)
        ones = torch.ones(rows, dtype=torch.long, device=dev)
        net, norm = _split_normalize(self.base)
        # On a CPU the slice goes through the model in pieces of about CPU_FORWARD_VALUES input
        # values: the same rows and draws, each row's arithmetic unchanged, but activations that
        # stay in cache (and, with glibc, below its mmap threshold: no page faults per pass).
        cpu_rows = max(CPU_FORWARD_VALUES // max(x[0].numel(), 1), 1) if dev.type == "cpu" else rows
        if self.optimize:
            forward: Callable[[Tensor], Tensor] = lambda b: self._optimized_net(net, b)  # noqa: E731
        elif self.fast is not None and self.fast.compile:
            forward = partial(self.fast.compiled_call, net)
        else:  # prepacked oneDNN convolutions where they apply (CPU, fp32): bitwise the same logits, faster
            forward = self._prepacked_net(net)
        with eval_mode(self.base), torch.no_grad(), self._fast_path(dev):
            for start in range(0, total, rows):
                m = min(rows, total - start)
                # (m,) the input each row belongs to
                owner = torch.arange(start, start + m, device=dev).div_(num, rounding_mode="floor")
                noisy = buf[:m]
                torch.randn(noisy.shape, generator=gen, out=noisy)
                _add_owners(noisy.mul_(self.sigma), x, start, num)  # x_i + sigma * delta
                if norm is not None:  # Normalize's (x - mean) / std, in place: the same values as base(noisy)
                    noisy.sub_(norm.mean).div_(norm.std)
                logits = forward(noisy) if m <= cpu_rows else torch.cat([forward(p) for p in noisy.split(cpu_rows)])
                if start == 0:
                    check_logits(logits, m, "the base model's output")
                    if logits.shape[1] != k:
                        raise ValueError(f"the base model returns {logits.shape[1]} classes but num_classes={k}")
                counts.index_add_(0, owner * k + logits.argmax(dim=1), ones[:m])
        return counts.reshape(n, k)

    def _prepacked_net(self, net: nn.Module) -> PrepackedForward:
        """The :class:`~robustlab.attacks.prepacked.PrepackedForward` of ``net`` (one kept)."""
        fwd = self._prepacked.get(id(net))
        if fwd is None or fwd.net is not net:
            fwd = PrepackedForward(net)
            self._prepacked = {id(net): fwd}
        return fwd

    def _optimized_net(self, net: nn.Module, batch: Tensor) -> Tensor:
        """Logits of the traced, frozen copy of ``net``; built (and checked against the eager
        ``net``: identical votes, logits within 1e-4 relative) on first use per device/dtype/layout."""
        # The frozen copy bakes the weights in: key it on their storage and in-place version too,
        # so that a model trained further after tracing is traced again.
        weights = tuple((p.data_ptr(), p._version) for p in net.parameters())
        key = (str(batch.device), batch.dtype, self.channels_last, id(net), weights)
        fast = self._optimized.get(key)
        if fast is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, batch.clone())))
            eager, out = net(batch), fast(batch)
            scale = float(eager.abs().max()) + 1e-12
            if not torch.equal(eager.argmax(1), out.argmax(1)) or float((eager - out).abs().max()) > 1e-4 * scale:
                raise RuntimeError("optimize=True: the traced model disagrees with the eager model (data-dependent "
                                   "control flow?); use optimize=False")
            self._optimized = {key: fast}  # keep only the current copy
            return out
        return fast(batch)

    def _validate(self, x: Tensor, alpha: float, batch_size: Optional[int], **sizes: int) -> None:
        check_images(x, "x")
        check_probability(alpha, "alpha")
        for name, value in sizes.items():
            check_positive(value, name, integer=True)
        if batch_size is not None:
            check_positive(batch_size, "batch_size", integer=True)
        dev = model_device(self.base, x.device)
        if dev != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {dev}; move them to the same device")

    def _info(self, method: str, **extra: object) -> dict:
        info = {"method": method, "sigma": self.sigma, "seed": self.seed}
        if self.autocast:
            info["autocast"] = "bfloat16"
        if self.channels_last:
            info["channels_last"] = True
        if self.optimize:
            info["optimize"] = "torch.jit.optimize_for_inference"
        if self.fast is not None:
            info["fast"] = self.fast.to_dict()
        info.update(extra)
        return info

    # -- Cohen et al.'s PREDICT and CERTIFY ----------------------------------------------
    def predict(self, x: Tensor, n: int, alpha: float = 0.001, *, batch_size: Optional[int] = None,
                seed: Optional[int] = None) -> Tensor:
        """PREDICT: int64 (N,), the top class of ``n`` noisy samples, or -1 (abstain) where the
        two-sided binomial test of the top two counts against ``p = 1/2`` does not reject at
        ``alpha``. Returns a class other than ``g(x)`` with probability at most ``alpha``.

        Raises ValueError for an ``n`` too small to ever reject (:func:`min_samples_to_predict`).
        """
        self._validate(x, alpha, batch_size, n=n)
        need = min_samples_to_predict(alpha)
        if n < need:
            raise ValueError(f"n={n} cannot predict anything at alpha={alpha}: even {n} agreeing samples give a "
                             f"p-value above alpha; use n >= {need}")
        counts = self.sample_counts(x, n, self._stream(x.device, 0, seed), batch_size)
        top2 = counts.topk(2, dim=1)  # values (N, 2) descending, indices (N, 2)
        pval = predict_pvalue(top2.values[:, 0], top2.values[:, 1])
        keep = torch.as_tensor(pval <= alpha, device=x.device)
        return torch.where(keep, top2.indices[:, 0], torch.full_like(top2.indices[:, 0], -1))

    def certify(self, x: Tensor, n0: int, n: int, alpha: float = 0.001, *, batch_size: Optional[int] = None,
                seed: Optional[int] = None) -> Certificate:
        """CERTIFY: ``cA`` = the top class of ``n0`` draws; ``pA_lower`` = one-sided Clopper-Pearson
        lower bound of ``P(f(x + delta) = cA)`` from ``n`` fresh draws at level ``alpha``; radius
        ``sigma * Phi^-1(pA_lower)``; abstain (prediction -1, radius 0) when ``pA_lower <= 1/2``.

        Each input's radius is too large with probability at most ``alpha``. Raises ValueError for
        an ``n`` too small to certify anything at ``alpha`` (:func:`min_samples_to_certify`),
        instead of abstaining on every input.
        """
        self._validate(x, alpha, batch_size, n0=n0, n=n)
        need = min_samples_to_certify(alpha)
        if n < need:
            raise ValueError(f"n={n} cannot certify anything at alpha={alpha}: even {n} agreeing samples give "
                             f"pA_lower <= 1/2; use n >= {need}")
        gen = self._stream(x.device, 0, seed)
        c_a = self.sample_counts(x, n0, gen, batch_size).argmax(dim=1)  # selection: (N,)
        n_a = self.sample_counts(x, n, gen, batch_size).gather(1, c_a[:, None]).squeeze(1)  # estimation: (N,)
        p_low, radius = cohen_radius(n_a, n, alpha, self.sigma)
        return self._certificate(c_a, p_low, radius, alpha, n_a, torch.full_like(n_a, n0 + n),
                                 self._info("cohen", n0=n0, n=n))

    def certify_two_class(self, x: Tensor, n0: int, n: int, alpha: float = 0.001, *,
                          batch_size: Optional[int] = None, seed: Optional[int] = None) -> Certificate:
        """CERTIFY with Theorem 1's two-class radius ``sigma / 2 (Phi^-1(pA_lower) - Phi^-1(pB_upper))``
        and simultaneous bounds (see :func:`two_class_radius`); larger than :meth:`certify` when the
        runner-up class is rare among the other classes' mass. Holds with probability >= 1 - alpha.
        ``p_upper`` of the certificate holds ``pB_upper``."""
        self._validate(x, alpha, batch_size, n0=n0, n=n)
        k = self._infer_classes(x)
        need = min_samples_two_class(alpha, k)
        if n < need:
            raise ValueError(f"n={n} cannot certify anything with the two-class bound at alpha={alpha} and {k} "
                             f"classes; use n >= {need}")
        gen = self._stream(x.device, 0, seed)
        c_a = self.sample_counts(x, n0, gen, batch_size).argmax(dim=1)
        counts = self.sample_counts(x, n, gen, batch_size)
        n_a = counts.gather(1, c_a[:, None]).squeeze(1)
        n_b = counts.scatter(1, c_a[:, None], -1).amax(dim=1).clamp_min(0)  # runner-up among the others
        p_low, p_b, radius = two_class_radius(n_a, n_b, n, alpha, self.sigma, k)
        cert = self._certificate(c_a, p_low, radius, alpha, n_a, torch.full_like(n_a, n0 + n),
                                 self._info("two-class", n0=n0, n=n))
        cert.p_upper = torch.as_tensor(p_b, dtype=torch.float64, device=x.device)
        return cert

    def _certificate(self, c_a: Tensor, p_low: np.ndarray, radius: np.ndarray, alpha: float, count: Tensor,
                     samples: Tensor, info: dict) -> Certificate:
        dev = c_a.device
        r = torch.as_tensor(radius, dtype=torch.float64, device=dev)
        abstain = r < 0
        return Certificate(
            prediction=torch.where(abstain, torch.full_like(c_a, -1), c_a),
            radius=r.clamp_min(0.0),
            abstain=abstain,
            norm="l2",
            alpha=alpha,
            samples=samples,
            count=count,
            p_lower=torch.as_tensor(p_low, dtype=torch.float64, device=dev),
            info=info,
        )

    # -- adaptive sampling ---------------------------------------------------------------
    def certify_adaptive(self, x: Tensor, n0: int, n_max: int, alpha: float = 0.001, *,
                         radius: "float | Sequence[float] | None" = None, schedule: "str | Sequence[int]" = "auto",
                         floor: float = 0.0, futility: float = 0.01, final_share: float = 0.9,
                         batch_size: Optional[int] = None, seed: Optional[int] = None) -> Certificate:
        """CERTIFY with per-input early stopping and the same guarantee (probability >= 1 - alpha).

        ``cA`` is selected from ``n0`` draws as in :meth:`certify`. Estimation draws arrive in
        blocks up to the looks of an :class:`~robustlab.defenses.smoothing_adaptive.AdaptivePlan`
        (``schedule``: ``"auto"``, ``"geometric"`` or cumulative sizes ending at ``n_max``). Look
        ``j``'s one-sided Clopper-Pearson bound has level ``alpha_j``: ``final_share * alpha`` at
        ``n_max``, the rest split evenly over the earlier looks; by the union bound all looks hold
        together with probability >= 1 - alpha, so whatever the stopping rule, the reported
        ``pA_lower`` (the best over the looks an input saw) and its radius ``sigma *
        Phi^-1(pA_lower)`` are as valid as fixed-``n`` CERTIFY's.

        An input stops when its radius reaches the largest of ``radius`` (the radii of interest,
        e.g. the radii of a certified-accuracy curve); when the next radius of interest, or any
        radius above ``floor``, is out of reach even if all remaining samples agreed; or, with
        ``futility > 0``, when it is out of reach at an optimistic projection of its rate. With
        ``radius=None`` certified inputs use all ``n_max`` samples and only hopeless ones stop.
        Stopped inputs cost no further forward passes; the certificate's ``samples`` holds the
        model evaluations each input used (``n0`` included) and ``info["stop"]`` how many inputs
        stopped for each reason.
        """
        self._validate(x, alpha, batch_size, n0=n0, n_max=n_max)
        plan = AdaptivePlan.build(n_max, alpha, self.sigma, radius=radius, schedule=schedule, floor=floor,
                                  futility=futility, final_share=final_share)
        gen = self._stream(x.device, 0, seed)
        n = x.shape[0]
        c_a = self.sample_counts(x, n0, gen, batch_size).argmax(dim=1)
        n_a = torch.zeros(n, dtype=torch.long, device=x.device)
        used = torch.zeros(n, dtype=torch.long, device=x.device)
        best_p = np.zeros(n)
        radius_np = np.full(n, -1.0)
        reason = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        drawn = 0
        for j, look in enumerate(plan.looks):
            idx = torch.as_tensor(active, device=x.device)
            block = self.sample_counts(x.index_select(0, idx), look - drawn, gen, batch_size)
            n_a[idx] += block.gather(1, c_a[idx, None]).squeeze(1)
            used[idx] = look
            drawn = look
            bp, rad, why = plan.step(n_a[idx].cpu().numpy(), j, best_p[active])
            best_p[active], radius_np[active], reason[active] = bp, rad, why
            active = active[why == 0]
            if active.size == 0:
                break
        stops = {name: int((reason == i).sum()) for i, name in enumerate(REASONS) if i > 0}
        info = self._info("adaptive", n0=n0, n_max=n_max, looks=list(plan.looks), alpha_per_look=plan.alpha_look,
                          radii=list(plan.radii), floor=plan.floor, futility=plan.futility, stop=stops)
        return self._certificate(c_a, best_p, radius_np, alpha, n_a, used + n0, info)
