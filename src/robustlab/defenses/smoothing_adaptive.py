"""Adaptive sample sizes for randomized-smoothing certification: the statistics, on counts only.

Cohen et al.'s CERTIFY (arXiv:1902.02918, Alg. 1) draws a fixed ``n`` noisy samples per input. Most
inputs do not need them all: one whose samples all agree reaches any radius of interest long before
``n``, and one that is hopeless shows it early. :class:`AdaptivePlan` decides, from the counts
alone, when an input may stop, while keeping Cohen's guarantee.

The statistics (a group-sequential test with a Bonferroni split):

* Samples arrive in blocks up to cumulative sizes ``n_1 < n_2 < ... < n_L = n_max`` (the *looks*),
  fixed before any sample is drawn. With ``k_j`` the count of the selected class ``cA`` after
  ``n_j`` samples, look ``j`` computes the one-sided Clopper-Pearson lower bound
  ``pA_lower_j = B(alpha_j; k_j, n_j - k_j + 1)`` at its own level ``alpha_j``, where
  ``alpha_L = final_share * alpha`` and the earlier looks share the rest evenly,
  ``alpha_j = (1 - final_share) * alpha / (L - 1)``, so ``sum_j alpha_j = alpha``.
* Union bound: ``P(exists j: pA_lower_j > pA) <= sum_j alpha_j = alpha``. On the complementary
  event *every* look's bound is valid, whatever rule decided when to stop and whatever happened
  at other looks; so the certificate ``R = sigma * Phi^-1(max_{j <= stop} pA_lower_j)`` (Cohen et
  al., Thm. 1 with ``pB = 1 - pA``) holds with probability at least ``1 - alpha``, exactly the
  guarantee of fixed-``n`` CERTIFY. Abstain when ``max_j pA_lower_j <= 1/2``.
* The stopping rules only decide *where to spend samples*; none of them affects validity:

  - *target*: the certified radius reached the largest radius of interest;
  - *futile*: the next radius of interest above the current one (for an abstaining input the
    smallest one), or any radius above ``floor``, is out of reach even if every remaining sample
    agreed with ``cA`` (``R`` at every later look with ``k_j + (n_l - n_j)`` successes): a
    deterministic rule;
  - *projected* (``futility > 0``): the same, when the remaining samples succeed at the optimistic
    rate ``p_up``, the one-sided ``1 - futility`` Clopper-Pearson upper bound on ``pA``: a
    heuristic that may cost an input its next radius with probability about ``futility``
    (power, not validity).

* The default looks (``schedule="auto"``) put one look where each radius of interest ``r`` first
  becomes reachable, ``n_r = min {n : B(alpha_j; n - d, d + 1) >= Phi(r / sigma)}`` (``d =
  tolerate`` disagreeing samples allowed), geometric looks wherever consecutive looks are more
  than 4x apart, and ``n_max``. An input whose samples (almost) all agree then stops at the first
  look that certifies the largest radius it can reach. No valid procedure can do much better:
  certifying ``r`` at level ``alpha`` needs ``n >= log(1 / alpha) / -log Phi(r / sigma)`` samples
  even if all agree (the probability of ``n`` successes under ``pA = Phi(r / sigma)`` must be at
  most ``alpha``); for ``r = 3 sigma`` and ``alpha = 0.001`` that is 5,114 samples.

The price: at ``n_max`` the bound has level ``final_share * alpha`` instead of ``alpha`` (0.9:
``log(1/0.9) ~ 0.1`` more in ``log(1/alpha)``), and the early looks are stricter. The defaults
(``final_share=0.9``, ``tolerate=1``, ``futility=0.01``) were chosen by simulation on counts
measured on MNIST and Fashion-MNIST *training* images (docs/benchmarks/smoothing.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats as st

from robustlab._checks import check_positive, check_probability
from robustlab.stats import clopper_pearson

#: Stop reasons, as stored per sample (``AdaptivePlan.step`` returns their indices).
REASONS = ("running", "target", "futile", "projected", "n_max")
_SCHEDULES = "'auto', 'geometric' or a sequence of sample sizes"


def radius_from_p(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """``sigma * Phi^-1(p_lower)`` where ``p_lower > 1/2``, else -1 (abstain), float64."""
    p = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sigma * st.norm.ppf(np.clip(p, 0.5, 1.0))
    return np.where(p > 0.5, r, -1.0)


def samples_to_reach(radius: float, sigma: float, alpha: float, tolerate: int = 0, n_max: Optional[int] = None) -> int:
    """Smallest ``n`` for which ``n - tolerate`` successes out of ``n`` certify ``radius`` at level
    ``alpha`` (``pA_lower > 1/2`` for radius 0). Returns ``n_max + 1`` when not reachable by ``n_max``
    (default: search up to 10^12)."""
    target = 0.5 if radius <= 0 else float(st.norm.cdf(radius / sigma))
    hi_cap = int(n_max) if n_max is not None else 10**12

    def ok(n: int) -> bool:
        if n <= tolerate:
            return False
        lo, _ = clopper_pearson(n - tolerate, n, alpha, side="lower")
        return bool(lo > target) if radius <= 0 else bool(lo >= target)

    if not ok(hi_cap):
        return hi_cap + 1
    lo_n, hi_n = tolerate, hi_cap  # ok(lo_n) False, ok(hi_n) True
    while hi_n - lo_n > 1:
        mid = (lo_n + hi_n) // 2
        if ok(mid):
            hi_n = mid
        else:
            lo_n = mid
    return hi_n


@dataclass(frozen=True)
class AdaptivePlan:
    """The looks, the error split and the stopping rules of adaptive certification.

    Build it with :meth:`build`; :meth:`step` applies one look to the counts of many inputs.
    All arrays are numpy (per input); the plan holds no sample data.

    Attributes:
        looks: cumulative sample sizes, strictly increasing, the last is ``n_max``.
        alpha: total failure probability, split over the looks (see :attr:`alphas`).
        sigma: noise level (radii are ``sigma * Phi^-1(pA_lower)``).
        radii: radii of interest, ascending (empty: stop early only by ``floor``).
        floor: an abstaining input stops once no radius above ``floor`` is reachable.
        futility: confidence slack of the *projected* rule (0 disables it).
        final_share: the share of ``alpha`` spent at ``n_max``; the earlier looks split the rest.
    """

    looks: tuple[int, ...]
    alpha: float
    sigma: float
    radii: tuple[float, ...] = ()
    floor: float = 0.0
    futility: float = 0.01
    final_share: float = 0.9

    @property
    def n_max(self) -> int:
        return self.looks[-1]

    @property
    def alphas(self) -> tuple[float, ...]:
        """Level of each look's bound: ``final_share * alpha`` at ``n_max``, the rest split evenly
        over the earlier looks (they sum to ``alpha``)."""
        return _split(self.alpha, len(self.looks), self.final_share)

    @property
    def alpha_look(self) -> float:
        """The smallest level of any look (the earlier looks')."""
        return min(self.alphas)

    @classmethod
    def build(cls, n_max: int, alpha: float, sigma: float, *, radius: "float | Sequence[float] | None" = None,
              schedule: "str | Sequence[int]" = "auto", floor: float = 0.0, futility: float = 0.01,
              final_share: float = 0.9, tolerate: int = 1) -> "AdaptivePlan":
        """Validate the arguments and fix the looks before any sample is drawn.

        ``schedule``: ``"auto"`` (looks where each radius of interest becomes reachable, plus
        geometric ones, see the module docstring), ``"geometric"`` (``n_max / 4^i``, i < 5), or an
        explicit increasing sequence of cumulative sizes ending at ``n_max``.
        """
        n_max = int(check_positive(n_max, "n_max", integer=True))
        alpha = check_probability(alpha, "alpha")
        sigma = float(check_positive(sigma, "sigma"))
        floor = float(check_positive(floor, "floor", allow_zero=True))
        if isinstance(futility, bool) or not isinstance(futility, (int, float)) or not 0.0 <= futility < 1.0:
            raise ValueError(f"futility must be in [0, 1) (0 disables the projected stopping rule), got {futility!r}")
        check_positive(tolerate, "tolerate", allow_zero=True, integer=True)
        final_share = check_probability(final_share, "final_share")
        radii: tuple[float, ...] = ()
        if radius is not None:
            arr = np.atleast_1d(np.asarray(radius, dtype=np.float64))
            if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise ValueError(f"radius must be a radius >= 0 or a non-empty sequence of them, got {radius!r}")
            radii = tuple(sorted(set(float(r) for r in arr)))
        if isinstance(schedule, str):
            if schedule == "geometric":
                looks = _geometric(n_max, 5)
            elif schedule == "auto":
                looks = _auto_looks(n_max, alpha, sigma, radii, floor, tolerate, final_share)
            else:
                raise ValueError(f"schedule must be {_SCHEDULES}, got {schedule!r}")
        else:
            try:
                looks = [int(v) for v in schedule]
            except (TypeError, ValueError):
                raise ValueError(f"schedule must be {_SCHEDULES}, got {schedule!r}") from None
            if not looks or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1 or looks[-1] != n_max:
                raise ValueError(f"schedule must be strictly increasing positive cumulative sample sizes ending at "
                                 f"n_max={n_max}, got {list(schedule)}")
        plan = cls(tuple(looks), alpha, sigma, radii, floor, float(futility), float(final_share))
        need = samples_to_reach(0.0, sigma, plan.alphas[-1])
        if n_max < need:
            raise ValueError(f"n_max={n_max} cannot certify anything at the last look's level "
                             f"{plan.alphas[-1]:.3g} ({len(looks)} looks): use n_max >= {need}")
        return plan

    # -- per-look statistics ---------------------------------------------------------------
    def radius_at(self, k: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        """``(pA_lower, radius)`` at look ``j`` from counts ``k`` out of ``looks[j]`` (radius -1: abstain)."""
        lo, _ = clopper_pearson(k, self.looks[j], self.alphas[j], side="lower")
        return lo, radius_from_p(lo, self.sigma)

    def best_reachable(self, k: np.ndarray, j: int) -> np.ndarray:
        """The largest radius any later look could certify if every remaining sample agreed."""
        best = np.full(np.shape(k), -1.0)
        for later in range(j + 1, len(self.looks)):
            _, r = self.radius_at(np.asarray(k) + (self.looks[later] - self.looks[j]), later)
            best = np.maximum(best, r)
        return best

    def projected(self, k: np.ndarray, j: int) -> np.ndarray:
        """Radius at ``n_max`` if the remaining samples succeed at the optimistic rate ``p_up``."""
        n_j, n_max = self.looks[j], self.n_max
        _, p_up = clopper_pearson(k, n_j, self.futility, side="upper")
        k_final = np.minimum(n_max, np.floor(np.asarray(k) + (n_max - n_j) * p_up))
        return self.radius_at(k_final, len(self.looks) - 1)[1]

    def goal(self, radius: np.ndarray) -> np.ndarray:
        """The smallest radius of interest above ``radius`` (-1 = abstaining: the smallest one,
        where 0 means any certificate); ``inf`` when none is left or no radii were given."""
        radius = np.asarray(radius, dtype=np.float64)
        if not self.radii:
            return np.full(radius.shape, np.inf)
        grid = np.asarray(self.radii)
        idx = np.searchsorted(grid, radius, side="right")  # first grid point > radius
        return np.where(idx < grid.size, grid[np.minimum(idx, grid.size - 1)], np.inf)

    def step(self, k: np.ndarray, j: int, best_p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply look ``j`` to counts ``k`` (successes out of ``looks[j]``).

        ``best_p`` is each input's best lower bound at earlier looks (0 before the first).
        Returns ``(best_p, radius, reason)``: the updated best bound, its radius (-1: abstain) and
        the stop reason, an index into :data:`REASONS` (0: keep sampling).
        """
        k = np.asarray(k, dtype=np.float64)
        p_low, _ = self.radius_at(k, j)
        best_p = np.maximum(np.asarray(best_p, dtype=np.float64), p_low)
        radius = radius_from_p(best_p, self.sigma)
        reason = np.zeros(k.shape, dtype=np.int64)
        if j == len(self.looks) - 1:
            reason[:] = REASONS.index("n_max")
            return best_p, radius, reason
        goal = self.goal(radius)
        if self.radii:
            reason[np.isinf(goal)] = REASONS.index("target")

        def short(r_future: np.ndarray) -> np.ndarray:
            # Out of reach: below the next radius of interest, or no radius above floor at all.
            below_goal = (r_future < goal) if self.radii else np.zeros(r_future.shape, dtype=bool)
            return below_goal | (r_future <= self.floor)

        reason[(reason == 0) & short(self.best_reachable(k, j))] = REASONS.index("futile")
        if self.futility > 0:
            reason[(reason == 0) & short(self.projected(k, j))] = REASONS.index("projected")
        return best_p, radius, reason


def _split(alpha: float, looks: int, final_share: float) -> tuple[float, ...]:
    if looks == 1:
        return (alpha,)
    early = alpha * (1.0 - final_share) / (looks - 1)
    return (early,) * (looks - 1) + (alpha - early * (looks - 1),)


def _geometric(n_max: int, count: int, ratio: int = 4) -> list[int]:
    looks = []
    m = n_max
    while m >= 1 and len(looks) < count:
        looks.insert(0, m)
        m //= ratio
    return sorted(set(looks))


def _auto_looks(n_max: int, alpha: float, sigma: float, radii: tuple[float, ...], floor: float,
                tolerate: int, final_share: float, ratio: float = 4.0) -> list[int]:
    """Looks where each radius of interest first becomes reachable with ``tolerate`` disagreements
    (the *anchors*), geometric looks wherever consecutive looks are more than ``ratio`` apart, and
    ``n_max``; iterated because each look's level depends on how many looks there are."""
    targets = sorted(set(radii) | ({floor} if floor > 0 else set()) | ({0.0} if not radii else set()))
    count = len(targets) + 3
    looks: list[int] = []
    for _ in range(10):
        a_look = _split(alpha, count, final_share)[0]
        reach = (samples_to_reach(r, sigma, a_look, tolerate, n_max) for r in targets)
        anchors = sorted({n for n in reach if n < n_max})
        pts = anchors + [n_max]
        filled = [pts[0]]
        for a, b in zip(pts, pts[1:]):
            gaps = max(0, math.ceil(math.log(b / a) / math.log(ratio) - 1e-9) - 1)
            filled += [int(round(a * (b / a) ** (i / (gaps + 1)))) for i in range(1, gaps + 1)] + [b]
        looks = sorted(set(filled))
        if len(looks) == count:
            break
        count = len(looks)
    return looks
