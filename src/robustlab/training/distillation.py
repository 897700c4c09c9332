"""Defensive distillation (Papernot, McDaniel, Wu, Jha, Swami 2016, arXiv:1511.04508) as two
adversaries of the one training loop.

1. :class:`Temperature` trains the **teacher** on hard labels at temperature ``T``:
   ``mean_i CE(softmax(f(x_i) / T), y_i)`` (sec. IV-B, step 1).
2. :class:`Distillation` trains the **student** on the teacher's soft labels at the same ``T``:
   ``mean_i -sum_c q_c(x_i) log softmax(f(x_i) / T)_c`` with ``q = softmax(f_teacher(x) / T)``
   (step 2).
3. The student is **deployed at T = 1**: its logits are used as they are, so they come out about
   ``T`` times larger than a normally trained network's, its softmax saturates and the gradient of
   the cross-entropy on the softmax vanishes in float32: PGD on cross-entropy stalls. Carlini &
   Wagner (2017, arXiv:1608.04644, sec. VIII) break it by attacking the logits (their margin loss
   is invariant to that scale); ``robustlab.attacks.PGD(loss="cw")`` and ``CarliniWagner`` do so.

:func:`defensive_distillation` runs both stages with :func:`robustlab.training.train`.
Registered adversaries: ``temperature`` (``--temperature``) and ``distill`` (``--teacher PATH
--temperature``), so ``robustlab train --adversary distill --teacher runs/teacher`` works.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_positive
from robustlab.attacks.base import eval_mode
from robustlab.training.base import Adversary, Param, register_adversary

__all__ = ["Distillation", "Temperature", "defensive_distillation"]


class Temperature(Adversary):
    """Cross-entropy of the softmax at temperature ``T``: ``CE(f(x) / T, y)`` (the teacher's loss)."""

    name = "temperature"

    def __init__(self, temperature: float = 100.0) -> None:
        self.temperature = float(check_positive(temperature, "temperature"))

    def loss_and_logits(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator,
                        eps_scale: float = 1.0) -> tuple[Tensor, Optional[Tensor]]:
        logits = model(x)
        return F.cross_entropy(logits / self.temperature, y), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]

    def config(self) -> dict:
        return {"name": self.name, "temperature": self.temperature}


class Distillation(Adversary):
    """Cross-entropy against the teacher's soft labels, both at temperature ``T`` (the student's loss).

    The teacher runs in eval mode without gradient; it is never modified."""

    name = "distill"

    def __init__(self, teacher: nn.Module, temperature: float = 100.0) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher
        self.temperature = float(check_positive(temperature, "temperature"))

    def soft_labels(self, x: Tensor) -> Tensor:
        """``softmax(f_teacher(x) / T)`` (N, K)."""
        with torch.no_grad(), eval_mode(self.teacher):
            return torch.softmax(self.teacher(x).float() / self.temperature, dim=1)

    def loss_and_logits(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator,
                        eps_scale: float = 1.0) -> tuple[Tensor, Optional[Tensor]]:
        q = self.soft_labels(x)
        logits = model(x)
        if logits.shape != q.shape:
            raise ValueError(f"student logits have shape {tuple(logits.shape)}, the teacher's {tuple(q.shape)}")
        log_p = F.log_softmax(logits.float() / self.temperature, dim=1)
        return -(q * log_p).sum(dim=1).mean(), logits

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator, eps_scale: float = 1.0) -> Tensor:
        return self.loss_and_logits(model, x, y, generator=generator, eps_scale=eps_scale)[0]

    def config(self) -> dict:
        return {"name": self.name, "temperature": self.temperature,
                "teacher": str(getattr(self.teacher, "metadata", {}).get("path", type(self.teacher).__name__))}


def defensive_distillation(
    make_model: Callable[[], nn.Module],
    train_data: Any,
    *,
    temperature: float = 100.0,
    epochs: int = 1,
    teacher_epochs: Optional[int] = None,
    **train_kwargs: Any,
) -> tuple[nn.Module, nn.Module]:
    """Train a teacher at ``temperature`` and a student on its soft labels; returns ``(student,
    teacher)``. The student is deployed as is (T = 1). ``make_model()`` builds a fresh network
    (called twice); ``train_kwargs`` go to :func:`robustlab.training.train` for both stages
    (an ``out`` folder is refused: save the two models yourself)."""
    from robustlab.training.loop import train

    if not callable(make_model):
        raise TypeError(f"make_model must be a callable returning an nn.Module, got {type(make_model).__name__}")
    if train_kwargs.get("out") is not None:
        raise ValueError("out is not supported here: the teacher and the student would share it; save them yourself")
    teacher = make_model()
    train(teacher, train_data, adversary=Temperature(temperature), epochs=teacher_epochs or epochs, **train_kwargs)
    student = make_model()
    train(student, train_data, adversary=Distillation(teacher, temperature), epochs=epochs, **train_kwargs)
    return student.eval(), teacher.eval()


def _distill_from_path(teacher: str, temperature: float) -> Distillation:
    from robustlab.models import load

    return Distillation(load(teacher), temperature)


_TEMPERATURE = Param("temperature", float, "softmax temperature T of defensive distillation (Papernot et al.: 100)", 100.0)
register_adversary("temperature", lambda temperature: Temperature(temperature), (_TEMPERATURE,),
                   "cross-entropy at softmax temperature T: the teacher of defensive distillation", replace=True)
register_adversary("distill", _distill_from_path,
                   (Param("teacher", str, "saved teacher model (trained with --adversary temperature)", required=True),
                    _TEMPERATURE),
                   "defensive distillation: the teacher's soft labels at temperature T (Papernot et al. 2016)", replace=True)
