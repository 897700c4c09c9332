"""The training adversary's interface and its registry (no adversary lives here).

The training loop's pluggable adversary: how a clean batch becomes a training loss.

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
- ``set_progress(progress, epoch)`` is called by the loop before every batch with
  ``progress = t / epochs`` in [0, 1) and ``epoch = t``, where ``t = e + i / batches_per_epoch``
  counts the epochs done (fractional; ``e`` 0-based). The default stores both as
  ``self.progress`` / ``self.epoch``; adversaries with their own schedules (the eps and kappa
  ramps of certified training, Gowal et al. 2018, arXiv:1810.12715; CROWN-IBP's beta, Zhang et
  al. 2020, arXiv:1906.06316) override it or read ``self.progress`` in ``loss``. The value is
  the same on every distributed rank and replays exactly on resume (it depends on the step only).
- ``config() -> dict``: ``name`` and the hyperparameters, recorded in the model's metadata.
- optionally ``model_metadata(model) -> dict``: entries the trained model's metadata must carry
  beyond the configuration, computed on the final model (PixelDP: its noise layer and
  calibration, which certification checks). Default: none.
- optionally ``evaluation_model(model) -> nn.Module``: the classifier the weights make, as the
  loop's validation and final test accuracy measure it (default ``model``; PixelDP: the noisy
  network's expected-softmax prediction, not the bare network).
- optionally ``loss_and_logits(...) -> (loss, logits or None)``: the logits of the inputs the
  loss was computed on, which the loop uses for the running training accuracy at no extra cost
  (the default returns None and the epoch's ``train_accuracy`` is left out).

Adversaries are registered by name in :data:`ADVERSARIES` (with the parameters they take),
which is what ``robustlab train --adversary NAME`` offers: :func:`register_adversary` adds one
without touching the CLI, :func:`from_args` builds one from keyword values or parsed arguments.

Imports point one way: :mod:`robustlab.training.adversarial` (FGSM, PGD, TRADES, MART) and
:mod:`robustlab.training.adversaries` (the built-in ones and their registration) build on this
module; a new adversary module imports :class:`Adversary` and :func:`register_adversary` from here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from robustlab.registry import Registry


class Adversary(abc.ABC):
    """Base class of training adversaries; see the module docstring for the contract."""

    name: str = "adversary"
    progress: float = 0.0  # fraction of training done at the current batch (set_progress)
    epoch: float = 0.0  # epochs done at the current batch, fractional (set_progress)

    @abc.abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        """The scalar training loss on batch (x, y); the model is in train mode."""

    def loss_and_logits(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``(loss, logits)``: the logits (N, K) of the inputs the loss was computed on, or None
        when the adversary does not expose them (then no training accuracy is recorded)."""
        return self.loss(model, x, y, generator=generator, eps_scale=eps_scale), None

    def set_progress(self, progress: float, epoch: float) -> None:
        """Called by the training loop before every batch: ``progress`` in [0, 1) is the fraction
        of training done, ``epoch`` the (fractional) number of epochs done. Stored as
        ``self.progress`` and ``self.epoch``; override to drive a schedule (eps, kappa, ...)."""
        self.progress = float(progress)
        self.epoch = float(epoch)

    def config(self) -> dict:
        """``name`` and hyperparameters (JSON-serialisable), recorded in the model metadata."""
        return {"name": self.name}

    def model_metadata(self, model: nn.Module) -> dict:
        """Top-level metadata entries of the trained ``model`` (JSON-serialisable); default none."""
        return {}

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The classifier validation and test accuracy are measured on; default ``model`` itself."""
        return model

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


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

    def __call__(self, **params: Any) -> Adversary:
        return self.factory(**params)


#: Every training adversary by name (:class:`robustlab.registry.Registry`; ``ADVERSARIES.get(name,
#: **params)`` builds one).
ADVERSARIES: Registry[AdversaryEntry] = Registry("adversary")


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
    ADVERSARIES.register(name, AdversaryEntry(name, factory, params, help), help, replace=replace)


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
