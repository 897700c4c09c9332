"""Architectures by name, and :func:`create`: a network for a dataset with normalisation inside.

The registry maps a name to a builder ``(in_channels, num_classes, (H, W)) -> nn.Module``.
:func:`robustlab.models.load` rebuilds saved models through it, so a user architecture that is
registered with :func:`register_architecture` can be saved and loaded like the built-in ones.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from robustlab.models import architectures as _arch
from robustlab.models import preact as _preact
from robustlab.models import vnncomp as _vnncomp
from robustlab.models.normalize import Normalize
from robustlab.registry import Registry, normalize_name

Builder = Callable[[int, int, tuple[int, int]], nn.Module]

#: Every architecture by name (:class:`robustlab.registry.Registry`): an entry is a builder
#: ``(in_channels, num_classes, (H, W)) -> nn.Module``.
ARCHITECTURES: Registry[Builder] = Registry("architecture")
for _name, _builder in (
    ("mlp", _arch.mlp), ("cnn", _arch.cnn), ("small-cnn", _arch.small_cnn), ("resnet18", _arch.resnet18),
    ("resnet18-imagenet", _arch.resnet18_imagenet), ("preact-resnet18", _preact.preact_resnet18),
    ("wrn-28-10", _preact.wrn_28_10), ("wrn-34-10", _preact.wrn_34_10), ("resnet2b", _vnncomp.resnet2b),
    ("resnet4b", _vnncomp.resnet4b),
):
    ARCHITECTURES.register(_name, _builder)  # described by the builder's docstring


def _key(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"arch must be an architecture name (str), got {type(name).__name__}")
    return normalize_name(name, "arch")


def architectures() -> tuple[str, ...]:
    """Names accepted by :func:`create` (built-in and registered)."""
    return ARCHITECTURES.available()


def register_architecture(name: str, builder: Builder, *, replace: bool = False, description: str = "") -> None:
    """Make ``builder(in_channels, num_classes, (H, W)) -> nn.Module`` available as ``name`` to
    :func:`create` and :func:`robustlab.models.load` (``ARCHITECTURES.register``)."""
    if not callable(builder):
        raise TypeError(f"builder must be callable (in_channels, num_classes, (H, W)) -> nn.Module, got {builder!r}")
    ARCHITECTURES.register(name, builder, description, replace=replace)


def _dataset_facts(dataset: Any) -> dict[str, Any]:
    """name, num_classes, in_channels, input_size, mean, std implied by a dataset name or object."""
    if dataset is None:
        return {}
    if isinstance(dataset, str):
        from robustlab.data.specs import spec

        s = spec(dataset)
        return dict(name=s.name, num_classes=s.num_classes, in_channels=s.shape[0], input_size=s.shape[1:],
                    mean=s.mean, std=s.std)
    shape = getattr(dataset, "shape", None)
    images = getattr(dataset, "images", None)
    if shape is None and isinstance(images, torch.Tensor) and images.dim() == 4:
        shape = tuple(images.shape[1:])
    if shape is None or len(shape) != 3:
        raise TypeError(
            f"dataset must be a dataset name or a Dataset-like object with .shape (C, H, W) or .images "
            f"(N, C, H, W), got {type(dataset).__name__}"
        )
    facts: dict[str, Any] = dict(in_channels=int(shape[0]), input_size=(int(shape[1]), int(shape[2])))
    for attr in ("name", "num_classes", "mean", "std"):
        value = getattr(dataset, attr, None)
        if value is not None:
            facts[attr] = value
    return facts


def create(
    arch: str,
    dataset: Any = None,
    *,
    num_classes: Optional[int] = None,
    in_channels: Optional[int] = None,
    input_size: "int | Sequence[int] | None" = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    seed: Optional[int] = None,
) -> Normalize:
    """Build architecture ``arch`` (see :func:`architectures`) wrapped in :class:`Normalize`.

    ``dataset`` is a name (``"mnist"``; its facts come from :mod:`robustlab.data.specs`) or a
    loaded :class:`~robustlab.data.Dataset`; explicit arguments override what it implies. Without
    a dataset, ``num_classes``, ``in_channels`` and ``input_size`` are required and mean/std
    default to 0/1. ``seed`` makes the initial weights reproducible without changing the global
    RNG (drawn inside ``torch.random.fork_rng``); with ``seed=None`` they come from the global RNG
    like any ``nn.Module``. The result carries ``arch_config`` (what :func:`save` records to
    rebuild it) and ``metadata`` (the dataset name, when known).
    """
    key = _key(arch)
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(architectures())}")
    facts = _dataset_facts(dataset)
    k = num_classes if num_classes is not None else facts.get("num_classes")
    c = in_channels if in_channels is not None else facts.get("in_channels")
    size = input_size if input_size is not None else facts.get("input_size")
    if k is None or c is None or size is None:
        raise ValueError(
            "create() needs a dataset (name or object), or num_classes, in_channels and input_size; "
            f"got num_classes={k}, in_channels={c}, input_size={size}"
        )
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(hw) != 2:
        raise ValueError(f"input_size must be an int or (H, W), got {size!r}")
    if int(k) < 2 or int(c) < 1 or min(hw) < 1:
        raise ValueError(
            f"need num_classes >= 2, in_channels >= 1 and a positive input size; got num_classes={k}, "
            f"in_channels={c}, input_size={hw}"
        )
    m = tuple(float(v) for v in (mean if mean is not None else facts.get("mean", (0.0,) * int(c))))
    s = tuple(float(v) for v in (std if std is not None else facts.get("std", (1.0,) * int(c))))
    if len(m) != int(c) or len(s) != int(c):
        raise ValueError(f"mean and std need in_channels={c} values each, got mean={m}, std={s}")
    if seed is None:
        net = ARCHITECTURES[key](int(c), int(k), (hw[0], hw[1]))
    else:
        with torch.random.fork_rng(devices=[]):  # CPU init; the global RNG is restored afterwards
            torch.manual_seed(int(seed))
            net = ARCHITECTURES[key](int(c), int(k), (hw[0], hw[1]))
    model = Normalize(net, m, s)
    model.arch_config = {
        "name": key, "num_classes": int(k), "in_channels": int(c), "input_size": [hw[0], hw[1]],
        "mean": list(m), "std": list(s),
    }
    model.metadata = {"dataset": str(facts["name"])} if facts.get("name") else {}
    return model
