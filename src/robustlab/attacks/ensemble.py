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

The default evaluation preset built from these, ``standard(threat)``, lives with the attack
registry (:mod:`robustlab.attacks.registry`): imports point one way, registry -> ensemble.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack, RawResult


class WorstCase(Attack):
    """Per-sample worst case over ``attacks`` (see the module docstring for the two modes)."""

    def __init__(self, attacks: Sequence[Attack], *, label: Optional[str] = None) -> None:
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

    @property
    def name(self) -> str:
        return self.label or "WorstCase[" + ",".join(a.name for a in self.attacks) + "]"

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
        for i, att in enumerate(self.attacks):
            todo = everyone if tm is None else everyone[~done]
            if todo.numel() == 0:
                break
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
            else:
                better = res.success & (res.distance < best[todo])
                out[todo[better]] = res.x_adv[better]
                best[todo[better]] = res.distance[better]
                broken_by[todo[better]] = i
                done[todo] |= res.success
        return RawResult(out, iterations, queries, info={"broken_by": broken_by, "attacks": [a.name for a in self.attacks]})
