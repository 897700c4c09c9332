"""The training loop's pluggable adversary: how a clean batch becomes a training loss.

Contract (every adversary, built-in or a user's):

- ``loss(model, x, y, *, generator, eps_scale=1.0) -> Tensor``: the scalar training loss on the
  batch. The loop calls it with the model in **train** mode and back-propagates the result into
  the parameters, so the returned loss must depend on them through a train-mode forward pass.
- Adversaries that *craft* inputs (FGSM, PGD, TRADES, ...) do so with the model in **eval** mode
  (``robustlab.attacks.eval_mode``: BatchNorm statistics are not updated by the crafting passes,
  dropout is off), take gradients with ``torch.autograd.grad`` with respect to the input only
  (never ``.backward()``, which would leave crafting gradients in the parameters' ``.grad``), and
  treat the crafted points as constants (``detach``). The mode is restored before the
  train-mode forward pass that makes the loss.
- ``generator`` is the loop's seeded ``torch.Generator`` on the batch's device: every random draw
  (noise, random starts) comes from it, never from the global RNG, so a run replays exactly.
- ``eps_scale`` in [0, 1] is the linear eps warm-up factor (``min(1, t / eps_warmup_epochs)``,
  updated every batch); adversaries with a radius multiply it by this factor.
- ``config() -> dict``: ``name`` and the hyperparameters, recorded in the model's metadata.
- optionally ``loss_and_logits(...) -> (loss, logits or None)``: the logits of the inputs the
  loss was computed on, which the loop uses for the running training accuracy at no extra cost
  (the default returns None and the epoch's ``train_accuracy`` is left out).

Adversaries are also registered by name in :data:`ADVERSARIES` (with the parameters they take),
which is what ``robustlab train --adversary NAME`` offers: :func:`register_adversary` adds one
without touching the CLI, :func:`from_args` builds one from keyword values or parsed arguments.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive


class Adversary(abc.ABC):
    """Base class of training adversaries; see the module docstring for the contract."""

    name: str = "adversary"

    @abc.abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        """The scalar training loss on batch (x, y); the model is in train mode."""

    def loss_and_logits(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``(loss, logits)``: the logits (N, K) of the inputs the loss was computed on, or None
        when the adversary does not expose them (then no training accuracy is recorded)."""
        return self.loss(model, x, y, generator=generator, eps_scale=eps_scale), None

    def config(self) -> dict:
        """``name`` and hyperparameters (JSON-serialisable), recorded in the model metadata."""
        return {"name": self.name}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


class Standard(Adversary):
    """Empirical risk minimisation: ``mean_i CE(f(x_i), y_i)`` on the clean batch.
    ``adversary=None`` in :func:`~robustlab.defenses.train` means this."""

    name = "none"

    def loss_and_logits(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0
    ) -> tuple[Tensor, Optional[Tensor]]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]


class GaussianNoise(Adversary):
    """Gaussian data augmentation: ``mean_i CE(f(x_i + delta_i), y_i)`` with
    ``delta_i ~ N(0, sigma^2 I)`` drawn from the loop's generator. This is how the base
    classifier of randomized smoothing is trained (Cohen, Rosenfeld, Kolter 2019,
    arXiv:1902.02918, Sec. 4 and their ``train.py``).

    The noisy input is **not** clipped to [0, 1]: the smoothed classifier
    ``g(x) = argmax_c P(f(x + delta) = c)`` samples unclipped noise at prediction and
    certification time, and the base classifier must be trained on that same distribution
    (Cohen et al. train on ``inputs + randn_like(inputs) * sigma`` without clamping).
    ``eps_scale`` is ignored: sigma is not warmed up.
    """

    name = "noise"

    def __init__(self, sigma: float) -> None:
        self.sigma = float(check_positive(sigma, "sigma"))

    def loss_and_logits(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0
    ) -> tuple[Tensor, Optional[Tensor]]:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        logits = model(x + self.sigma * noise)
        return F.cross_entropy(logits, y), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]

    def config(self) -> dict:
        return {"name": self.name, "sigma": self.sigma}


# --------------------------------------------------------------------------------------------
# Registry: adversaries by name, with the parameters each takes (the CLI is built from it).


@dataclass(frozen=True)
class Param:
    """A named parameter of an adversary factory. ``robustlab train`` offers it as
    ``--name-with-dashes``. A value of None means "not given": ``required`` parameters then raise,
    others take ``default`` (which may itself be None, leaving the choice to the factory)."""

    name: str
    type: Callable[[str], Any]
    help: str
    default: Any = None
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class AdversaryEntry:
    """A registered adversary: ``factory(**params) -> Adversary`` and the parameters it takes."""

    name: str
    factory: Callable[..., Adversary]
    params: tuple[Param, ...]
    help: str


ADVERSARIES: dict[str, AdversaryEntry] = {}


def register_adversary(
    name: str,
    factory: Callable[..., Adversary],
    params: "tuple[Param, ...] | list[Param]" = (),
    help: str = "",
    *,
    replace: bool = False,
) -> None:
    """Register ``factory(**{p.name: value for p in params}) -> Adversary`` as ``name``.

    A parameter name shared by several adversaries (``eps``, ``steps``, ...) must have the same
    type everywhere, since the CLI offers it once; defaults may differ per adversary."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"adversary name must be a non-empty string, got {name!r}")
    if name in ADVERSARIES and not replace:
        raise ValueError(f"adversary {name!r} is already registered; pass replace=True to override it")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    params = tuple(params)
    for p in params:
        if not isinstance(p, Param):
            raise TypeError(f"params must be Param objects, got {p!r}")
        for other in ADVERSARIES.values():
            for q in other.params:
                if q.name == p.name and q.type is not p.type:
                    raise ValueError(f"parameter {p.name!r} of adversary {name!r} has type {p.type.__name__}, but "
                                     f"adversary {other.name!r} declares it as {q.type.__name__}")
    ADVERSARIES[name] = AdversaryEntry(name, factory, params, help)


def adversary_names() -> tuple[str, ...]:
    """Names accepted by :func:`from_args` (and ``robustlab train --adversary``)."""
    return tuple(ADVERSARIES)


def cli_params() -> dict[str, Param]:
    """Every parameter of every registered adversary, once per name (for the CLI)."""
    out: dict[str, Param] = {}
    for entry in ADVERSARIES.values():
        for p in entry.params:
            out.setdefault(p.name, p)
    return out


def from_args(name: str, args: "Mapping[str, Any] | Any | None" = None) -> Adversary:
    """Build the adversary registered as ``name``, reading its parameters from ``args`` (a dict,
    or an ``argparse.Namespace``); absent or None values take the parameter's default.

    ``from_args("noise", {"sigma": 0.5})`` is ``GaussianNoise(0.5)``; ``from_args("none")`` is
    ``Standard()``."""
    if name not in ADVERSARIES:
        raise ValueError(f"unknown adversary {name!r}; expected one of {', '.join(ADVERSARIES)}")
    entry = ADVERSARIES[name]
    values: dict[str, Any] = {}
    for p in entry.params:
        v = args.get(p.name) if isinstance(args, Mapping) else getattr(args, p.name, None)
        if v is None:
            if p.required:
                raise ValueError(f"adversary {name!r} needs {p.flag} (parameter {p.name!r}: {p.help})")
            v = p.default
        values[p.name] = v
    adversary = entry.factory(**values)
    if not isinstance(adversary, Adversary):
        raise TypeError(f"the factory of adversary {name!r} returned {type(adversary).__name__}, not an Adversary")
    return adversary


def _threat(norm: str, eps: float) -> Any:
    from robustlab.threat import ThreatModel

    return ThreatModel(norm, eps)


def _adversarial(cls_name: str) -> Any:
    # Imported lazily: robustlab.defenses.adversarial builds on this module.
    from robustlab.defenses import adversarial

    return getattr(adversarial, cls_name)


_NORM = Param("norm", str, "threat model norm for adversarial training (linf, l2, l1)", "linf")
_EPS = Param("eps", float, "threat model radius in [0, 1] pixel units", required=True)
_STEPS = Param("steps", int, "PGD steps of the inner maximisation", 10)
_STEP_SIZE = Param("step_size", float, "attack step size (default: the adversary's own rule)")
_BETA = Param("beta", float, "weight of the robust term (TRADES / MART)", 6.0)

register_adversary("none", lambda: Standard(), (), "standard training (cross-entropy on clean inputs)")
register_adversary("noise", lambda sigma: GaussianNoise(sigma),
                   (Param("sigma", float, "Gaussian noise standard deviation in [0, 1] pixel units", 0.25),),
                   "Gaussian noise augmentation (Cohen et al. 2019), for randomized smoothing")
register_adversary("fgsm-reg", lambda norm, eps, alpha: _adversarial("FGSMRegularized")(_threat(norm, eps), alpha=alpha),
                   (_NORM, _EPS, Param("alpha", float, "clean-loss weight of FGSM-regularised training", 0.5)),
                   "FGSM-regularised objective (Goodfellow et al. 2015)")
register_adversary("fgsm-rs", lambda norm, eps, step_size: _adversarial("FGSMRS")(_threat(norm, eps), step=step_size),
                   (_NORM, _EPS, _STEP_SIZE), "FGSM from a random start, 'fast' adversarial training (Wong et al. 2020)")
register_adversary("pgd", lambda norm, eps, steps, step_size: _adversarial("PGDAdversary")(
                       _threat(norm, eps), steps=steps, step_size=step_size),
                   (_NORM, _EPS, _STEPS, _STEP_SIZE), "PGD adversarial training (Madry et al. 2018)")
register_adversary("trades", lambda norm, eps, beta, steps, step_size: _adversarial("TRADES")(
                       _threat(norm, eps), beta=beta, steps=steps, step_size=step_size),
                   (_NORM, _EPS, _BETA, _STEPS, _STEP_SIZE), "TRADES (Zhang et al. 2019)")
register_adversary("mart", lambda norm, eps, beta, steps, step_size: _adversarial("MART")(
                       _threat(norm, eps), beta=beta, steps=steps, step_size=step_size),
                   (_NORM, _EPS, _BETA, _STEPS, _STEP_SIZE), "MART (Wang et al. 2020)")
