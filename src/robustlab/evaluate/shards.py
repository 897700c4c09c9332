"""The one engine of robustlab's commands: work units of images shared out over ``torchrun`` ranks,
each kept in its own file so a killed run resumes, under a lock on the output folder.

Unit ``u`` (a chunk of images) goes to rank ``u % world`` (:func:`robustlab.distributed.round_robin`)
and keeps its global index, so what it computes, and the seed it derives from ``(seed, u)`` with
:func:`unit_seed`, do not depend on the number of ranks: 1 or N processes give the same results.
Each finished unit is written atomically to ``<parts>/<name>_<u>.safetensors`` tagged with the
run's configuration hash (:func:`config_hash`); ``resume=True`` reuses the units of its own
configuration and recomputes anything else (each file named in a warning). While units are written,
``<parts>/.robustlab.lock`` (:class:`OutputLock`) keeps a second run out of the folder. The results
travel between ranks as safetensors bytes. ``robustlab evaluate`` (its batches), ``certify`` and
``verify`` (their chunks of images) all run through :func:`run_units`.

Faults are injected in tests through one hook: the environment variable :data:`CRASH_ENV`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from robustlab import distributed
from robustlab._io import atomic_write_bytes, atomic_write_text, probe_writable

log = logging.getLogger("robustlab.evaluate.shards")
#: The lock file that marks a folder in use by a run (:class:`OutputLock`).
LOCK_NAME = ".robustlab.lock"
#: Test hook: ``RANK:UNITS`` makes process ``RANK`` exit hard (``os._exit(17)``) after writing
#: ``UNITS`` unit files (only in a first attempt, not in a torchrun restart).
CRASH_ENV = "ROBUSTLAB_TEST_EVAL_CRASH"


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


@dataclass(frozen=True)
class UnitFiles:
    """Where a run keeps its unit files, ``<folder>/<name>_<u>.safetensors``, tagged with ``config``
    (its :func:`config_hash`); ``resume`` reuses those of this configuration; ``lock`` holds the
    folder's :class:`OutputLock` while units are written (off when the caller holds one already)."""

    folder: Path
    config: str
    resume: bool = False
    name: str = "unit"
    lock: bool = True


def run_units(n_units: int, compute: Callable[[int], dict[str, Tensor]], files: Optional[UnitFiles] = None, *,
              done: Optional[Callable[[int], None]] = None,
              check: Optional[Callable[[int, dict[str, Tensor]], Optional[str]]] = None,
              everywhere: bool = False) -> Optional[list[dict[str, Tensor]]]:
    """Compute this rank's units (``compute(u)`` -> tensors), keep each in ``files`` (when given)
    and return every unit's tensors in order on rank 0 (on every rank with ``everywhere``; ``None``
    on the other ranks otherwise).

    Each unit is packed into one safetensors blob as soon as it is computed: a unit's records are
    many small tensors allocated between an attack's large temporaries, and kept as they are they
    pin freed heap pages (peak memory then grows with the number of units). Without
    ``files.resume``, rank 0 first deletes the folder's unit files; with it, a file is reused when
    it can be read, carries the configuration and its own index, and ``check(u, tensors)`` (when
    given) finds nothing wrong (else the reason is logged with the file's name and the unit is
    recomputed). ``done(u)`` is called after each unit (progress)."""
    main = distributed.is_main()
    folder_lock = OutputLock(files.folder) if files is not None and main and files.lock else None
    if files is not None and main:
        files.folder.mkdir(parents=True, exist_ok=True)
        if folder_lock is not None:
            folder_lock.acquire()
        if not files.resume:
            for f in files.folder.glob(f"{files.name}_*.safetensors"):
                f.unlink()
    try:
        distributed.barrier()
        mine = _compute_units(n_units, compute, files, done, check)
    finally:
        if folder_lock is not None:
            folder_lock.release()
    if not distributed.is_distributed():
        return [st_load(blob) for _, blob in mine]
    gathered = distributed.gather_bytes(mine)
    if everywhere:
        return [st_load(b) for b in distributed.broadcast_object([b for _, b in gathered])]
    return [st_load(b) for _, b in gathered] if main else None


def _compute_units(n_units: int, compute: Callable[[int], dict[str, Tensor]], files: Optional[UnitFiles],
                   done: Optional[Callable[[int], None]],
                   check: Optional[Callable[[int, dict[str, Tensor]], Optional[str]]]) -> list[tuple[int, bytes]]:
    """This rank's units as ``(u, safetensors bytes)``, each read back or computed and written."""
    mine: list[tuple[int, bytes]] = []
    reused, redone, written = 0, [], 0
    name, config = (files.name, files.config) if files is not None else ("unit", "")
    for u in distributed.round_robin(n_units):
        path = files.folder / f"{name}_{u:06d}.safetensors" if files is not None else None
        found = files is not None and files.resume and path.is_file()
        rec = read_record(path, config, name, u) if found else None
        if rec is not None and check is not None:
            problem = check(u, rec)
            if problem:
                log.warning("%s %s; recomputing it", path, problem)
                rec = None
        if found and rec is None:
            redone.append(path.name)
        if rec is None:
            blob = st_save({k: v.detach().cpu().contiguous() for k, v in compute(u).items()},
                           metadata={"config": config, name: str(u)})
            if path is not None:
                atomic_write_bytes(path, blob)
                written += 1
                maybe_crash(written)
            release_memory()
        else:
            reused += 1
            blob = st_save(rec, metadata={"config": config, name: str(u)})
        del rec
        mine.append((u, blob))
        if done is not None:
            done(u)
    if reused:
        log.info("resumed: reused %d of this process's %d finished %ss", reused, len(mine), name)
    if redone:
        log.warning("resumed: %d %s file(s) in %s could not be reused (unreadable, truncated, of another run or of "
                    "the wrong shape; each named above) and were recomputed: %s", len(redone), name,
                    files.folder if files is not None else None, ", ".join(redone))
    return mine


def maybe_crash(written: int) -> None:
    """The test hook :data:`CRASH_ENV`: exit hard once this rank has written enough unit files."""
    spec = os.environ.get(CRASH_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return
    r, k = (int(v) for v in spec.split(":"))
    if r == distributed.rank() and written >= k:
        os._exit(17)


# -- the output folder: writable, locked, its manifest ---------------------------------------------


def check_writable(out: Path) -> None:
    """Create ``out`` and write (then remove) a file in it; ``PermissionError`` naming it if not."""
    try:
        probe_writable(out)
    except OSError as exc:
        raise PermissionError(f"output directory {out} is not writable: {exc}") from exc


def write_manifest(folder: Path, manifest: Mapping[str, Any], resume: bool) -> None:
    """Write ``folder/manifest.json``; on ``resume`` first refuse a folder started with another
    configuration (a manifest that cannot be read is named in a warning, and the unit files that
    carry this run's configuration are reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    if path.is_file() and resume:
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            old = None
            log.warning("%s cannot be read; resuming from the unit files that carry this run's configuration", path)
        if old is not None and old != json.loads(json.dumps(manifest)):
            raise ValueError(f"cannot resume {folder.parent}: it was started with another suite, data, model, batch "
                             f"size or seed (delete {folder} or drop --resume)")
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """Hold ``out/.robustlab.lock`` (pid, host, start time) while a run writes into ``out``.

    Created atomically (``os.link`` of a finished temporary file, so no reader ever sees it half
    written). A lock held by a live process, or by this one (another run in the same process), makes
    :meth:`acquire` raise ``FileExistsError`` naming the holder; a lock whose process is gone (same
    host) is stale and taken over. Released on exit, also after an error or an interruption."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self.held = False

    def _holder(self) -> Optional[dict]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return {}

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    holder = self._holder()
                    if holder is None:
                        continue  # released meanwhile: try again
                    pid, host = holder.get("pid"), holder.get("host")
                    alive = not isinstance(pid, int) or host != me["host"] or pid == me["pid"] or _pid_alive(pid)
                    if alive:
                        raise FileExistsError(
                            f"output folder {self.path.parent} is in use by another robustlab run (pid {pid} on "
                            f"{host}, started {holder.get('started', '?')}); wait for it to finish or choose another "
                            f"output folder (if no such run exists, delete {self.path})") from None
                    log.warning("taking over the stale lock %s of pid %s, which no longer runs", self.path, pid)
                    os.replace(tmp, self.path)
                    self.held = True
                    return
            raise FileExistsError(f"could not lock output folder {self.path.parent}: {self.path} keeps changing")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
