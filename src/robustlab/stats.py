"""Binomial confidence intervals: test sets and Monte Carlo samples are samples.

Numpy/scipy on counts only (never in hot paths). Every function is vectorised over arrays of
counts and accepts tensors, arrays or scalars.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats as _st

from robustlab._checks import check_probability

Side = Literal["two-sided", "lower", "upper"]


def _counts(k: object, n: object) -> tuple[np.ndarray, np.ndarray]:
    k_arr = np.asarray(k.detach().cpu().numpy() if hasattr(k, "detach") else k, dtype=np.float64)
    n_arr = np.asarray(n.detach().cpu().numpy() if hasattr(n, "detach") else n, dtype=np.float64)
    if np.any(n_arr < 0) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError(f"counts must satisfy 0 <= k <= n, got k={k!r}, n={n!r}")
    return np.broadcast_arrays(k_arr, n_arr)  # type: ignore[return-value]


def clopper_pearson(k: object, n: object, alpha: float = 0.05, side: Side = "two-sided") -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper & Pearson 1934) interval for a binomial proportion from ``k`` successes in ``n``.

    Two-sided at level ``1 - alpha``: ``[B(alpha/2; k, n-k+1), B(1-alpha/2; k+1, n-k)]`` with ``B`` the
    beta quantile. One-sided (``"lower"``: ``[B(alpha; k, n-k+1), 1]``; ``"upper"``: ``[0, B(1-alpha; k+1, n-k)]``)
    as used by randomized smoothing (Cohen et al. 2019) for ``pA_lower``. ``n == 0`` gives [0, 1].
    """
    check_probability(alpha, "alpha")
    if side not in ("two-sided", "lower", "upper"):
        raise ValueError(f"side must be 'two-sided', 'lower' or 'upper', got {side!r}")
    k_a, n_a = _counts(k, n)
    a = alpha / 2 if side == "two-sided" else alpha
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k_a > 0, _st.beta.ppf(a, k_a, n_a - k_a + 1), 0.0)
        hi = np.where(k_a < n_a, _st.beta.ppf(1 - a, k_a + 1, n_a - k_a), 1.0)
    if side == "lower":
        hi = np.ones_like(hi)
    elif side == "upper":
        lo = np.zeros_like(lo)
    empty = n_a == 0
    lo = np.where(empty, 0.0, lo)
    hi = np.where(empty, 1.0, hi)
    return lo, hi


def wilson(k: object, n: object, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson (1927) score interval at level ``1 - alpha``:
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``z = Phi^-1(1 - alpha/2)``."""
    check_probability(alpha, "alpha")
    k_a, n_a = _counts(k, n)
    z = _st.norm.ppf(1 - alpha / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n_a > 0, k_a / n_a, 0.0)
        denom = 1 + z * z / n_a
        centre = (p + z * z / (2 * n_a)) / denom
        half = z * np.sqrt(p * (1 - p) / n_a + z * z / (4 * n_a * n_a)) / denom
    lo = np.where(n_a > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    hi = np.where(n_a > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    return lo, hi
