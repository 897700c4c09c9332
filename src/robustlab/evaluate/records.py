"""The per-sample records of an evaluation: what every attack, baseline and certifier left on each image.

A run (:mod:`robustlab.evaluate.run`) keeps, per image and per result, a few numbers under a key
``kind|norm|eps|name|field`` (:func:`key`): ``kind`` is ``attack`` (the suite's fixed-budget
attacks), ``minimal`` (minimal-norm attacks, eps :data:`UNBOUNDED`), ``noise`` (the black-box
baseline) or ``transfer``; ``field`` is ``success``, ``distance``, ``margin``, the perturbation's
``linf`` / ``l2`` / ``l0`` norms and, for a worst case over members (the ``standard`` preset),
``broken_by``: the index of the member whose candidate was kept (-1: none). Clean predictions are
``clean|*``, certificates ``cert|<i>|*``. :func:`robustlab.evaluate.summarize.model_report`
computes everything in the report from these records (and the check probes) alone.

White box or black box: an image an attack broke counts as broken *by a gradient* unless the attack
only queries the model (``Attack.query_based``: Square, NATTACK, HopSkipJump, one-pixel) or, in a
worst case over members, the member that broke it does (:func:`white_box_success`). The "white box"
numbers of the report and the black-box check rest on this split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["RECORDS_VERSION", "UNBOUNDED", "AttackKind", "Records", "attack_kind", "black_box_success", "eps_key",
           "key", "white_box_success"]

#: The layout of the per-batch record files (a file of another layout is recomputed on resume).
#: 3: ``broken_by`` of worst-case attacks.
RECORDS_VERSION = 3
#: The eps key of minimal-norm attacks (no radius).
UNBOUNDED = None

#: ``{"query_based": bool, "members": [[name, query_based], ...]}`` (members: empty unless a worst case).
AttackKind = Mapping[str, Any]


def eps_key(eps: Optional[float]) -> str:
    return "unbounded" if eps is None else repr(float(eps))


def key(kind: str, norm: str, eps: Optional[float], name: str, what: str) -> str:
    """Record key ``kind|norm|eps|name|field`` (kind: attack, minimal, noise, transfer)."""
    return f"{kind}|{norm}|{eps_key(eps)}|{name}|{what}"


def attack_kind(attack: Any) -> dict[str, Any]:
    """What the records need to know of a built attack: whether it only queries the model and, for a
    worst case over members (``attack.attacks``), each member's name and whether it does, in order
    (the order of ``broken_by``)."""
    members = getattr(attack, "attacks", None)
    return {"query_based": bool(getattr(attack, "query_based", False)),
            "members": [[str(m.name), bool(getattr(m, "query_based", False))] for m in members] if members else []}


@dataclass
class Records:
    """Every per-sample result of a run: tensors keyed as :func:`key` (and ``clean|*``,
    ``cert|<i>|*``), per-batch seconds (``time|*``, summed) and exemplar candidates (``ex|*``)."""

    tensors: dict[str, Tensor]
    times: dict[str, float] = field(default_factory=dict)
    exemplars: dict[str, Tensor] = field(default_factory=dict)

    @staticmethod
    def concat(batches: list[dict[str, Tensor]]) -> "Records":
        keys = list(batches[0])
        tensors, times, ex = {}, {}, {}
        for k in keys:
            parts = [b[k] for b in batches]
            if k.startswith("time|"):
                times[k[5:]] = float(sum(float(p.sum()) for p in parts))
            elif k.startswith("ex|"):
                ex[k] = torch.cat(parts)
            else:
                tensors[k] = torch.cat(parts)
        return Records(tensors, times, ex)

    def get(self, kind: str, norm: str, eps: Optional[float], name: str, what: str) -> Tensor:
        return self.tensors[key(kind, norm, eps, name, what)]

    def find(self, kind: str, norm: str, eps: Optional[float], name: str, what: str) -> Optional[Tensor]:
        return self.tensors.get(key(kind, norm, eps, name, what))

    def seconds(self, kind: str, norm: str, eps: Optional[float], name: str) -> float:
        return self.times.get(key(kind, norm, eps, name, "seconds"), 0.0)

    @property
    def labels(self) -> Tensor:
        return self.tensors["clean|label"]

    @property
    def clean_pred(self) -> Tensor:
        return self.tensors["clean|pred"]

    @property
    def correct(self) -> Tensor:
        return self.clean_pred == self.labels

    @property
    def index(self) -> Tensor:
        """Each record's image index in the evaluated data."""
        return self.tensors.get("clean|index", torch.arange(self.labels.shape[0]))


def white_box_success(records: Records, kinds: Mapping[str, Mapping[str, AttackKind]], kind: str, norm: str,
                      eps: Optional[float], name: str) -> Tensor:
    """Per image: attack ``name`` broke it *with a gradient*. All of its successes for a gradient
    attack; none for a query-based one; for a worst case over members, the images a gradient member
    broke (``broken_by``; the members run in order, each on the images still robust, so an image
    that only the query-based member broke is one every gradient member left robust). Attacks
    missing from ``kinds`` count as gradient attacks."""
    success = records.get(kind, norm, eps, name, "success")
    k = kinds.get(norm, {}).get(name)
    if k is None:
        return success
    members = k.get("members") or []
    if members:
        by = records.find(kind, norm, eps, name, "broken_by")
        if by is None:
            return success
        gradient = torch.tensor([not bool(q) for _, q in members] + [True])  # index -1: no member kept (projected)
        return success & gradient[by.long()]
    return success & ~torch.tensor(bool(k.get("query_based", False)))


def black_box_success(records: Records, kinds: Mapping[str, Mapping[str, AttackKind]], kind: str, norm: str,
                      eps: Optional[float], name: str) -> Tensor:
    """Per image: attack ``name`` broke it by queries alone (the complement of
    :func:`white_box_success` within its successes)."""
    return records.get(kind, norm, eps, name, "success") & ~white_box_success(records, kinds, kind, norm, eps, name)
