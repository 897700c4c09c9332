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

``standard(threat)`` is the default evaluation: APGD-CE (5 restarts), APGD-T (targeted DLR, 9
target classes) and FMN capped at eps, built by name from :data:`STANDARD` through the attack registry, so a new
attack (e.g. the black-box Square attack) joins the preset with ``register(...)`` plus one line
appended to ``STANDARD["standard"]``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack, RawResult
from robustlab.threat import ThreatModel


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
        queries: Optional[Tensor] = None
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


#: The presets of :func:`standard`: (registry name, hyperparameter overrides), run in order.
#: Extension point: ``registry.register("square", ...)`` then ``STANDARD["standard"].append(("square", {...}))``.
STANDARD: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "standard": [
        # 5 restarts (each only on the samples still robust): on an FGSM-RS-trained MNIST cnn the
        # restarts broke 5 of the 73 samples a single APGD-CE run left robust, more than APGD-T,
        # FAB-T and Square found together in AutoAttack (benchmarks/bench_attacks.py).
        ("apgd-ce", {"steps": 100, "restarts": 5}),
        ("apgd-t", {"steps": 100, "n_target_classes": 9}),
        ("fmn", {"steps": 100}),
    ],
    "quick": [
        ("apgd-ce", {"steps": 50}),
        ("apgd-t", {"steps": 50, "n_target_classes": 3}),
    ],
}


def standard(threat: ThreatModel, *, seed: int = 0, version: str = "standard") -> WorstCase:
    """The default evaluation for ``threat`` (linf, l2 or l1): APGD-CE (5 restarts), APGD-T and FMN
    (``version="standard"``) or APGD-CE and APGD-T with fewer steps and targets (``"quick"``),
    each only on the samples still robust."""
    from robustlab.attacks import registry

    if not isinstance(threat, ThreatModel):
        raise TypeError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
    if version not in STANDARD:
        raise ValueError(f"version must be one of {', '.join(STANDARD)}, got {version!r}")
    attacks = [registry.get(name, threat, **{"seed": seed, **opts}) for name, opts in STANDARD[version]]
    return WorstCase(attacks, label=f"standard[{version}]" if version != "standard" else "standard")
