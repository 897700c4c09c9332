"""What a report says about a model: its class, its size and its saved metadata
(:func:`model_info`), shared by ``evaluate`` and the other verbs' report sections."""

from __future__ import annotations

import json
from typing import Any, Mapping

from torch import nn

__all__ = ["model_info"]


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def model_info(model: nn.Module) -> dict[str, Any]:
    """What a report says about a model: its class and parameter count, and its saved metadata
    (architecture, dataset, training configuration, metrics) without the per-epoch history."""
    meta = getattr(model, "metadata", None) or {}
    info = {"class": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters()))}
    keep = ("architecture", "dataset", "training", "metrics", "created", "robustlab_version", "weights_sha256",
            "description", "url", "homepage", "paper", "source")  # the page escapes them and links only http(s)
    info.update(_jsonable({k: meta[k] for k in keep if k in meta}))
    return info
