"""Certificates: per-sample ``(prediction, radius, norm)``, shared by every certifier.

``abstain`` marks samples where nothing is proven (``prediction = -1``, ``radius = 0``).
Randomized-smoothing radii hold with probability at least ``1 - alpha``; bound-based
certificates are deterministic (``alpha = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass
class Certificate:
    """Per-sample certified predictions. ``radius[i]`` bounds the ``norm`` ball around ``x[i]``
    in which the (smoothed) classifier provably returns ``prediction[i]``."""

    prediction: Tensor
    radius: Tensor
    abstain: Tensor
    norm: str = "l2"
    alpha: float = 0.0
    samples: Optional[Tensor] = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @staticmethod
    def concat(certs: Sequence["Certificate"]) -> "Certificate":
        if not certs:
            raise ValueError("certs must hold at least one Certificate")
        samples = None if any(c.samples is None for c in certs) else torch.cat([c.samples for c in certs])  # type: ignore[misc]
        return Certificate(torch.cat([c.prediction for c in certs]), torch.cat([c.radius for c in certs]),
                           torch.cat([c.abstain for c in certs]), certs[0].norm, certs[0].alpha, samples, dict(certs[0].info))

    def to_dict(self) -> dict:
        out = {"norm": self.norm, "alpha": self.alpha, "prediction": self.prediction.tolist(),
               "radius": self.radius.tolist(), "abstain": self.abstain.tolist(), "info": self.info}
        if self.samples is not None:
            out["samples"] = self.samples.tolist()
        return out


def certified_accuracy(cert: Certificate, labels: Tensor, radii: "Sequence[float] | Tensor") -> Tensor:
    """Certified accuracy at each radius ``r``: the fraction of samples whose certified prediction
    equals the label with ``radius >= r`` (abstentions count as errors). Shape (len(radii),)."""
    labels = labels.to(cert.prediction.device)
    if labels.shape != cert.prediction.shape:
        raise ValueError(f"labels has shape {tuple(labels.shape)}, the certificate covers {len(cert)} samples")
    r = torch.as_tensor(radii, dtype=cert.radius.dtype, device=cert.radius.device).reshape(-1, 1)
    ok = (cert.prediction == labels) & ~cert.abstain
    return (ok.unsqueeze(0) & (cert.radius.unsqueeze(0) >= r)).float().mean(dim=1)
