"""``TrainConfig``: every setting of a training run, validated once, before any work.

``train(model, data, config=TrainConfig(epochs=5, adversary=PGDAdversary(...)))`` and
``train(model, data, epochs=5, adversary=...)`` are the same call: the keywords build the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from robustlab._checks import check_positive
from robustlab.training.adversaries import Standard
from robustlab.training.augment import AUGMENTATIONS
from robustlab.training.base import Adversary

#: Optimizers and their default (learning rate, weight decay).
OPTIMIZERS: dict[str, tuple[float, float]] = {"adam": (1e-3, 0.0), "sgd": (0.1, 5e-4)}
SCHEDULES = ("cosine", "step", "onecycle", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """The settings of :func:`robustlab.training.train` (validated in ``__post_init__``).

    Args:
        adversary: how each batch's loss is made (:class:`~robustlab.training.Standard` when None).
        epochs, batch_size: at least 1; the last batch of an epoch may be smaller.
        optimizer: ``"adam"`` (default lr 1e-3, weight decay 0) or ``"sgd"`` (lr 0.1, Nesterov
            momentum ``momentum``, weight decay 5e-4); ``lr`` / ``weight_decay`` override (None:
            the optimizer's default, filled in here).
        schedule: ``"cosine"``, ``"step"``, ``"onecycle"`` or ``"constant"``, set every step.
        select_best: return (and save) the best epoch's weights rather than the last.
        seed: seeds every random choice; the global RNG is untouched.
        eps_warmup_epochs: ramp the adversary's eps linearly from 0 over this many epochs.
        progress: tqdm bar per epoch.
        device: where to train (default: the model's device; ``"cuda"`` under torchrun means
            ``cuda:LOCAL_RANK``).
        amp: ``"bf16"`` for bfloat16 autocast of the training passes (crafting included;
            validation stays float32). Default None (float32).
        channels_last: model and batches in ``torch.channels_last`` memory format.
        sync_batchnorm: CUDA only: in a distributed run, BatchNorm -> ``torch.nn.SyncBatchNorm``.
        augment: ``"crop-flip"`` (:mod:`robustlab.training.augment`: 4-pixel padded random crops
            and horizontal flips, the CIFAR standard) applied to every training batch; None: none.
    """

    adversary: Optional[Adversary] = None
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "adam"
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    schedule: str = "cosine"
    select_best: bool = True
    seed: int = 0
    eps_warmup_epochs: float = 0.0
    progress: bool = True
    device: "str | torch.device | None" = None
    amp: Optional[str] = None
    channels_last: bool = False
    sync_batchnorm: bool = False
    augment: Optional[str] = None

    def __post_init__(self) -> None:
        check_positive(self.epochs, "epochs", integer=True)
        check_positive(self.batch_size, "batch_size", integer=True)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        default_lr, default_wd = OPTIMIZERS[self.optimizer]
        lr = float(check_positive(self.lr, "lr")) if self.lr is not None else default_lr
        wd = (float(check_positive(self.weight_decay, "weight_decay", allow_zero=True))
              if self.weight_decay is not None else default_wd)
        momentum = float(check_positive(self.momentum, "momentum", allow_zero=True))
        warmup = float(check_positive(self.eps_warmup_epochs, "eps_warmup_epochs", allow_zero=True))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        adversary = self.adversary
        if adversary is None:
            adversary = Standard()
        if not isinstance(adversary, Adversary):
            raise TypeError(f"adversary must be a robustlab.training.Adversary, got {type(adversary).__name__}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be None or one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.amp not in (None, "bf16"):
            hint = " (float16 needs loss scaling; bfloat16 does not)" if self.amp in ("fp16", "float16") else ""
            raise ValueError(f"amp must be None or 'bf16', got {self.amp!r}{hint}")
        for name in ("select_best", "progress", "channels_last", "sync_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, value in (("adversary", adversary), ("lr", lr), ("weight_decay", wd), ("momentum", momentum),
                            ("eps_warmup_epochs", warmup)):
            object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, settings: dict[str, Any]) -> "TrainConfig":
        """A config from ``train()``'s keyword settings; unknown names raise a TypeError listing the known ones."""
        unknown = sorted(set(settings) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"train() got unexpected keyword argument(s) {', '.join(unknown)}; settings are "
                            f"{', '.join(cls.field_names())} (or config=TrainConfig(...))")
        return cls(**settings)

    def record(self, **run: Any) -> dict:
        """The JSON configuration stored in checkpoints and the model metadata, with ``run``
        entries (train size, dataset, world size, ...) added."""
        assert self.adversary is not None
        return {
            "adversary": self.adversary.config(), "epochs": self.epochs, "batch_size": self.batch_size,
            "optimizer": self.optimizer, "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "schedule": self.schedule, "seed": self.seed, "eps_warmup_epochs": float(self.eps_warmup_epochs),
            "select_best": bool(self.select_best), "amp": self.amp, "channels_last": bool(self.channels_last),
            **({"augment": self.augment} if self.augment is not None else {}),  # absent when off: older runs resume
            **run,
        }
