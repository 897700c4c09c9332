"""Data-parallel training helpers on top of :mod:`robustlab.distributed` (process groups,
sharding, collectives): the DDP wrapper the training loop trains through.

Adversarial examples are crafted on the bare module in eval mode while the train-mode loss
passes go through DDP, so the attack's input-gradient passes never touch DDP's reducer.
"""

from __future__ import annotations

import gc
import inspect

import torch
from torch import Tensor, nn


class RouteDDP(nn.Module):
    """What the adversary sees in a distributed run: train-mode forwards go through the
    DistributedDataParallel wrapper (so the backward pass all-reduces the gradients), eval-mode
    forwards (adversarial crafting, which ``eval_mode`` puts the model in) go to the bare module,
    so the attack's input-gradient passes never touch DDP's reducer or broadcast buffers."""

    def __init__(self, ddp: nn.Module) -> None:
        super().__init__()
        self.ddp = ddp

    def forward(self, x: Tensor) -> Tensor:
        if "ddp" not in self._modules:
            raise RuntimeError("RouteDDP was closed: its DistributedDataParallel wrapper is gone")
        return self.ddp(x) if self.training else self.ddp.module(x)

    def close(self) -> None:
        """Free the DDP wrapper now, while the process group and the interpreter are alive.

        Dropping the last name does not always free it: DDP can sit in a reference cycle (its
        buffer-sync hooks with torch's defaults; measured here: ``train``'s own frame, kept alive
        after it returned by a cycle of frames from the first optimizer's construction). It then
        holds its reducer, the reducer's last work and the process group until the garbage
        collector runs, which may be at interpreter shutdown, after the group was destroyed, when
        gloo's threads can no longer take the GIL and the process aborts ("terminate called
        without an active exception": a rare SIGABRT of one rank at the end of a torchrun job).
        Idempotent; the bare module is kept."""
        if self._modules.pop("ddp", None) is not None:
            gc.collect()


def wrap_ddp(model: nn.Module, device: torch.device, *, sync_batchnorm: bool = False) -> tuple[nn.Module, nn.Module]:
    """``(model, net)``: the model (its BatchNorm layers converted to SyncBatchNorm when asked) and
    the :class:`RouteDDP` the loop trains through, in an initialised process group.

    DDP's own buffer broadcast is off: it would overwrite the buffers in place at every train-mode
    forward, which breaks adversaries with two forwards per step (FGSM-reg, TRADES: the first
    graph saved them). The loop broadcasts rank 0's buffers after every step instead."""
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp_cls = nn.parallel.DistributedDataParallel
    no_sync_buffers = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(ddp_cls.__init__).parameters
                       else {"broadcast_buffers": False})  # the name before torch 2.13
    ddp = ddp_cls(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync_buffers)
    return model, RouteDDP(ddp)
