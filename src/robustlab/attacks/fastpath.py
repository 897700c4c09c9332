"""The fast path: one option that trades the last bits of the logits for speed.

``FastPath(precision="bf16", channels_last=True, compile=False, check_every=8)`` is accepted as
``fast=`` by :class:`~robustlab.attacks.FGSM`, :class:`~robustlab.attacks.PGD` (and BIM),
:class:`~robustlab.attacks.APGD` / :class:`~robustlab.attacks.APGDT`, the training adversaries of
:mod:`robustlab.training.adversarial` and :class:`~robustlab.defenses.Smoothed`. It does four
things, each optional:

* ``precision="bf16"``: the model runs under ``torch.autocast(dtype=torch.bfloat16)`` (matrix
  products and convolutions in bf16, 8 bits of mantissa; the logits come back in the input's
  dtype, so losses and steps stay in fp32);
* ``channels_last``: 4-d inputs are handed to the model in ``torch.channels_last`` layout (the
  model itself is not converted: its weights are the caller's);
* ``compile``: the model's forward is ``torch.compile``-d once per model (cached; the caller's
  module is wrapped, not changed). A model that does not compile (no C++ compiler, an unsupported
  op) falls back to eager with one warning;
* ``check_every=k``: the attack loops test for success on the host only every ``k`` steps. In
  between, the success masks stay on the device: each sample's first adversarial iterate is kept
  with ``torch.where`` and the sample keeps stepping (its extra steps are discarded), so the loop
  issues no ``.item()`` / ``bool()`` synchronisation. ``k = 1`` is the default behaviour.

What it may change, and what it never does. bf16 (and, in the last bits, compile and
channels_last) perturb the logits, so gradient signs, and thus iterates, can differ from the
default path. The decision that a sample is broken never rests on them: every early stop is
confirmed by the caller's model in its own precision before the sample leaves the working batch,
and :meth:`robustlab.attacks.Attack.attack` recomputes ``success`` from the unwrapped model. The
fast path is off by default (``fast=None``) everywhere; with it off, no code path changes.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field, fields
from typing import Iterator, Optional, Union

import torch
from torch import Tensor, nn

from robustlab.losses import is_adversarial

__all__ = ["FastModel", "FastPath", "FastSpec", "SettledStop", "exact_model"]

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class FastPath:
    """The fast-path settings (see the module docstring).

    Args:
        precision: ``"bf16"`` (autocast) or ``"fp32"`` (the model's own precision).
        channels_last: feed 4-d inputs in channels_last layout.
        compile: ``torch.compile`` the model's forward, eager fallback if it does not compile.
        check_every: host-side success checks every ``k`` attack steps (>= 1).

    With ``compile``, the settings object also keeps the compiled forward of each model it ran
    (a model that failed to compile maps to itself), so an attack compiles a model once however
    many batches it attacks; the cache lives as long as the settings object (the attack that
    resolved it), not the process. It is not part of the settings (equality, hash,
    :meth:`to_dict`).
    """

    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    check_every: int = 8
    _compiled: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False, compare=False)
    _checked: "weakref.WeakSet[nn.Module]" = field(default_factory=weakref.WeakSet, init=False, repr=False,
                                                   compare=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        every = self.check_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {every!r}")

    @classmethod
    def resolve(cls, value: "FastSpec") -> Optional["FastPath"]:
        """``None`` / ``False`` / ``"off"``: no fast path (None). ``True`` / ``"on"`` / ``"bf16"``:
        ``FastPath()``. ``"compile"``: bf16 and ``torch.compile``. ``"fp32"``: channels_last and
        deferred checks, fp32 arithmetic. A :class:`FastPath` is returned as is."""
        if value is None or value is False:
            return None
        if isinstance(value, FastPath):
            return value
        if value is True:
            return cls()
        if isinstance(value, str):
            presets = {"off": None, "on": cls(), "bf16": cls(), "compile": cls(compile=True),
                       "fp32": cls(precision="fp32")}
            if value in presets:
                return presets[value]
            raise ValueError(f"fast must be one of {', '.join(map(repr, presets))}, a bool or a FastPath, got {value!r}")
        raise TypeError(f"fast must be None, a bool, a preset name or a robustlab FastPath, got {type(value).__name__}")

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (attack configs, certificate info)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """bf16 autocast on ``device`` when ``precision == "bf16"``, else nothing."""
        if self.precision == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def wrap(self, model: nn.Module) -> "FastModel":
        """``model`` behind the fast path (the module itself is not modified)."""
        return FastModel(model, self)

    def compiled(self, model: nn.Module) -> nn.Module:
        """The cached ``torch.compile(model)`` (the model itself after a failed attempt)."""
        fast = self._compiled.get(model)
        if fast is None:
            try:
                fast = torch.compile(model)
            except Exception as exc:  # noqa: BLE001 - any failure means: run eager
                warnings.warn(f"torch.compile is unavailable ({type(exc).__name__}: {exc}); running the model eagerly",
                              RuntimeWarning, stacklevel=3)
                fast = model
            self._compiled[model] = fast
        return fast

    def compiled_call(self, model: nn.Module, x: Tensor) -> Tensor:
        """``torch.compile(model)(x)`` for inference, the eager ``model(x)`` if it does not compile."""
        fn = self.compiled(model)
        if fn is model:
            return model(x)
        try:
            return fn(x)
        except Exception as exc:  # noqa: BLE001 - the compiled model failed: run eager from now on
            return self._run_eagerly(model, exc, stacklevel=3)(x)

    def checked_compiled(self, model: nn.Module, x: Tensor) -> nn.Module:
        """The compiled forward once one forward and input-gradient pass on ``x`` has run through
        it (compilation of both is lazy), else the eager model with one warning."""
        fn = self.compiled(model)
        if fn is model or model in self._checked:
            return fn
        try:
            with torch.enable_grad():
                probe = x.detach().requires_grad_(True)
                torch.autograd.grad(fn(probe).float().sum(), probe)
            self._checked.add(model)
        except Exception as exc:  # noqa: BLE001 - the compiled model failed: run eager
            fn = self._run_eagerly(model, exc, stacklevel=6)
        return fn

    def _run_eagerly(self, model: nn.Module, exc: Exception, stacklevel: int) -> nn.Module:
        """Remember that ``model``'s compiled forward failed (one warning) and return the model."""
        warnings.warn(f"torch.compile failed on this model ({type(exc).__name__}: {str(exc)[:200]}); running it "
                      "eagerly", RuntimeWarning, stacklevel=stacklevel)
        self._compiled[model] = model
        return model


FastSpec = Union[FastPath, str, bool, None]


class FastModel(nn.Module):
    """``model`` run with the settings of ``fast``: inputs in channels_last, bf16 autocast, the
    compiled forward. Logits are returned in the input's dtype. ``exact`` is the caller's model
    (used to confirm early stops and to judge success)."""

    def __init__(self, model: nn.Module, fast: FastPath) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        # Plain attributes, not submodules: the wrapper owns nothing and never changes modes.
        object.__setattr__(self, "exact", model)
        object.__setattr__(self, "fast", fast)

    def _forward_fn(self, x: Tensor) -> nn.Module:
        model: nn.Module = self.exact  # type: ignore[assignment]
        fast: FastPath = self.fast  # type: ignore[assignment]
        return fast.checked_compiled(model, x) if fast.compile else model

    def forward(self, x: Tensor) -> Tensor:
        fast: FastPath = self.fast  # type: ignore[assignment]
        dtype = x.dtype
        if fast.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with fast.autocast(x.device):
            fn = self._forward_fn(x)
            logits = fn(x)
        return logits.to(dtype)


def exact_model(model: nn.Module) -> Optional[nn.Module]:
    """The caller's model behind a :class:`FastModel`, or None for a plain model."""
    return model.exact if isinstance(model, FastModel) else None  # type: ignore[return-value]


def _view(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))  # (N,) -> (N, 1, 1, 1)


class SettledStop:
    """Per-sample early stop whose host synchronisation happens every ``every`` steps.

    :meth:`observe` (device only) remembers each sample's first adversarial iterate;
    :meth:`settle` (one host sync) returns the samples to retire now: the remembered hits,
    confirmed by ``exact`` (the caller's model) when the search runs behind a :class:`FastModel`.
    A hit that ``exact`` does not confirm is forgotten and the sample keeps going. With
    ``every = 1`` and no ``exact`` this is the plain "stop at the first adversarial iterate".
    """

    def __init__(self, x: Tensor, every: int, exact: Optional[nn.Module]) -> None:
        self.every = int(every)
        self.exact = exact
        self.plain = self.every == 1 and exact is None
        self.pending = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.first = x

    def observe(self, hit: Tensor, xa: Tensor) -> None:
        """Record the samples adversarial at ``xa`` (bool (N,)); no host synchronisation."""
        if self.plain:
            self.pending, self.first = hit, xa
            return
        new = hit & ~self.pending
        self.first = torch.where(_view(new, xa), xa, self.first)
        self.pending = self.pending | hit

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based) ends a window of ``every`` steps."""
        return (step + 1) % self.every == 0

    def settle(self, y: Tensor, target: Optional[Tensor]) -> Optional[Tensor]:
        """The samples to retire now (bool (N,)), or None when there are none. Syncs once."""
        if not bool(self.pending.any()):
            return None
        done = self.pending
        if self.exact is not None:
            idx = done.nonzero().squeeze(1)
            with torch.no_grad():
                logits = self.exact(self.first[idx])
            ok = is_adversarial(logits, y[idx], None if target is None else target[idx])
            done = torch.zeros_like(done).index_put_((idx,), ok)
            self.pending = done
            if not bool(ok.any()):
                return None
        return done

    def compact(self, keep: Tensor) -> None:
        """Keep the state of the samples ``keep`` (bool (N,)) only."""
        self.pending, self.first = self.pending[keep], self.first[keep]

    @property
    def running(self) -> "Tensor | int":
        """Per-sample step increment: 1 for samples without a pending hit (an int in plain mode)."""
        return 1 if self.plain else (~self.pending).long()
