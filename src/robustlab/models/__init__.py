"""Models: architectures by name with normalisation inside, and safetensors checkpoints.

``create("cnn", dataset="mnist")`` returns a :class:`Normalize`-wrapped network that maps images
in [0, 1] to logits; ``save`` / ``load`` keep weights in safetensors and everything else in JSON.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
from torch import nn

from robustlab.models.architectures import ARCHITECTURES
from robustlab.models.checkpoint import import_state_dict, load_metadata, load_state_dict_into, read_state, save
from robustlab.models.normalize import Normalize

__all__ = ["Normalize", "architectures", "create", "import_state_dict", "load", "load_metadata", "save"]


def architectures() -> tuple[str, ...]:
    """Names accepted by :func:`create`."""
    return tuple(ARCHITECTURES)


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
    """Build architecture ``arch`` for ``dataset`` (a name such as ``"mnist"`` or a loaded
    :class:`~robustlab.data.Dataset`); explicit arguments override what the dataset implies.
    ``seed`` makes the initial weights reproducible without touching the global RNG."""
    key = str(arch).lower().replace("_", "-")
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    facts: dict[str, Any] = {}
    if isinstance(dataset, str):
        from robustlab.data.specs import spec

        s = spec(dataset)
        facts = dict(name=s.name, num_classes=s.num_classes, in_channels=s.shape[0], input_size=s.shape[1:], mean=s.mean, std=s.std)
    elif dataset is not None:
        facts = dict(name=getattr(dataset, "name", "custom"), num_classes=dataset.num_classes, in_channels=dataset.shape[0],
                     input_size=dataset.shape[1:], mean=dataset.mean, std=dataset.std)
    k = num_classes if num_classes is not None else facts.get("num_classes")
    c = in_channels if in_channels is not None else facts.get("in_channels")
    size = input_size if input_size is not None else facts.get("input_size")
    if k is None or c is None or size is None:
        raise ValueError("create() needs a dataset, or num_classes, in_channels and input_size")
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if int(k) < 2 or int(c) < 1 or min(hw) < 1:
        raise ValueError(f"need num_classes >= 2, in_channels >= 1, positive input size; got {k}, {c}, {hw}")
    m = tuple(mean) if mean is not None else tuple(facts.get("mean", (0.0,) * int(c)))
    s_ = tuple(std) if std is not None else tuple(facts.get("std", (1.0,) * int(c)))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        net = ARCHITECTURES[key](int(c), int(k), hw)
    model = Normalize(net, m, s_)
    model.arch_config = {"name": key, "num_classes": int(k), "in_channels": int(c), "input_size": list(hw),
                         "mean": list(m), "std": list(s_)}
    if facts.get("name"):
        model.metadata = {"dataset": facts["name"]}
    return model


def load(path: "str | os.PathLike[str]", *, map_location: "str | torch.device" = "cpu", strict: bool = True) -> nn.Module:
    """Rebuild a saved model from its metadata and weights; returned in eval mode with ``.metadata``."""
    state, meta = read_state(path)
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
        raise ValueError(
            f"{path}: metadata names no known architecture ({arch!r}); for your own nn.Module use "
            "robustlab.models.load_state_dict_into(model, read_state(path)[0], ...)"
        )
    model = create(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                   input_size=arch["input_size"], mean=arch["mean"], std=arch["std"])
    load_state_dict_into(model, state, str(path), strict)
    model.metadata = meta
    return model.to(map_location).eval()
