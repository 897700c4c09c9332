"""The worst case over several attacks, per sample, and the standard evaluation preset.

``WorstCase([a1, a2, ...])`` runs the attacks in order (AutoAttack's protocol, Croce & Hein 2020,
arXiv:2003.01690):

* **fixed budget** (the attacks share one ThreatModel; minimal-norm attacks given a norm name
  may join, their candidates count only where they fall inside the ball): each attack runs only
  on the samples still robust, and each sample keeps the first successful candidate;
* **minimal norm** (every attack unbounded, one norm): each attack runs on every sample, and each
  sample keeps the successful candidate with the smallest distance.

``AttackResult.info["broken_by"]`` gives, per sample, the index of the attack whose candidate was
kept (-1: none, or already misclassified); ``info["attacks"]`` their names.

**Triage** (fixed budget only; ``WorstCase(attacks, triage=Triage(after=i, low, high))``): the
budget follows the images, as in A3 (Liu et al., "Practical Evaluation of Adversarial Robustness
via Adaptive Auto Attack", CVPR 2022), which stops spending on images the attack cannot move.
After attack ``i``, each image still robust gets its margin ratio

    rho = m(x_i) / m(x),    m(z) = z_y - max_{j != y} z_j    (targeted: max_{j != t} z_j - z_t)

with ``x_i`` that attack's candidate (its highest-loss point). Images with ``low < rho < high``
are *settled*: the attack shrank their margin but left most of it, and the later gradient attacks
skip them. The others go on: ``rho <= low`` (close to the boundary: where later attacks break
images) and ``rho >= high`` (the attack barely moved the margin: the signature of a masked
gradient). The query-based (score-based) attacks still run on settled images (``black_box_all``):
a gradient the model masks can fake a large margin, which only they would see through (on the
linf-PGD-trained MNIST cnn at l2 eps 2, Square breaks images APGD left at 30-90% of their margin).
``info["settled"]`` marks the settled images, ``info["margin_ratio"]`` holds ``rho`` of every image
that reached the triage (NaN elsewhere).

The default evaluation preset built from these, ``standard(threat)``, lives with the attack
registry (:mod:`robustlab.attacks.registry`): imports point one way, registry -> ensemble.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack, RawResult, predict
from robustlab.losses import margin


@dataclass(frozen=True)
class Triage:
    """After attack ``after`` of a fixed-budget :class:`WorstCase`, the images whose margin ratio
    ``rho = m(x_after) / m(x)`` lies strictly between ``low`` and ``high`` skip the later gradient
    attacks, and the query-based ones too unless ``black_box_all`` (module docstring). ``low = 0`` settles every image the attack moved at all, ``high = inf``
    never keeps an image for want of progress."""

    after: int = 0
    low: float = 0.3
    high: float = 0.9
    #: Whether the query-based attacks after the triage also run on the settled images.
    black_box_all: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.after, bool) or not isinstance(self.after, int) or self.after < 0:
            raise ValueError(f"after must be an integer >= 0 (an attack index), got {self.after!r}")
        for name in ("low", "high"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ValueError(f"{name} must be a number, got {v!r}")
        if not 0 <= self.low < self.high:
            raise ValueError(f"need 0 <= low < high, got low={self.low!r}, high={self.high!r}")

    def settles(self, ratio: Tensor) -> Tensor:
        """Bool: the images whose margin ratio lies in the settled band ``(low, high)``."""
        return (ratio > self.low) & (ratio < self.high)


def success_margin(logits: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """``z_y - max_{j != y} z_j`` (targeted: ``max_{j != t} z_j - z_t``): > 0 while not adversarial."""
    return margin(logits, y) if target is None else -margin(logits, target)


class WorstCase(Attack):
    """Per-sample worst case over ``attacks`` (see the module docstring for the two modes)."""

    def __init__(self, attacks: Sequence[Attack], *, label: Optional[str] = None,
                 triage: Optional[Triage] = None) -> None:
        attacks = list(attacks)
        if not attacks:
            raise ValueError("attacks must hold at least one Attack, got an empty sequence")
        for i, a in enumerate(attacks):
            if not isinstance(a, Attack):
                raise TypeError(f"attacks[{i}] must be a robustlab Attack, got {type(a).__name__}")
        threats = {a.threat for a in attacks if a.threat is not None}
        if len(threats) > 1:
            raise ValueError(
                f"all attacks must share one threat model, got {sorted(t.to_dict().__repr__() for t in threats)}"
            )
        norms = {a.norm for a in attacks}
        if len(norms) > 1:
            raise ValueError(f"all attacks must measure distance in one norm, got {sorted(norms)}")
        boxes = {a.box for a in attacks}
        if len(boxes) > 1:
            raise ValueError(f"all attacks must use one input box, got {sorted(boxes)}")
        self.attacks = attacks
        self.threat = threats.pop() if threats else None
        self.distance_norm = norms.pop()
        self.bounds = boxes.pop()
        self.minimal = self.threat is None
        self.query_based = any(a.query_based for a in attacks)
        self.seed = attacks[0].seed
        self.label = label
        if triage is not None:
            if not isinstance(triage, Triage):
                raise TypeError(f"triage must be a robustlab.attacks.ensemble.Triage, got {type(triage).__name__}")
            if self.minimal:
                raise ValueError("triage needs a fixed budget (attacks sharing one ThreatModel); "
                                 "minimal-norm worst cases run every attack on every sample")
            if triage.after >= len(attacks) - 1:
                raise ValueError(f"triage.after must name an attack before the last one (0..{len(attacks) - 2}), "
                                 f"got {triage.after}")
        self.triage = triage

    @property
    def name(self) -> str:
        return self.label or "WorstCase[" + ",".join(a.name for a in self.attacks) + "]"

    def config(self) -> dict:
        out = super().config()
        if self.triage is not None:
            out["triage"] = asdict(self.triage)
        return out

    def _with_draws(self, draws: int) -> "Attack":
        clone = super()._with_draws(draws)
        assert isinstance(clone, WorstCase)
        clone.attacks = [a._with_draws(draws) for a in self.attacks]
        return clone

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator) -> RawResult:
        n, dev = x.shape[0], x.device
        tm = self.threat
        out = x.clone()
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        best = torch.full((n,), float("inf"), device=dev, dtype=x.dtype)
        broken_by = torch.full((n,), -1, dtype=torch.long, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        queries: Optional[Tensor] = torch.zeros(n, dtype=torch.long, device=dev) if self.query_based else None
        everyone = torch.arange(n, device=dev)
        info: dict = {}
        if self.triage is not None:
            settled = torch.zeros(n, dtype=torch.bool, device=dev)
            ratio = torch.full((n,), float("nan"), device=dev, dtype=x.dtype)
            info = {"settled": settled, "margin_ratio": ratio}
        for i, att in enumerate(self.attacks):
            todo = everyone if tm is None else everyone[~done & ~self._skips(att, info, done)]
            if todo.numel() == 0:
                continue
            xs = x[todo]
            res = att.attack(model, xs, y[todo], target=None if target is None else target[todo])
            iterations[todo] += res.iterations
            if res.queries is not None:
                queries = torch.zeros(n, dtype=torch.long, device=dev) if queries is None else queries
                queries[todo] += res.queries
            if tm is not None:
                hit = res.success & tm.contains(res.x_adv, xs)
                out[todo[hit]] = res.x_adv[hit]
                # Still robust: keep this attack's (projected) candidate, for inspection.
                out[todo[~hit]] = tm.project(res.x_adv[~hit], xs[~hit])
                broken_by[todo[hit]] = i
                done[todo[hit]] = True
                if self.triage is not None and i == self.triage.after:
                    self._settle(model, x, y, target, out, done, info["settled"], info["margin_ratio"])
            else:
                better = res.success & (res.distance < best[todo])
                out[todo[better]] = res.x_adv[better]
                best[todo[better]] = res.distance[better]
                broken_by[todo[better]] = i
                done[todo] |= res.success
        return RawResult(out, iterations, queries,
                         info={"broken_by": broken_by, "attacks": [a.name for a in self.attacks], **info})

    def _skips(self, att: Attack, info: dict, done: Tensor) -> Tensor:
        """Bool (N,): the images the triage keeps from ``att`` (the settled ones; none before it)."""
        if self.triage is None or (att.query_based and self.triage.black_box_all):
            return torch.zeros_like(done)
        return info["settled"]

    def _settle(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], out: Tensor, done: Tensor,
                settled: Tensor, ratio: Tensor) -> None:
        """The triage: margin ratios of the images still robust; the settled ones are marked."""
        assert self.triage is not None
        rest = (~done).nonzero().squeeze(1)
        if rest.numel() == 0:
            return
        t = None if target is None else target[rest]
        m0 = success_margin(predict(model, x[rest]), y[rest], t)
        m1 = success_margin(predict(model, out[rest]), y[rest], t)
        # m0 > 0: only images not adversarial at the start reach _run (a tie, m0 = 0, never settles).
        r = torch.where(m0 > 0, m1 / m0.clamp_min(torch.finfo(m0.dtype).tiny), torch.full_like(m0, float("nan")))
        ratio[rest] = r.to(ratio.dtype)
        settled[rest[self.triage.settles(r) & (m1 > 0)]] = True
