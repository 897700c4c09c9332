"""Robustness metrics from per-sample records, with binomial confidence intervals.

Functional and tensor-in, plain-Python-out, so reports and tests can check them by hand.
"""

from __future__ import annotations

from typing import Sequence

import torch

from robustlab.stats import wilson


def rate(mask: torch.Tensor, alpha: float = 0.05) -> dict:
    """``{"value", "ci_low", "ci_high", "k", "n"}`` for the fraction of True entries, Wilson interval."""
    n = int(mask.numel())
    k = int(mask.sum())
    lo, hi = wilson(k, n, alpha)
    return {"value": k / n if n else 0.0, "ci_low": float(lo), "ci_high": float(hi), "k": k, "n": n}


def robust_mask(correct: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """Robust = clean prediction correct and the attack failed."""
    return correct & ~success


def worst_case(correct: torch.Tensor, successes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Robust against every attack: per sample, no attack succeeded."""
    any_success = torch.zeros_like(correct)
    for s in successes:
        any_success |= s
    return robust_mask(correct, any_success)


def distance_summary(distances: torch.Tensor) -> dict:
    """Percentiles of the finite distances (successful attacks on correctly classified samples)."""
    d = distances[torch.isfinite(distances)].double()
    if d.numel() == 0:
        return {"count": 0}
    q = torch.quantile(d, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)).tolist()
    return {"count": int(d.numel()), "mean": float(d.mean()), "p10": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p90": q[4]}
