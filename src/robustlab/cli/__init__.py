"""``robustlab`` command line: a thin shell over the Python API.

Each subcommand lives in its own module (``robustlab.cli.<name>``) with a
``register(subparsers)`` function that adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from typing import Optional, Sequence

from robustlab import __version__

#: Subcommand modules, in the order ``robustlab --help`` lists them.
COMMANDS = ("demo", "data", "models", "train", "attack", "evaluate", "certify", "verify", "detect", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustlab",
        description="Adversarial robustness of neural-network classifiers: attack, defend, certify, report.",
    )
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"robustlab.cli.{name}").register(sub)
    return parser


#: OS errors that come from the user's paths or machine, not from a robustlab bug.
_USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                          errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG})


def _user_error(exc: BaseException) -> Optional[str]:
    """The one-line message for an error the user can fix, or None for one that is a bug."""
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError)):
        if exc.errno not in _USER_ERRNOS:
            return None
        where = f" writing {exc.filename}" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"no space left on the device{where} ({exc.strerror}); free some space or choose another --out"
        return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, ImportError, OSError) as exc:
        # User errors (bad values, missing files or extras, a full disk): one clear line, no traceback.
        # ROBUSTLAB_TRACEBACK=1 shows the traceback (for bug reports).
        message = _user_error(exc)
        if message is None or os.environ.get("ROBUSTLAB_TRACEBACK"):
            raise
        print(f"robustlab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustlab {args.command}: interrupted (rerun with --resume where supported)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
