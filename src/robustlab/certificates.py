"""Certificates: per-sample ``(prediction, radius, norm)``, shared by every certifier.

A :class:`Certificate` states, for each input ``x_i``, that the certified classifier returns
``prediction[i]`` everywhere in the ``norm`` ball of radius ``radius[i]`` around ``x_i``.
``abstain[i]`` marks inputs where nothing is proven: then ``prediction[i] = -1`` and
``radius[i] = 0``. Randomized-smoothing certificates (Cohen, Rosenfeld, Kolter 2019,
arXiv:1902.02918) hold for each input with probability at least ``1 - alpha`` over the Monte Carlo
noise; bound-based certificates (IBP, CROWN, LP, MILP) are deterministic and use ``alpha = 0``.

Certified accuracy at radius ``r`` (Cohen et al., Sec. 4) is the fraction of inputs whose
certified prediction is the true label with ``radius >= r``; abstentions count as errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from robustlab._checks import check_labels

NORMS = ("linf", "l2", "l1", "l0")

#: Optional per-sample tensors a certifier may fill in (None when it does not apply).
#: ``samples``: model evaluations spent on the sample (smoothing: ``n0`` plus estimation draws);
#: ``count``: draws that returned the certified class; ``p_lower``: the lower confidence bound
#: on its probability under noise; ``p_upper``: an upper bound on the runner-up's probability
#: (two-class certificates).
OPTIONAL_FIELDS = ("samples", "count", "p_lower", "p_upper")


@dataclass
class Certificate:
    """Per-sample certified predictions for a batch of N inputs.

    Attributes:
        prediction: int64 (N,), the certified class, -1 where abstained.
        radius: float (N,), the certified radius in ``norm`` (0 where abstained; may be ``inf``
            for deterministic certifiers that prove every radius asked about).
        abstain: bool (N,), True where nothing is certified.
        norm: ``"l2"`` for randomized smoothing, or ``"linf"``, ``"l1"``, ``"l0"``.
        alpha: the per-sample failure probability of the certificate (0 for deterministic ones).
        samples, count, p_lower, p_upper: optional per-sample tensors (see :data:`OPTIONAL_FIELDS`).
        info: how the certificate was made (method, sample sizes, sigma, ...), JSON-serialisable.
    """

    prediction: Tensor
    radius: Tensor
    abstain: Tensor
    norm: str = "l2"
    alpha: float = 0.0
    samples: Optional[Tensor] = None
    count: Optional[Tensor] = None
    p_lower: Optional[Tensor] = None
    p_upper: Optional[Tensor] = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prediction", "radius", "abstain"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"Certificate.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        n = self.prediction.shape[0] if self.prediction.dim() == 1 else -1
        for name in ("prediction", "radius", "abstain", *OPTIONAL_FIELDS):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise TypeError(f"Certificate.{name} must be a torch.Tensor or None, got {type(value).__name__}")
            if value.dim() != 1 or value.shape[0] != n:
                raise ValueError(f"Certificate.{name} must have shape (N,) matching prediction "
                                 f"{tuple(self.prediction.shape)}, got {tuple(value.shape)}")
        if self.prediction.is_floating_point() or self.prediction.dtype == torch.bool:
            raise TypeError(f"Certificate.prediction must hold integer classes, got dtype {self.prediction.dtype}")
        if self.abstain.dtype != torch.bool:
            raise TypeError(f"Certificate.abstain must be a bool tensor, got dtype {self.abstain.dtype}")
        if not self.radius.is_floating_point():
            raise TypeError(f"Certificate.radius must be a floating-point tensor, got dtype {self.radius.dtype}")
        if self.norm not in NORMS:
            raise ValueError(f"Certificate.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"Certificate.alpha must be in [0, 1) (0 for deterministic certificates), "
                             f"got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if n and (bool(torch.isnan(self.radius).any()) or bool((self.radius < 0).any())):
            raise ValueError("Certificate.radius must be >= 0 and not NaN")
        if n and bool(((self.prediction == -1) != self.abstain).any()):
            raise ValueError("Certificate.prediction must be -1 exactly where abstain is True")
        if n and bool((self.radius[self.abstain] != 0).any()):
            raise ValueError("Certificate.radius must be 0 where abstain is True")

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def certified(self) -> Tensor:
        """Bool (N,): not abstained (something is proven, possibly with radius 0)."""
        return ~self.abstain

    def select(self, index: "Tensor | Sequence[int] | slice") -> "Certificate":
        """The certificates of a subset of the samples (an index tensor, list, bool mask or slice)."""
        if not isinstance(index, (Tensor, slice)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        if isinstance(index, Tensor):
            index = index.to(self.prediction.device)
        pick = {name: (None if getattr(self, name) is None else getattr(self, name)[index]) for name in OPTIONAL_FIELDS}
        return Certificate(self.prediction[index], self.radius[index], self.abstain[index], self.norm, self.alpha,
                           info=dict(self.info), **pick)

    def to(self, device: "torch.device | str") -> "Certificate":
        moved = {name: (None if getattr(self, name) is None else getattr(self, name).to(device))
                 for name in OPTIONAL_FIELDS}
        return Certificate(self.prediction.to(device), self.radius.to(device), self.abstain.to(device), self.norm,
                           self.alpha, info=dict(self.info), **moved)

    @staticmethod
    def concat(certs: Sequence["Certificate"]) -> "Certificate":
        """Join the certificates of consecutive batches (same norm and alpha)."""
        if not certs:
            raise ValueError("certs must hold at least one Certificate, got an empty sequence")
        first = certs[0]
        for c in certs[1:]:
            if c.norm != first.norm or c.alpha != first.alpha:
                raise ValueError(f"cannot join certificates for ({first.norm}, alpha={first.alpha}) and "
                                 f"({c.norm}, alpha={c.alpha})")

        def cat(name: str) -> Optional[Tensor]:
            values = [getattr(c, name) for c in certs]
            return None if any(v is None for v in values) else torch.cat(values)  # type: ignore[arg-type]

        return Certificate(torch.cat([c.prediction for c in certs]), torch.cat([c.radius for c in certs]),
                           torch.cat([c.abstain for c in certs]), first.norm, first.alpha,
                           info=dict(first.info), **{name: cat(name) for name in OPTIONAL_FIELDS})

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat CPU tensors (safetensors-ready): the per-sample fields, and norm, alpha and ``info``
        as UTF-8 JSON bytes; :meth:`from_tensors` inverts it."""
        from robustlab._io import json_tensor

        out = {"prediction": self.prediction, "radius": self.radius, "abstain": self.abstain,
               **{name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None}}
        out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
        out["meta_json"] = json_tensor({"norm": self.norm, "alpha": self.alpha, "info": self.info})
        return out

    @staticmethod
    def from_tensors(tensors: "dict[str, Tensor]") -> "Certificate":
        """The certificate :meth:`to_tensors` wrote."""
        from robustlab._io import tensor_json

        missing = [k for k in ("prediction", "radius", "abstain", "meta_json") if k not in tensors]
        if missing:
            raise ValueError(f"not a certificate's tensors: {', '.join(missing)} missing")
        meta = tensor_json(tensors["meta_json"])
        return Certificate(tensors["prediction"], tensors["radius"], tensors["abstain"], meta["norm"], meta["alpha"],
                           info=meta["info"], **{name: tensors.get(name) for name in OPTIONAL_FIELDS})

    def to_dict(self) -> dict:
        """JSON-ready: per-sample lists (an infinite radius becomes the string ``"inf"``)."""
        out: dict[str, Any] = {
            "norm": self.norm,
            "alpha": self.alpha,
            "prediction": self.prediction.tolist(),
            "radius": [r if math.isfinite(r) else "inf" for r in self.radius.double().tolist()],
            "abstain": self.abstain.tolist(),
            "info": self.info,
        }
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Certificate":
        """Inverse of :meth:`to_dict`."""
        try:
            radius = [float(r) for r in data["radius"]]
            opt = {name: torch.tensor(data[name]) if name in data else None for name in OPTIONAL_FIELDS}
            return cls(torch.tensor(data["prediction"], dtype=torch.long), torch.tensor(radius, dtype=torch.float64),
                       torch.tensor(data["abstain"], dtype=torch.bool).reshape(-1), data.get("norm", "l2"),
                       float(data.get("alpha", 0.0)), info=dict(data.get("info", {})), **opt)
        except KeyError as exc:
            raise ValueError(f"a certificate record needs prediction, radius and abstain; missing {exc}") from None


def certified_accuracy(certs: Certificate, labels: Tensor, radii: "float | Sequence[float] | Tensor") -> Tensor:
    """Certified accuracy at each radius ``r``: the fraction of samples with a non-abstained
    certified prediction equal to the label and ``radius >= r`` (Cohen et al. 2019, Sec. 4).

    Returns a float64 tensor of shape (len(radii),) on the certificate's device.
    """
    if not isinstance(certs, Certificate):
        raise TypeError(f"certs must be a robustlab Certificate, got {type(certs).__name__}")
    labels = check_labels(labels, len(certs), "labels").to(certs.prediction.device)
    r = torch.as_tensor(radii, dtype=torch.float64).reshape(-1)
    if r.numel() == 0:
        raise ValueError("radii must hold at least one radius")
    if bool(torch.isnan(r).any()) or bool((r < 0).any()):
        raise ValueError(f"radii must be >= 0, got {r.tolist()}")
    if len(certs) == 0:
        raise ValueError("certs covers no samples; certified accuracy is undefined")
    r = r.to(certs.radius.device)
    ok = (certs.prediction == labels) & ~certs.abstain  # (N,)
    hit = ok.unsqueeze(0) & (certs.radius.double().unsqueeze(0) >= r.unsqueeze(1))  # (R, N)
    return hit.double().mean(dim=1)
