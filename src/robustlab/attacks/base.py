"""The attack contract: configured objects, the model comes at call time, success is judged here.

``Attack.attack(model, x, y, *, target=None) -> AttackResult`` is final (Foolbox 3's design): it
validates the inputs once, puts the model in eval mode for the duration (restoring every module's
mode afterwards), skips samples that are already misclassified (they come back unchanged with
distance 0), runs the subclass's ``_run`` on the rest, projects the result into the threat model
and recomputes ``success`` from ``model(x_adv)`` itself, never trusting the attack's own claim.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels, check_logits
from robustlab.losses import is_adversarial
from robustlab.threat import ThreatModel


@dataclass
class AttackResult:
    """Per-sample outcome of an attack on a batch of N inputs.

    Attributes:
        x_adv: adversarial inputs (N, C, H, W), same dtype and device as ``x``.
        success: bool (N,), ``model(x_adv).argmax != y`` (or ``== target``), recomputed.
        distance: (N,) ``||x_adv - x||`` in ``norm`` (0 for samples already misclassified).
        iterations: (N,) int64, optimisation steps (or model queries) spent on each sample.
        norm: the norm of ``distance``.
        queries: (N,) int64 model queries for black-box attacks, else None.
        clean_correct: bool (N,), whether the clean input was classified correctly (as ``y``).
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    iterations: Tensor
    norm: str
    queries: Optional[Tensor] = None
    clean_correct: Optional[Tensor] = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def success_rate(self) -> float:
        """Fraction of all samples for which an adversarial example was found."""
        return float(self.success.float().mean()) if len(self) else 0.0

    @property
    def robust(self) -> Tensor:
        """Bool (N,): correctly classified and the attack failed (robust accuracy = ``robust.mean()``)."""
        correct = self.clean_correct if self.clean_correct is not None else torch.ones_like(self.success)
        return correct & ~self.success

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self) else 0.0

    def adversarial_distance(self) -> Tensor:
        """Distance where the attack succeeded on a correctly classified input, +inf elsewhere."""
        correct = self.clean_correct if self.clean_correct is not None else torch.ones_like(self.success)
        found = self.success & correct
        return torch.where(found, self.distance, torch.full_like(self.distance, float("inf")))

    def to(self, device: "torch.device | str") -> "AttackResult":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return AttackResult(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in kw.items()})

    @staticmethod
    def concat(results: Sequence["AttackResult"]) -> "AttackResult":
        """Join the results of consecutive batches into one."""
        if not results:
            raise ValueError("results must hold at least one AttackResult, got an empty sequence")

        def cat(name: str) -> Optional[Tensor]:
            vals = [getattr(r, name) for r in results]
            return None if any(v is None for v in vals) else torch.cat(vals)

        return AttackResult(
            x_adv=cat("x_adv"),  # type: ignore[arg-type]
            success=cat("success"),  # type: ignore[arg-type]
            distance=cat("distance"),  # type: ignore[arg-type]
            iterations=cat("iterations"),  # type: ignore[arg-type]
            norm=results[0].norm,
            queries=cat("queries"),
            clean_correct=cat("clean_correct"),
            info=dict(results[0].info),
        )


class RawResult(NamedTuple):
    """What ``Attack._run`` returns: candidates for the active samples and the work spent."""

    x_adv: Tensor
    iterations: Optional[Tensor] = None
    queries: Optional[Tensor] = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own ``training`` flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def model_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer (``default`` for parameter-free models)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return default


def input_gradient(
    model: nn.Module,
    x: Tensor,
    objective: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """``(objective values (N,), logits (N, K), d sum(objective) / dx)`` in one forward/backward.

    Gradients are taken with ``torch.autograd.grad`` with respect to ``x`` only, so the model's
    parameters never receive ``.grad``. Samples are independent (the model is in eval mode), so the
    gradient of the sum is the per-sample gradient.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        values = objective(logits)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), logits.detach(), grad.detach()


def predict(model: nn.Module, x: Tensor, batch_size: Optional[int] = None) -> Tensor:
    """Logits without gradient, optionally in chunks of ``batch_size``."""
    with torch.no_grad():
        if batch_size is None or x.shape[0] <= batch_size:
            return model(x)
        return torch.cat([model(c) for c in x.split(batch_size)])


class Attack(abc.ABC):
    """Base class: hyperparameters in ``__init__``, the model at call time.

    Subclasses implement ``_run(model, x, y, target, generator) -> RawResult`` on the samples that
    still need attacking (all correctly classified, or not yet at the target). They may stop early
    per sample; ``iterations`` records the steps each sample used.
    """

    #: The threat model the result is projected into; ``None`` for non-Lp attacks, which then
    #: report ``distance`` in ``distance_norm`` and are only clipped to the box.
    threat: Optional[ThreatModel] = None
    distance_norm: str = "l2"
    seed: int = 0

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, *, target: Optional[Tensor] = None) -> AttackResult:
        """Attack ``model`` at inputs ``x`` (N, C, H, W) in the box with labels ``y`` (N,).

        Returns an :class:`AttackResult`; see the class docstring for the guarantees.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module mapping images to logits, got {type(model).__name__}")
        lower, upper = (self.threat.lower, self.threat.upper) if self.threat is not None else (0.0, 1.0)
        check_images(x, "x", lower=lower, upper=upper)
        n = x.shape[0]
        check_labels(y, n, "y")
        if target is not None:
            check_labels(target, n, "target")
        dev = model_device(model, x.device)
        if dev != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {dev}; move them to the same device")
        x = x.detach()
        y = y.to(x.device)
        target = target.to(x.device) if target is not None else None
        generator = torch.Generator(device=x.device).manual_seed(int(self.seed))
        with eval_mode(model):
            clean_logits = check_logits(predict(model, x), n)
            k = clean_logits.shape[1]
            check_labels(y, n, "y", num_classes=k)
            if target is not None:
                check_labels(target, n, "target", num_classes=k)
                if bool((target == y).any()):
                    raise ValueError("target equals the true label y for some samples; a targeted attack needs target != y")
            clean_correct = clean_logits.argmax(1) == y
            done = is_adversarial(clean_logits, y, target)
            todo = (~done).nonzero().squeeze(1)
            x_adv = x.clone()
            iterations = torch.zeros(n, dtype=torch.long, device=x.device)
            queries: Optional[Tensor] = None
            if todo.numel():
                raw = self._run(
                    model, x[todo], y[todo], None if target is None else target[todo], generator
                )
                cand = raw.x_adv.detach().to(x.dtype)
                if cand.shape != x[todo].shape:
                    raise RuntimeError(
                        f"{type(self).__name__}._run returned shape {tuple(cand.shape)}, expected {tuple(x[todo].shape)}"
                    )
                x_adv[todo] = self._constrain(cand, x[todo])
                if raw.iterations is not None:
                    iterations[todo] = raw.iterations.to(torch.long)
                if raw.queries is not None:
                    queries = torch.zeros(n, dtype=torch.long, device=x.device)
                    queries[todo] = raw.queries.to(torch.long)
            adv_logits = predict(model, x_adv)
            success = is_adversarial(adv_logits, y, target)
        # Samples already adversarial at the start stay exactly x with distance 0.
        norm = self.threat.norm if self.threat is not None else self.distance_norm
        dist_tm = self.threat if self.threat is not None else ThreatModel(norm, 0.0)
        distance = dist_tm.distance(x_adv, x)
        return AttackResult(
            x_adv=x_adv,
            success=success,
            distance=distance,
            iterations=iterations,
            norm=norm,
            queries=queries,
            clean_correct=clean_correct,
            info={"attack": self.name},
        )

    def _constrain(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Final safety net: inside the threat model (if any) and the box."""
        if self.threat is not None:
            return self.threat.project(x_adv, x)
        return x_adv.clamp(0.0, 1.0)

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor], generator: torch.Generator
    ) -> RawResult:
        """Craft adversarial candidates for a batch that still needs attacking."""

    def config(self) -> dict:
        """Hyperparameters, for reports and metadata."""
        out = {"attack": self.name}
        for key, value in vars(self).items():
            if key.startswith("_"):
                continue
            out[key] = value.to_dict() if isinstance(value, ThreatModel) else value
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "attack")
        return f"{self.name}({params})"
