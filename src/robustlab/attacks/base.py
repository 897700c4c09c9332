"""The attack contract: configured objects, the model comes at call time, success is judged here.

``Attack.attack(model, x, y, *, target=None) -> AttackResult`` is final (Foolbox 3's design): it
validates the inputs once, puts the model in eval mode for the duration (restoring every module's
mode afterwards), skips samples that are already misclassified (they come back unchanged with
distance 0), runs the subclass's ``_run`` on the rest, projects the result into the threat model
and recomputes ``success`` from ``model(x_adv)`` itself, never trusting the attack's own claim.

Two kinds of attacks share this contract:

* **fixed-budget** attacks (FGSM, PGD, APGD) take a :class:`ThreatModel` and search its ball;
* **minimal-norm** attacks (Carlini-Wagner, DeepFool, FMN, DDN; ``minimal = True``) search the
  smallest perturbation that changes the decision. Given a norm name (``"l2"``) they are unbounded
  and ``AttackResult.distance`` is the size of the perturbation found; given a ThreatModel their
  result is also projected into its ball, so ``success`` means "found within eps".

Gradients go through :meth:`Attack._gradient` / :meth:`Attack._jacobian`, which average over
``_eot_draws`` forward passes: that is the single hook :class:`robustlab.attacks.EOT` uses to turn
any gradient attack into its Expectation-over-Transformation version.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field, fields
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels, check_logits, forward_checked
from robustlab.attacks.fastpath import FastPath
from robustlab.losses import is_adversarial
from robustlab.model_ops import eval_mode, input_gradient, input_jacobian, model_device, predict  # noqa: F401 (re-exported)
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
        info: the attack's name and optional per-sample tensors (e.g. ``broken_by`` of
            :class:`robustlab.attacks.WorstCase`).
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
        out = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in kw.items()}
        out["info"] = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.info.items()}
        return AttackResult(**out)

    @staticmethod
    def concat(results: Sequence["AttackResult"]) -> "AttackResult":
        """Join the results of consecutive batches into one (per-sample ``info`` tensors too)."""
        if not results:
            raise ValueError("results must hold at least one AttackResult, got an empty sequence")

        def cat(name: str) -> Optional[Tensor]:
            vals = [getattr(r, name) for r in results]
            return None if any(v is None for v in vals) else torch.cat(vals)

        info = dict(results[0].info)
        for key, value in results[0].info.items():
            parts = [r.info.get(key) for r in results]
            if isinstance(value, Tensor) and all(isinstance(p, Tensor) and p.shape[:1] == (len(r),) for p, r in zip(parts, results)):
                info[key] = torch.cat(parts)  # type: ignore[arg-type]
        return AttackResult(
            x_adv=cat("x_adv"),  # type: ignore[arg-type]
            success=cat("success"),  # type: ignore[arg-type]
            distance=cat("distance"),  # type: ignore[arg-type]
            iterations=cat("iterations"),  # type: ignore[arg-type]
            norm=results[0].norm,
            queries=cat("queries"),
            clean_correct=cat("clean_correct"),
            info=info,
        )


class RawResult(NamedTuple):
    """What ``Attack._run`` returns: candidates for the active samples and the work spent.

    ``info`` holds optional per-sample tensors (first dimension = number of active samples, e.g.
    which attack of an ensemble succeeded); the base class scatters them to the whole batch (fill
    value -1 for integers, False for bools, NaN for floats) and puts them into ``AttackResult.info``.
    """

    x_adv: Tensor
    iterations: Optional[Tensor] = None
    queries: Optional[Tensor] = None
    info: Optional[dict] = None


def resolve_threat(
    threat: "ThreatModel | str",
    norms: Sequence[str],
    bounds: tuple[float, float],
    attack: str,
) -> tuple[Optional[ThreatModel], str, tuple[float, float]]:
    """For minimal-norm attacks: ``(threat or None, norm, box)`` from a ThreatModel or a norm name."""
    if isinstance(threat, ThreatModel):
        norm, box = threat.norm, threat.box
        tm: Optional[ThreatModel] = threat
    elif isinstance(threat, str):
        norm = ThreatModel(threat, 0.0).norm  # validates the name, maps aliases
        tm = None
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise ValueError(f"bounds must be (lower, upper) with lower < upper, got {bounds!r}")
        box = (lo, hi)
    else:
        raise TypeError(f"threat must be a robustlab.ThreatModel or a norm name, got {type(threat).__name__}")
    if norm not in norms:
        raise ValueError(f"{attack} supports the norms {', '.join(norms)}, got {norm!r}")
    return tm, norm, box


def scatter_info(info: dict, todo: Tensor, n: int) -> dict:
    """Expand per-sample tensors of the active samples ``todo`` to the whole batch of ``n``."""
    out = {}
    for key, value in info.items():
        if isinstance(value, Tensor) and value.shape[:1] == todo.shape:
            if value.dtype == torch.bool:
                fill = False
            elif value.is_floating_point():
                fill = float("nan")
            else:
                fill = -1
            full = torch.full((n, *value.shape[1:]), fill, dtype=value.dtype, device=value.device)
            full[todo] = value
            out[key] = full
        else:
            out[key] = value
    return out


class Attack(abc.ABC):
    """Base class: hyperparameters in ``__init__``, the model at call time.

    Subclasses implement ``_run(model, x, y, target, generator) -> RawResult`` on the samples that
    still need attacking (all correctly classified, or not yet at the target). They may stop early
    per sample; ``iterations`` records the steps each sample used. They take gradients through
    :meth:`_gradient` / :meth:`_jacobian` (the EOT hook) and draw randomness from ``generator``.
    """

    #: The threat model the result is projected into; ``None`` for unbounded minimal-norm and
    #: non-Lp attacks, which report ``distance`` in ``distance_norm`` and are clipped to ``bounds``.
    threat: Optional[ThreatModel] = None
    distance_norm: str = "l2"
    bounds: tuple[float, float] = (0.0, 1.0)
    #: True for attacks that minimise the perturbation size (their distance is informative).
    minimal: bool = False
    seed: int = 0
    #: Forward passes averaged per gradient (1; :class:`robustlab.attacks.EOT` sets more).
    _eot_draws: int = 1
    #: True for black-box attacks that count model queries (``AttackResult.queries`` is then never None).
    query_based: bool = False
    #: The fast path (:class:`robustlab.attacks.fastpath.FastPath`) ``_run`` searches with; None: off.
    #: Clean logits and the final ``success`` always come from the caller's model itself.
    _fast: Optional[FastPath] = None

    @property
    def box(self) -> tuple[float, float]:
        """The valid input range ``(lower, upper)``."""
        return self.threat.box if self.threat is not None else self.bounds

    @property
    def norm(self) -> str:
        """The norm of ``AttackResult.distance``."""
        return self.threat.norm if self.threat is not None else self.distance_norm

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, *, target: Optional[Tensor] = None) -> AttackResult:
        """Attack ``model`` at inputs ``x`` (N, C, H, W) in the box with labels ``y`` (N,).

        Returns an :class:`AttackResult`; see the class docstring for the guarantees.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module mapping images to logits, got {type(model).__name__}")
        lower, upper = self.box
        check_images(x, "x", lower=lower, upper=upper)
        self._check_input(x)  # attack-specific limits (e.g. pixels <= H*W), before any model call
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
        info: dict = {"attack": self.name}
        with eval_mode(model):
            clean_logits = check_logits(forward_checked(predict, model, x), n)  # names channel/dtype mismatches
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
            queries: Optional[Tensor] = torch.zeros(n, dtype=torch.long, device=x.device) if self.query_based else None
            if todo.numel():
                search = self._fast.wrap(model) if self._fast is not None else model
                raw = self._run(
                    search, x[todo], y[todo], None if target is None else target[todo], generator
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
                if raw.info:
                    info.update(scatter_info(raw.info, todo, n))
            adv_logits = predict(model, x_adv)
            success = is_adversarial(adv_logits, y, target)
        # Samples already adversarial at the start stay exactly x with distance 0.
        norm = self.norm
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
            info=info,
        )

    def _check_input(self, x: Tensor) -> None:
        """Attack-specific checks of the batch (shape-dependent hyperparameters); raise ValueError."""

    def _constrain(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Final safety net: inside the threat model (if any) and the box."""
        if self.threat is not None:
            return self.threat.project(x_adv, x)
        return x_adv.clamp(*self.bounds)

    # -- gradient hooks (EOT averages inside them) ------------------------------------------
    def _gradient(self, model: nn.Module, x: Tensor, objective: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(values, logits, grad)`` of ``objective(model(x))``; see :func:`input_gradient`."""
        return input_gradient(model, x, objective, draws=self._eot_draws)

    def _jacobian(
        self, model: nn.Module, x: Tensor, outputs: Callable[[Tensor], Tensor], columns: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(outputs, logits, J)`` of the ``columns`` outputs; see :func:`input_jacobian`."""
        return input_jacobian(model, x, outputs, columns, draws=self._eot_draws)

    def _with_draws(self, draws: int) -> "Attack":
        """A shallow copy whose gradients average ``draws`` forward passes (used by EOT)."""
        clone = copy.copy(self)
        clone._eot_draws = int(draws)
        return clone

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
        out: dict = {"attack": self.name}
        for key, value in vars(self).items():
            if key.startswith("_"):
                continue
            if isinstance(value, ThreatModel):
                value = value.to_dict()
            elif isinstance(value, Attack):
                value = value.config()
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Attack) for v in value):
                value = [v.config() for v in value]
            out[key] = value
        if self._fast is not None:
            out["fast"] = self._fast.to_dict()
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "attack")
        return f"{self.name}({params})"


class Wrapper(Attack):
    """An attack that runs ``inner`` in a changed setting (EOT, BPDA): it takes over the inner
    attack's threat model, box, distance norm, minimal-norm flag and seed."""

    def __init__(self, attack: Attack) -> None:
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be a robustlab Attack, got {type(attack).__name__}")
        self.inner = attack
        self.threat = attack.threat
        self.distance_norm = attack.distance_norm
        self.bounds = attack.bounds
        self.minimal = attack.minimal
        self.seed = attack.seed
