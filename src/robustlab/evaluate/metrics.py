"""Robustness metrics from per-sample records: functional, tensor in, report objects out.

Every accuracy is a binomial proportion over the evaluated images, reported with a confidence
interval (:func:`robustlab.stats.wilson` by default, :func:`robustlab.stats.clopper_pearson` on
request), because a test set is a sample.

Conventions (per sample ``i``): ``correct[i]`` = the clean prediction equals the label;
``success[i]`` = an attack returned a misclassified point of the ball; an image is *robust* at
``eps`` when it is correct and no adversarial example within distance ``eps`` was found
(``robust_at``). The smallest adversarial distance found (``min_distance``) is 0 for
misclassified images and ``inf`` where no attack succeeded.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.report.schema import Rate, Summary, TransferMatrix
from robustlab.stats import clopper_pearson, wilson

#: Relative tolerance when comparing a found distance with a radius (projections are exact up
#: to float rounding of ``x + delta - x``).
DISTANCE_RTOL = 1e-5


# -- proportions ---------------------------------------------------------------------------------


def rate_counts(k: int, n: int, *, alpha: float = 0.05, method: str = "wilson") -> Rate:
    """``k / n`` with its two-sided ``1 - alpha`` interval (``wilson`` or ``clopper-pearson``);
    ``n == 0`` gives value 0 and the interval [0, 1]."""
    k, n = int(k), int(n)
    if method == "wilson":
        lo, hi = wilson(k, n, alpha)
    elif method == "clopper-pearson":
        lo, hi = clopper_pearson(k, n, alpha)
    else:
        raise ValueError(f"method must be 'wilson' or 'clopper-pearson', got {method!r}")
    return Rate(k / n if n else 0.0, float(lo), float(hi), k, n, method, float(alpha))


def rate(mask: Tensor, *, alpha: float = 0.05, method: str = "wilson") -> Rate:
    """The fraction of True entries of a boolean tensor, with its confidence interval."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    return rate_counts(int(mask.sum()), int(mask.numel()), alpha=alpha, method=method)


def clean_accuracy(labels: Tensor, clean_pred: Tensor, **kw) -> Rate:
    """Fraction of images whose clean prediction equals the label."""
    return rate(clean_pred == labels, **kw)


def robust_mask(correct: Tensor, success: Tensor) -> Tensor:
    """Robust against one attack: correct and the attack failed."""
    return correct & ~success


def robust_accuracy(correct: Tensor, success: Tensor, **kw) -> Rate:
    """Robust accuracy against one attack at one radius."""
    return rate(robust_mask(correct, success), **kw)


def success_rate(correct: Tensor, success: Tensor, **kw) -> Rate:
    """Attack success rate among the correctly classified images."""
    return rate_counts(int((success & correct).sum()), int(correct.sum()), **kw)


# -- distances -------------------------------------------------------------------------------------


def found_distance(correct: Tensor, success: Tensor, distance: Tensor) -> Tensor:
    """Per-sample distance of an adversarial example the attack found on a correct image; ``inf``
    elsewhere (misclassified images are handled by :func:`min_distance`)."""
    inf = torch.full_like(distance, math.inf)
    return torch.where(correct & success, distance, inf)


def min_distance(correct: Tensor, found: Sequence[Tensor]) -> Tensor:
    """Smallest adversarial distance found per sample over several ``found_distance`` tensors:
    0 for misclassified images, ``inf`` where nothing was found."""
    best = torch.full(correct.shape, math.inf, dtype=torch.float64)
    for d in found:
        best = torch.minimum(best, d.double().cpu())
    return torch.where(correct.cpu(), best, torch.zeros_like(best))


def within(distance: Tensor, eps: float) -> Tensor:
    """``distance <= eps`` up to float rounding (:data:`DISTANCE_RTOL`)."""
    return distance <= eps + DISTANCE_RTOL * max(1.0, eps)


def robust_at(correct: Tensor, min_dist: Tensor, eps: float) -> Tensor:
    """Robust at radius ``eps``: correct and no adversarial example within ``eps`` was found."""
    return correct.cpu() & ~within(min_dist, eps)


def eps_curve(correct: Tensor, min_dist: Tensor, eps: Sequence[float], **kw) -> list[Rate]:
    """Robust accuracy as a function of eps (the eps-robustness curve): non-increasing by
    construction, since an adversarial example within ``eps`` is one within every larger radius."""
    return [rate(robust_at(correct, min_dist, float(e)), **kw) for e in eps]


def summary(values: Tensor) -> Summary:
    """Count, mean, min, quartiles, 10/90th percentiles and max of the finite entries."""
    v = values.detach().double().cpu().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return Summary(0)
    q = torch.quantile(v, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)).tolist()
    return Summary(int(v.numel()), float(v.mean()), float(v.min()), q[0], q[1], q[2], q[3], q[4], float(v.max()))


def perturbation_norms(x_adv: Tensor, x: Tensor) -> dict[str, Tensor]:
    """Per-sample ``linf``, ``l2`` and ``l0`` (changed pixels, any channel) of ``x_adv - x``."""
    delta = (x_adv - x).reshape(x.shape[0], x.shape[1], -1)  # (N, C, H*W)
    flat = delta.reshape(x.shape[0], -1)  # (N, D)
    return {
        "linf": flat.abs().amax(dim=1),
        "l2": flat.norm(p=2, dim=1),
        "l0": (delta.abs().amax(dim=1) > 0).sum(dim=1).to(x.dtype),
    }


def histogram(values: Tensor, bins: int = 20, upper: Optional[float] = None) -> tuple[list[float], list[int]]:
    """Equal-width histogram of the finite entries over ``[0, upper]`` (default: their max):
    ``(edges (bins + 1), counts (bins))``."""
    v = values.detach().double().cpu().flatten()
    v = v[torch.isfinite(v)]
    top = float(upper) if upper is not None else (float(v.max()) if v.numel() else 1.0)
    top = top if top > 0 else 1.0
    counts = torch.histc(v.clamp(0, top), bins=bins, min=0.0, max=top) if v.numel() else torch.zeros(bins)
    edges = torch.linspace(0.0, top, bins + 1, dtype=torch.float64)
    return edges.tolist(), [int(c) for c in counts.tolist()]


# -- certificates and intervals ------------------------------------------------------------------


def certified_curve(labels: Tensor, prediction: Tensor, radius: Tensor, abstain: Tensor, radii: Sequence[float],
                    **kw) -> list[Rate]:
    """Certified accuracy at each radius ``r``: certified prediction correct, not abstained and
    ``radius >= r`` (Cohen et al. 2019, Sec. 4)."""
    ok = (prediction.cpu() == labels.cpu()) & ~abstain.cpu()
    return [rate(ok & (radius.cpu() >= float(r)), **kw) for r in radii]


def radius_grid(max_radius: float, points: int = 41) -> list[float]:
    """Radii 0 .. ``max_radius`` for a certified-accuracy curve."""
    top = max(float(max_radius), 1e-6)
    return [top * i / (points - 1) for i in range(points)]


def norm_factor(cert_norm: str, threat_norm: str, dim: int) -> Optional[float]:
    """``c = sup ||d||_q / ||d||_p`` for ``q = cert_norm``, ``p = threat_norm`` in ``dim`` dimensions:
    a certified q-ball of radius ``r`` contains the p-ball of radius ``r / c``. None when no finite
    factor exists (l0 against another norm)."""
    if cert_norm == threat_norm:
        return 1.0
    if "l0" in (cert_norm, threat_norm):
        return None
    order = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
    q, p = order[cert_norm], order[threat_norm]
    if q >= p:  # ||d||_q <= ||d||_p when q >= p
        return 1.0
    inv = (1.0 / q) - (0.0 if p == math.inf else 1.0 / p)  # ||d||_q <= dim^(1/q - 1/p) ||d||_p
    return float(dim) ** inv


def robustness_intervals(correct: Tensor, lower: Tensor, upper: Tensor) -> dict[str, float]:
    """Summary of per-sample intervals ``[lower, upper]`` (certified radius, smallest adversarial
    distance found) over the correct images: how many are closed from above (an adversarial
    example was found), certified above 0, and the median gap where both are finite."""
    c = correct.cpu()
    lo, up = lower.double().cpu()[c], upper.double().cpu()[c]
    n = int(c.sum())
    finite = torch.isfinite(up)
    gap = (up - lo)[finite & (lo > 0)]
    return {
        "n": n,
        "upper_found": float(finite.float().mean()) if n else 0.0,
        "lower_positive": float((lo > 0).float().mean()) if n else 0.0,
        "median_gap": float(gap.median()) if gap.numel() else float("nan"),
    }


# -- transfer ------------------------------------------------------------------------------------


def transfer_matrix(
    models: Mapping[str, nn.Module],
    images: Tensor,
    labels: Tensor,
    make_attack: Callable[[], "object"],
    *,
    batch_size: int = 256,
    alpha: float = 0.05,
) -> TransferMatrix:
    """Robust accuracy of every target on adversarial examples crafted on every source.

    ``make_attack()`` returns a fixed-budget attack (``.attack(model, x, y)``; its threat model and
    name label the matrix); for each source model its adversarial examples (crafted in batches of
    ``batch_size``) are classified by every target; an entry counts images the target classifies
    correctly and that the source's adversarial example does not fool. The diagonal is the
    white-box attack.
    """
    from robustlab.model_ops import eval_mode, model_device

    probe = make_attack()
    threat = getattr(probe, "threat", None)
    if threat is None:
        raise ValueError("make_attack() must return an attack with a threat model (a fixed-budget attack)")
    names = list(models)
    robust = torch.zeros(len(names), len(names), dtype=torch.long)
    n = int(labels.shape[0])
    for i in range(0, n, batch_size):
        x, y = images[i : i + batch_size], labels[i : i + batch_size]
        correct = {}
        for t, target in models.items():
            dev = model_device(target, x.device)
            with eval_mode(target), torch.no_grad():
                correct[t] = (target(x.to(dev)).argmax(1) == y.to(dev)).cpu()
        for j, (s, source) in enumerate(models.items()):
            dev = model_device(source, x.device)
            x_adv = make_attack().attack(source, x.to(dev), y.to(dev)).x_adv
            for k, (t, target) in enumerate(models.items()):
                tdev = model_device(target, x.device)
                with eval_mode(target), torch.no_grad():
                    fooled = (target(x_adv.to(tdev)).argmax(1) != y.to(tdev)).cpu()
                robust[k, j] += int((correct[t] & ~fooled).sum())
    table = [[rate_counts(int(robust[k, j]), n, alpha=alpha) for j in range(len(names))] for k in range(len(names))]
    return TransferMatrix(threat.norm, float(threat.eps), probe.name, names, names, table)  # type: ignore[arg-type]
