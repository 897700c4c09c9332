"""Start-up of the ``robustlab`` program: the memory allocator, chosen before torch is imported.

With glibc's allocator, a long evaluation's peak memory creeps up batch after batch although
nothing is kept: attacks retire finished samples, so every step frees and allocates tensors of
new sizes, and the freed heap fragments (measured on Fashion-MNIST, ``evaluate --suite quick``,
3,000 images: the peak after each batch grew from 417 to 534 MB). jemalloc (Evans 2006), set up
as :data:`MALLOC_CONF` says, keeps it flat (401 -> 428 MB) and the same run took 20.3 s instead of
24.3 s. So the program re-executes
itself once with jemalloc preloaded when the library is installed (Debian/Ubuntu:
``libjemalloc2``), as torch's own CPU launcher does (``python -m torch.backends.xeon.run_cpu
--enable-jemalloc``). Nothing else changes: same interpreter, arguments, environment and process
id (``exec``), so torchrun's workers are re-executed in place too.

``ROBUSTLAB_ALLOCATOR``: ``auto`` (default: jemalloc when found), ``jemalloc`` (the same, with a
warning when it is not found) or ``system`` (the C library's allocator). A process that already
preloads an allocator (``LD_PRELOAD``) is left alone. Only the command line does this: ``import
robustlab`` in a user's program never re-executes it (start that program with
``LD_PRELOAD=<path to libjemalloc.so.2>`` for the same effect).

This module imports only the standard library: it runs before torch is loaded.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Optional, Sequence

ENV = "ROBUSTLAB_ALLOCATOR"
CHOICES = ("auto", "jemalloc", "system")
_LIBS = ("libjemalloc.so.2", "libjemalloc.so")
#: jemalloc's settings unless the user gives ``MALLOC_CONF``: freed pages are kept for reuse, never
#: purged by time. The default 10 s decay releases pages continuously over that window (not after
#: it), and the next allocation faults them in again: smoothing certification (50 images,
#: N = 10,000) spent 22.6 s in the kernel and took 27.4 s; without decay 0.4 s and 17.6 s (glibc:
#: 8.3 s, 18.4 s). robustlab purges explicitly between batches instead
#: (:func:`robustlab.evaluate.shards.release_memory`), so peak memory stays flat.
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_ALLOCATOR_HINTS = ("jemalloc", "tcmalloc", "mimalloc")


def _lib_dirs(environ: Mapping[str, str]) -> list[str]:
    dirs = [os.path.join(sys.prefix, "lib")]
    if environ.get("CONDA_PREFIX"):
        dirs.append(os.path.join(environ["CONDA_PREFIX"], "lib"))
    multiarch = getattr(sys.implementation, "_multiarch", None)
    if multiarch:
        dirs.append(f"/usr/lib/{multiarch}")
    dirs += ["/usr/lib64", "/usr/lib", "/usr/local/lib", "/lib64", "/lib"]
    return dirs


def find_jemalloc(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The path of an installed jemalloc shared library, or None."""
    for d in _lib_dirs(environ):
        for name in _LIBS:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
    return None


def preload_plan(environ: Mapping[str, str], platform: str, orig_argv: Sequence[str],
                 library: Optional[str]) -> "Optional[dict[str, str]]":
    """The environment to re-execute ``orig_argv`` with (jemalloc preloaded), or None to run
    as is. Pure: every input is an argument (tested without executing anything)."""
    choice = environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:  # a user error: one line, exit status 2 like every other
        print(f"robustlab: error: {ENV} must be one of {', '.join(CHOICES)}, got {choice!r}", file=sys.stderr)
        raise SystemExit(2)
    if choice == "system" or not platform.startswith("linux") or not orig_argv:
        return None
    preload = environ.get("LD_PRELOAD", "")
    if any(hint in preload for hint in _ALLOCATOR_HINTS):
        return None  # already preloaded (by us one exec ago, or by the user)
    if library is None:
        if choice == "jemalloc":
            print(f"robustlab: warning: {ENV}=jemalloc but no libjemalloc.so.2 was found "
                  "(Debian/Ubuntu: apt-get install libjemalloc2); using the system allocator", file=sys.stderr)
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = library + (" " + preload if preload else "")
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    return env


def use_jemalloc() -> None:
    """Re-execute this process with jemalloc preloaded where :func:`preload_plan` says so
    (returns only when it does not, or when ``exec`` fails)."""
    orig = list(getattr(sys, "orig_argv", []))
    env = preload_plan(os.environ, sys.platform, orig, find_jemalloc())
    if env is None or not sys.executable:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, orig, env)
    except OSError:  # e.g. a sandbox that forbids exec: run on with the system allocator
        return


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``robustlab`` console script: allocator first, then the command line."""
    if argv is None:
        use_jemalloc()
    from robustlab.cli import main as cli_main

    return cli_main(argv)
