"""One registry shape for everything robustlab knows by name: attacks, training adversaries,
architectures, certifiers, detectors, input-transformation defences and data sets.

A :class:`Registry` maps a name to an entry (usually a factory) and a one-line description. Every
kind offers the same four operations::

    ATTACKS.register("my-pgd", factory, "PGD with my schedule")   # replace=True to override
    ATTACKS.get("pgd", threat, steps=20)                          # entry(*args, **options)
    ATTACKS.available()                                           # ("fgsm", "pgd", ...)
    ATTACKS.describe("pgd")                                       # the description

Names are case-insensitive and ``_`` equals ``-`` (``"small_cnn"`` is ``"small-cnn"``); an unknown
name is a ``ValueError`` naming the kind and every available name. A registry is also a read-only
mapping from name to entry (``"pgd" in ATTACKS``, ``ATTACKS["pgd"]``, iteration in registration
order; ``registry[name] = entry`` replaces, ``del registry[name]`` removes). Unlike a dict's,
``get`` builds (``get(name, *args, **options)``); :meth:`entry` looks up without building. Registries hold no other state; the process's registries are the module-level instances of
each package (``robustlab.attacks.registry.ATTACKS``, ``robustlab.models.ARCHITECTURES``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Callable, Generic, Optional, TypeVar

E = TypeVar("E")


def normalize_name(name: object, kind: str = "name") -> str:
    """``name`` as registries key it: stripped, lower case, ``_`` -> ``-``."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"{kind} must be a non-empty string, got {name!r}")
    return name.strip().lower().replace("_", "-")


class Registry(MutableMapping[str, E], Generic[E]):
    """Named entries of one kind (``kind``: "attack", "architecture", ...), in registration order.

    ``get(name, *args, **options)`` calls the entry when it is callable (a factory), else returns
    it; ``describe(name)`` gives the registered description, or the entry's own ``description`` /
    ``help`` attribute, or its docstring's first line. ``check(name, entry)`` (optional) validates
    an entry when it is registered (raise ``TypeError`` / ``ValueError``)."""

    def __init__(self, kind: str, *, check: Optional[Callable[[str, E], None]] = None) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}
        self._descriptions: dict[str, str] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._check = check

    # -- the four operations ----------------------------------------------------------------------

    def register(self, name: str, entry: E, description: str = "", *, replace: bool = False, **info: Any) -> None:
        """Make ``entry`` available as ``name``; an existing name needs ``replace=True``. ``info``:
        facts about the entry that callers look up with :meth:`info` (e.g. ``minimal=True``)."""
        key = normalize_name(name, f"{self.kind} name")
        if key in self._entries and not replace:
            raise ValueError(f"{self.kind} {key!r} is already registered; pass replace=True to override it")
        if self._check is not None:
            self._check(key, entry)
        self._entries[key] = entry
        self._descriptions[key] = str(description)
        self._info[key] = dict(info)

    def get(self, name: str, *args: Any, **options: Any) -> Any:  # type: ignore[override]
        """``entry(*args, **options)`` for a callable entry (a factory), else the entry itself."""
        entry = self.entry(name)
        return entry(*args, **options) if callable(entry) and not isinstance(entry, type(self)) else entry

    def available(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def describe(self, name: str) -> str:
        """One line on what ``name`` is."""
        key = self.key(name)
        if self._descriptions.get(key):
            return self._descriptions[key]
        entry = self._entries[key]
        for attr in ("description", "help"):
            text = getattr(entry, attr, None)
            if isinstance(text, str) and text:
                return text
        doc = (getattr(entry, "__doc__", None) or "").strip()
        first = doc.split("\n\n")[0]  # the docstring's first paragraph, on one line
        return " ".join(line.strip() for line in first.splitlines()) if first else key

    # -- lookups ----------------------------------------------------------------------------------

    def key(self, name: object) -> str:
        """The registered key of ``name``; ``ValueError`` naming the choices when there is none."""
        key = normalize_name(name, f"{self.kind} name") if isinstance(name, str) and name.strip() else None
        if key is None or key not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self._entries) or '(none)'}")
        return key

    def entry(self, name: str) -> E:
        """The entry registered as ``name`` (not called)."""
        return self._entries[self.key(name)]

    def info(self, name: str) -> dict[str, Any]:
        """The facts registered with ``name`` (a copy)."""
        return dict(self._info[self.key(name)])

    def without(self, *names: str) -> "Registry[E]":
        """A copy of this registry without ``names`` (e.g. to run something as if an entry did not
        exist: ``monkeypatch.setattr(registry_module, "ATTACKS", ATTACKS.without("square"))``)."""
        gone = {self.key(n) for n in names}
        out: Registry[E] = Registry(self.kind, check=self._check)
        for key, entry in self._entries.items():
            if key not in gone:
                out.register(key, entry, self._descriptions.get(key, ""), **self._info.get(key, {}))
        return out

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that replace a whole family)."""
        key = self.key(name)
        del self._entries[key]
        self._descriptions.pop(key, None)
        self._info.pop(key, None)

    # -- Mapping ----------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> E:
        try:
            return self.entry(name)
        except ValueError as exc:
            raise KeyError(str(exc)) from None

    def __setitem__(self, name: str, entry: E) -> None:
        """Register or replace ``name``, keeping the description and facts it had."""
        key = normalize_name(name, f"{self.kind} name")
        description, info = self._descriptions.get(key, ""), self._info.get(key, {})
        self.register(key, entry, description, replace=True, **info)

    def __delitem__(self, name: str) -> None:
        """Remove the entry (its description and facts stay for a later ``registry[name] = entry``,
        as ``monkeypatch.delitem`` restores it)."""
        try:
            del self._entries[self.key(name)]
        except ValueError as exc:
            raise KeyError(str(exc)) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(name.strip()) and normalize_name(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
