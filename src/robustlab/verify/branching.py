"""Which unstable ReLU to split: BaBSR scores, filtered by them, decided by smart branching.

**BaBSR** (Bunel et al. 2020, arXiv:1909.06588, Sec. 5.1) estimates, from one backward pass, how
much fixing an unstable neuron ``j`` improves the domain's bound. With ``lam`` the coefficient of
its output ``h_j = relu(z_j)`` in the bound, ``[l, u]`` its bounds, the chord
``h_j <= d z_j + b`` (``d = u / (u - l)``, ``b = -l d``) used where ``lam < 0`` and the lower line
``a z_j`` where ``lam >= 0``, fixing the neuron

* removes the chord's intercept: a gain ``-min(lam, 0) b >= 0`` (the *intercept score*);
* changes the slope through which ``z_j`` enters the bound from ``s`` (``d`` or ``a``) to 1 (active)
  or 0 (inactive); with ``z_j`` proxied by the constant ``c_j`` of the affine map into the layer
  (BaBSR's approximation), by ``lam (1 - s) c_j`` or ``-lam s c_j``.

The score is the intercept gain plus the worse of the two slope changes (the weaker child decides
how much the split helps).

**Filtered smart branching** (FSB, De Palma et al. 2021, arXiv:2104.06718, Sec. 5): the top
``k`` neurons by BaBSR score and the top ``k`` by intercept score are each tried: both children
are bounded with the parent's slopes and multipliers by one backward pass (all domains and
candidates in one batch), and the candidate whose children's bounds are best (their minimum, or
their maximum with ``reduce="max"``) is split.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustlab.verify.beta import BetaCrown

BRANCHINGS = ("fsb", "babsr")


def scores(engine: BetaCrown, pick: Tensor, rx: list, alpha: list, records: list) -> tuple[Tensor, Tensor]:
    """BaBSR and intercept scores (N, M) over all layers' unstable neurons (compact, layer after layer;
    M the total), for each domain's spec row ``pick`` (N,), from the domains' relaxations ``rx``;
    neurons that are not relaxed in a domain (split or stable there) get ``-inf``."""
    n = pick.numel()
    dom = torch.arange(n)
    babsr, intercept = [], []
    ninf = torch.tensor(float("-inf"), dtype=torch.float64)
    for k, layer in enumerate(engine.relus):
        if layer.m == 0:
            continue
        lam = records[k][pick, dom].to(torch.float64)  # (N, m): coefficient of the layer's output
        a = alpha[k][pick, dom].to(torch.float64)
        d, b = rx[k].a_up.to(torch.float64), rx[k].b_up.to(torch.float64)
        gain = -lam.clamp(max=0) * b
        slope = torch.where(lam < 0, d, a)
        change = torch.minimum(lam * (1 - slope) * layer.bias, -lam * slope * layer.bias)
        free = rx[k].free
        babsr.append(torch.where(free, gain + change, ninf))
        intercept.append(torch.where(free, gain, ninf))
    if not babsr:
        empty = torch.zeros(n, 0, dtype=torch.float64)
        return empty, empty
    return torch.cat(babsr, 1), torch.cat(intercept, 1)


def _locate(engine: BetaCrown, flat: Tensor) -> tuple[Tensor, Tensor]:
    """Compact positions over all layers -> (index into engine.relus, neuron within the layer)."""
    sizes = torch.tensor([layer.m for layer in engine.relus])
    ends = sizes.cumsum(0)
    layer_idx = torch.searchsorted(ends, flat, right=True)
    start = ends - sizes
    return layer_idx, flat - start[layer_idx]


def choose(engine: BetaCrown, pick: Tensor, rx: list, alpha: list, beta: list, records: list, *,
           method: str = "fsb", candidates: int = 5, reduce: str = "min") -> tuple[Tensor, Tensor, Tensor]:
    """The neuron to split in each domain: (layer index into ``engine.relus`` (N,), compact neuron (N,),
    has-a-relaxed-neuron (N,) bool). ``rx``: the domains' float32 relaxations."""
    babsr, intercept = scores(engine, pick, rx, alpha, records)
    n = pick.numel()
    if babsr.shape[1] == 0:
        zero = torch.zeros(n, dtype=torch.long)
        return zero, zero, torch.zeros(n, dtype=torch.bool)
    has_free = torch.isfinite(intercept).any(1)
    if method == "babsr":
        # Ties (e.g. all zero) broken towards the larger intercept.
        best = (babsr + 1e-9 * torch.where(torch.isfinite(intercept), intercept, 0)).argmax(1)
        layer_idx, neuron = _locate(engine, best)
        return layer_idx, neuron, has_free
    k = min(candidates, babsr.shape[1])
    top_s = babsr.topk(k, dim=1)
    top_i = intercept.topk(k, dim=1)
    cand = torch.cat([top_s.indices, top_i.indices], 1)  # (N, 2k)
    valid = torch.isfinite(torch.cat([top_s.values, top_i.values], 1))
    layer_idx, neuron = _locate(engine, cand)
    value = engine.candidate_bounds(pick, rx, alpha, beta, layer_idx, neuron)  # (N, 2k, 2)
    value = value.amin(2) if reduce == "min" else value.amax(2)
    value = torch.where(valid, value.to(torch.float64), torch.tensor(float("-inf"), dtype=torch.float64))
    best = value.argmax(1)
    dom = torch.arange(n)
    return layer_idx[dom, best], neuron[dom, best], has_free
