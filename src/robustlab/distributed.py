"""torch.distributed helpers: one script runs on 1 or N processes (``torchrun --nproc_per_node N``).

A run is distributed when the launcher's environment says so (``WORLD_SIZE`` > 1, with ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT`` as ``torchrun`` sets them) or when the caller
has already initialised a process group. Otherwise every helper here is the single-process
identity: rank 0 of 1, no communication.

- :func:`init_from_env`: join the process group named by the environment (gloo on the CPU, nccl
  on CUDA), pick this process's device (``cuda:LOCAL_RANK``) and return a :class:`DistInfo`;
- :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`is_distributed`;
- :func:`shard`: this rank's part of a global batch (contiguous, sizes differ by at most one);
- :func:`all_reduce_sum` (metrics), :func:`broadcast_object` (rank 0's result to every rank),
  :func:`gather_bytes` (every rank's serialised results, e.g. safetensors records, on rank 0),
  :func:`run_json_tasks` (independent tasks dealt round-robin, their JSON results on rank 0),
  :func:`round_robin` (which of ``n`` work units, e.g. evaluation batches, are this rank's),
  :func:`broadcast_tensors` (rank 0's buffers to every rank),
  :func:`barrier`, :func:`cleanup`.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

_logger = logging.getLogger("robustlab.distributed")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its machine, the
    ``backend`` (None when not distributed) and the ``device`` it should compute on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return _env_int("WORLD_SIZE", 1)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and logs."""
    return rank() == 0


def _device_for(device: "str | torch.device | None", local_rank: int, world: int) -> torch.device:
    if device is None:
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and world == 1 and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type == "cuda" and (dev.index is None or world > 1):
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"LOCAL_RANK={local_rank} but this machine has {count} CUDA devices; "
                             f"start at most {count} processes per node")
        dev = torch.device("cuda", local_rank)
    return dev


def init_from_env(device: "str | torch.device | None" = None, *, backend: Optional[str] = None,
                  timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the environment, when there is one.

    Args:
        device: ``"cpu"`` or ``"cuda"``; default CPU. In a distributed run every CUDA device
            becomes ``cuda:LOCAL_RANK`` (one GPU per process); ``cuda`` alone means the same in
            a single process's view (``cuda:0``).
        backend: default ``"nccl"`` for CUDA, ``"gloo"`` otherwise.
        timeout_s: how long a collective waits for a missing rank before failing.

    With ``WORLD_SIZE`` unset or 1 (a plain ``python`` run) nothing is initialised and rank 0 of 1
    is returned. An existing process group (initialised by the caller) is used as it is. A group
    created here is destroyed at interpreter exit (or by :func:`cleanup`).
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    if is_distributed():
        dev = _device_for(device, local_rank, world_size())
        return DistInfo(rank(), world_size(), local_rank, torch.distributed.get_backend(), dev)
    n = env_world_size()
    dev = _device_for(device, local_rank, n)
    if n <= 1:
        return DistInfo(device=dev)
    if not torch.distributed.is_available():
        raise ValueError(f"WORLD_SIZE={n} but this PyTorch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={n} but {', '.join(missing)} not set: start the processes with torchrun "
                         "(torchrun --nproc_per_node N -m robustlab ...)")
    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if chosen == "nccl" and dev.type != "cuda":
        raise ValueError(f"backend 'nccl' needs CUDA devices, got device {dev}; use gloo on the CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    from datetime import timedelta

    kwargs: dict[str, Any] = {"backend": chosen, "timeout": timedelta(seconds=timeout_s)}
    if dev.type == "cuda":
        kwargs["device_id"] = dev
    torch.distributed.init_process_group(**kwargs)
    atexit.register(cleanup)
    info = DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, chosen, dev)
    _logger.debug("rank %d of %d (local %d) on %s via %s", info.rank, info.world_size, local_rank, dev, chosen)
    return info


def cleanup() -> None:
    """Leave and destroy the process group (no-op when there is none).

    Unreachable objects that still hold the group (a DDP wrapper in a reference cycle) are
    collected first: freed later, during interpreter shutdown, their gloo threads could no longer
    take the GIL and the process would abort."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        torch.distributed.barrier()


def shard(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> slice:
    """This rank's contiguous slice of a global batch of ``n`` samples: ``torch.tensor_split``'s
    split (the first ``n % world`` ranks get one more). Concatenating the shards of ranks
    ``0..world-1`` gives the global batch back in order, so every optimisation step sees the
    same samples as a single process with the same batch size. A slice may be empty when
    ``n < world``."""
    r = rank() if rank_ is None else int(rank_)
    w = world_size() if world is None else int(world)
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, {w}), got {r}")
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place (and return it); identity when not distributed. Metrics are
    reduced as sums (loss x count, correct, count) so the global mean is exact."""
    if is_distributed():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def broadcast_tensors(tensors: "list[Tensor] | tuple[Tensor, ...]", src: int = 0) -> None:
    """Overwrite every tensor in place with rank ``src``'s value (e.g. a model's buffers), one
    collective per (dtype, device) group; no-op when not distributed."""
    if not is_distributed() or not tensors:
        return
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            torch.distributed.broadcast(flat, src=src)
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank; identity when not distributed."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def round_robin(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> list[int]:
    """The indices ``i`` of ``n`` work units with ``i % world == rank``: each unit is done by exactly
    one rank, and the units keep their global index (so a unit's seeds and contents do not depend
    on the number of ranks)."""
    r = rank() if rank_ is None else int(rank_)
    w = world_size() if world is None else int(world)
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, {w}), got {r}")
    return list(range(r, int(n), w))


def run_json_tasks(tasks: "Sequence[Callable[[], Any]]", dst: int = 0) -> "Optional[list[Any]]":
    """Run independent tasks, task ``i`` on rank ``i mod world``, and return every task's result in
    order on rank ``dst`` (None on the other ranks). Results are JSON values: they cross the process
    boundary as JSON bytes. Every rank must call this with the same tasks (a collective). Not
    distributed: the tasks run here, in order."""
    mine = [(i, json.dumps(tasks[i]()).encode()) for i in round_robin(len(tasks))]
    gathered = gather_bytes(mine, dst=dst)
    if is_distributed() and rank() != dst:
        return None
    if [i for i, _ in gathered] != list(range(len(tasks))):
        raise RuntimeError(f"run_json_tasks: expected results of tasks 0..{len(tasks) - 1}, got {[i for i, _ in gathered]}")
    return [json.loads(b) for _, b in gathered]


def gather_bytes(items: "list[tuple[int, bytes]]", dst: int = 0) -> "list[tuple[int, bytes]]":
    """Every rank's ``(index, payload)`` pairs on rank ``dst``, sorted by index (other ranks get
    ``[]``); identity (sorted) when not distributed. Payloads are plain bytes (e.g. safetensors),
    so nothing but bytes and integers crosses the process boundary."""
    if not all(isinstance(i, int) and isinstance(b, (bytes, bytearray)) for i, b in items):
        raise TypeError("gather_bytes expects a list of (int, bytes) pairs")
    if not is_distributed():
        return sorted(items, key=lambda p: p[0])
    box: list[Any] = [None] * world_size() if rank() == dst else []
    torch.distributed.gather_object(list(items), box if rank() == dst else None, dst=dst)
    if rank() != dst:
        return []
    return sorted((p for part in box for p in part), key=lambda p: p[0])
