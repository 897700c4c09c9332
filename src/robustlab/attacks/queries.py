"""Query accounting for black-box attacks: the model seen through a counting, gradient-free oracle.

Black-box attacks never touch the model directly. A **score-based** attack (Square, NATTACK,
one-pixel) gets a :class:`ScoreOracle`: ``oracle(x, idx)`` returns scores (logits, or softmax
probabilities) computed under ``torch.no_grad`` and detached, so no gradient can leak. A
**decision-based** attack (HopSkipJump) gets a :class:`LabelOracle`, which returns only the
predicted labels (and whether they are adversarial).

Every call names, for each row of ``x``, the sample of the batch it belongs to (``idx``, repeats
allowed: a population of candidates for one image costs one query per candidate), and the oracle
adds one query per row to that sample's count. ``counts`` therefore equals, exactly, the number of
model evaluations spent on each sample; it is what :class:`robustlab.attacks.AttackResult` reports
as ``queries``. A per-sample ``budget`` is enforced here as a safety net: a call that would take a
sample past its budget raises ``RuntimeError`` before the model is evaluated (attacks plan their
calls with :meth:`ScoreOracle.remaining` so this never fires). Samples that succeed are simply no
longer queried by the attacks, so they stop costing queries.

The harness around every attack (:meth:`robustlab.attacks.Attack.attack`) evaluates the model once
on the clean batch and once on the final ``x_adv`` to judge success itself; those two passes are
not the attack's queries and are not counted.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from robustlab._checks import check_positive


def check_budget(value: object, name: str = "queries") -> int:
    """A query/iteration/population budget: a positive integer (``bool`` refused)."""
    return int(check_positive(value, name, integer=True))


class ScoreOracle:
    """Scores of ``model`` without gradients, one query counted per evaluated row.

    Args:
        model: the classifier (already in eval mode: the attack harness puts it there).
        n: number of samples in the batch being attacked (``counts`` has shape (n,)).
        budget: per-sample query budget (``None``: unlimited).
        output: ``"logits"`` or ``"probs"`` (softmax), what the attacker observes.
    """

    def __init__(self, model: nn.Module, n: int, device: torch.device, *, budget: Optional[int] = None,
                 output: str = "logits") -> None:
        if output not in ("logits", "probs"):
            raise ValueError(f"output must be 'logits' or 'probs', got {output!r}")
        self._model = model
        self.budget = None if budget is None else int(budget)
        self.output = output
        self.counts = torch.zeros(int(n), dtype=torch.long, device=device)

    def remaining(self, idx: Optional[Tensor] = None) -> Tensor:
        """Queries each sample may still spend (a large number when there is no budget)."""
        counts = self.counts if idx is None else self.counts[idx]
        if self.budget is None:
            return torch.full_like(counts, torch.iinfo(torch.long).max // 4)
        return (self.budget - counts).clamp_min(0)

    def _charge(self, idx: Tensor) -> None:
        if idx.dim() != 1:
            raise ValueError(f"idx must be a 1-D tensor of sample indices, got shape {tuple(idx.shape)}")
        if self.budget is not None and idx.numel():
            after = self.counts.index_add(0, idx, torch.ones_like(idx))
            if bool((after > self.budget).any()):
                worst = int(after.max())
                raise RuntimeError(f"query budget exceeded: a sample would use {worst} queries, budget {self.budget}")
            self.counts = after
        else:
            self.counts.index_add_(0, idx, torch.ones_like(idx))

    def _evaluate(self, x: Tensor, idx: Tensor) -> Tensor:
        if x.shape[0] != idx.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but idx names {idx.shape[0]} samples")
        self._charge(idx)
        with torch.no_grad():
            return self._model(x.detach()).detach()

    def __call__(self, x: Tensor, idx: Tensor) -> Tensor:
        """Scores (rows of ``x``, K); row ``i`` is charged to sample ``idx[i]``."""
        logits = self._evaluate(x, idx)
        return logits.softmax(dim=1) if self.output == "probs" else logits


class LabelOracle(ScoreOracle):
    """Decision-based view: only the top-1 label of each query (one query counted per row)."""

    def __init__(self, model: nn.Module, n: int, device: torch.device, *, budget: Optional[int] = None) -> None:
        super().__init__(model, n, device, budget=budget, output="logits")

    def __call__(self, x: Tensor, idx: Tensor) -> Tensor:
        """Predicted labels (rows of ``x``,), int64."""
        return self._evaluate(x, idx).argmax(dim=1)

    def is_adversarial(self, x: Tensor, idx: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
        """Bool per row: label != ``y[row]`` (untargeted) or == ``target[row]`` (targeted).

        ``y`` and ``target`` are aligned with the rows of ``x`` (not with ``idx``'s samples).
        """
        pred = self(x, idx)
        return pred != y if target is None else pred == target
