"""One spelling per idea in attack constructors, old spellings accepted for one release.

Every attack takes its threat model (or norm) first and everything else by keyword, with one word
per idea across the library: ``steps`` (iterations), ``step_size`` (the size of one update:
FGSM's step, PGD's alpha, the Adam learning rate of Carlini-Wagner, NATTACK's NES rate, the
patch's learning rate), ``queries``, ``restarts``, ``seed``. :func:`spellings` wraps an
``__init__`` so that calls written for the older signatures (extra positional arguments, or
``step`` / ``lr``) still work and emit a ``DeprecationWarning`` naming the new spelling.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Mapping, Sequence, TypeVar

F = TypeVar("F", bound=Callable[..., None])


def spellings(*, positional: Sequence[str] = (), renamed: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Decorate an attack's ``__init__(self, threat, *, ...)``: ``positional`` names the keywords
    that older versions took by position after the threat model (in that order), ``renamed`` maps
    an old keyword to its new name. Either use warns (``DeprecationWarning``) and is translated."""
    renamed = dict(renamed or {})

    def wrap(init: F) -> F:
        @functools.wraps(init)
        def inner(self: Any, first: Any = None, *args: Any, **kwargs: Any) -> None:
            owner = type(self).__name__
            if args:
                if len(args) > len(positional):
                    raise TypeError(f"{owner}() takes its threat model and then keywords only; got {1 + len(args)} "
                                    "positional arguments")
                names = list(positional[: len(args)])
                for name in names:
                    if name in kwargs:
                        raise TypeError(f"{owner}() got {name!r} both by position and by keyword")
                warnings.warn(f"{owner}: pass {', '.join(names)} by keyword ({', '.join(f'{n}=...' for n in names)}); "
                              "positional arguments after the threat model are deprecated and will be refused in the "
                              "next release", DeprecationWarning, stacklevel=2)
                kwargs.update(zip(names, args))
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}() got both {old!r} (the old spelling) and {new!r}; pass {new!r}")
                    warnings.warn(f"{owner}: {old!r} is now spelled {new!r}; the old spelling is deprecated and will be "
                                  "refused in the next release", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            if first is None:
                init(self, **kwargs)
            else:
                init(self, first, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
