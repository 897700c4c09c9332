"""Work units shared out over ``torchrun`` ranks, each kept in its own file so a killed run resumes:
the engine of ``robustlab certify`` and ``robustlab verify`` under ``torchrun``.

Unit ``u`` (a chunk of images) goes to rank ``u % world`` (:func:`robustlab.distributed.round_robin`)
and keeps its global index, so what it computes, and the seed it derives from ``(seed, u)`` with
:func:`unit_seed`, do not depend on the number of ranks: 1 or N processes give the same results.
Each finished unit is written atomically to ``parts/unit_<u>.safetensors`` tagged with the run's
configuration hash; ``resume=True`` reuses the units of its own configuration and recomputes
anything else (named in a warning). The results travel to rank 0 as safetensors bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from robustlab import distributed
from robustlab._io import atomic_write_bytes

log = logging.getLogger("robustlab.shards")


def unit_seed(seed: int, unit: int) -> int:
    """A 63-bit seed for work unit ``unit`` of a run seeded with ``seed`` (stable across runs,
    platforms and rank counts)."""
    h = hashlib.sha256(f"{int(seed)},{int(unit)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@functools.lru_cache(maxsize=1)
def _releaser() -> Optional[Callable[[], None]]:
    """How this process hands freed memory back: jemalloc's purge of every arena when jemalloc is
    the allocator (the ``robustlab`` program preloads it, :mod:`robustlab._launch`), glibc's
    ``malloc_trim`` otherwise, None on other C libraries and platforms."""
    try:
        import ctypes
        import ctypes.util

        this = ctypes.CDLL(None)
        if hasattr(this, "mallctl"):  # jemalloc
            mallctl = this.mallctl

            def purge() -> None:  # "arena.<MALLCTL_ARENAS_ALL = 4096>.purge"
                mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))

            return purge
        name = ctypes.util.find_library("c")
        if not name:
            return None
        malloc_trim = ctypes.CDLL(name).malloc_trim

        def trim() -> None:
            malloc_trim(0)

        return trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give the freed heap back to the operating system. Allocators keep the pages of freed
    tensors for reuse (glibc raises its mmap threshold as large tensors are freed; the
    ``robustlab`` program runs jemalloc without time-based purging, which costs page faults), so
    without this the resident memory of a long evaluation creeps up batch after batch although
    nothing is kept; called before each attack, after each batch and between the checks, it keeps
    peak memory set by one batch, not by the number of images."""
    release = _releaser()
    if release is not None:
        release()


@contextlib.contextmanager
def counting_forwards(model: nn.Module, on_forward: Callable[[], None]) -> Iterator[None]:
    """Call ``on_forward()`` after each forward pass of ``model`` while the block runs (progress
    inside long units); the hook is removed at the end. A module that takes no hooks (e.g. a
    scripted one) is run without counting."""
    try:
        handle = model.register_forward_hook(lambda *_: on_forward())
    except (AttributeError, RuntimeError):
        handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a run's configuration (JSON, sorted keys): the tag of every unit file."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def read_record(path: Path, config: str, tag: str, index: int) -> Optional[dict[str, Tensor]]:
    """The tensors of a record file written by a run of ``config`` for unit ``index`` (metadata
    ``{tag: str(index)}``), or ``None`` after a warning naming the file when it cannot be read or
    belongs to another run or unit (the caller recomputes it)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            rec = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types for truncated or garbled files
        log.warning("%s cannot be read (%s: %s); recomputing it", path, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return None
    if meta.get("config") != config or meta.get(tag) != str(index):
        log.warning("%s was written by another run (configuration %s, this run %s); ignoring it and recomputing it",
                    path, str(meta.get("config"))[:12], config[:12])
        return None
    return rec


def run_units(n_units: int, compute: Callable[[int], dict[str, Tensor]], *, parts: Optional[Path] = None,
              config: str = "", resume: bool = False,
              done: Optional[Callable[[int], None]] = None) -> Optional[list[dict[str, Tensor]]]:
    """Compute this rank's units (``compute(u)`` -> CPU tensors), keep each in ``parts`` (when
    given) and return every unit's tensors in order on rank 0 (``None`` on the other ranks).

    Without ``resume``, rank 0 first deletes the unit files in ``parts``; ``done(u)`` is called
    after each unit (progress)."""
    main = distributed.is_main()
    if parts is not None and main:
        parts.mkdir(parents=True, exist_ok=True)
        if not resume:
            for f in parts.glob("unit_*.safetensors"):
                f.unlink()
    distributed.barrier()
    mine: list[tuple[int, dict[str, Tensor]]] = []
    reused, redone = 0, []
    for u in distributed.round_robin(n_units):
        path = parts / f"unit_{u:06d}.safetensors" if parts is not None else None
        found = resume and path is not None and path.is_file()
        rec = read_record(path, config, "unit", u) if found else None
        if found and rec is None:
            redone.append(path.name)
        if rec is None:
            rec = {k: v.detach().cpu().contiguous() for k, v in compute(u).items()}
            if path is not None:
                atomic_write_bytes(path, st_save(rec, metadata={"config": config, "unit": str(u)}))
            release_memory()
        else:
            reused += 1
        mine.append((u, rec))
        if done is not None:
            done(u)
    if reused:
        log.info("resumed: reused %d of this process's %d finished units", reused, len(mine))
    if redone:
        log.warning("resumed: %d unit file(s) in %s could not be reused (unreadable, truncated or of another run; "
                    "each named above) and were recomputed: %s", len(redone), parts, ", ".join(redone))
    if not distributed.is_distributed():
        return [rec for _, rec in mine]
    gathered = distributed.gather_bytes([(u, st_save(rec)) for u, rec in mine])
    return [st_load(b) for _, b in gathered] if main else None
