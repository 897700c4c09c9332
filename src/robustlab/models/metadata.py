"""The fields of a saved model's metadata (``metadata.json`` or the safetensors header) robustlab reads,
and their types: checked once when a model is read, so that a hand-edited or damaged file fails with
one message naming the file, the field, its value and what was expected, instead of a ``TypeError``
or an ``invalid literal for int()`` deep inside whatever reads the field first.

Fields robustlab does not read are left alone (a user may keep their own notes there).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

__all__ = ["check_metadata"]


def _what(value: Any) -> str:
    kind = "a string" if isinstance(value, str) else "a boolean" if isinstance(value, bool) else \
        "null" if value is None else f"a {type(value).__name__}"
    text = repr(value)
    return f"{text[:60] + '...' if len(text) > 60 else text} ({kind})"


class _Fields:
    """Checks the fields of one metadata dict; every error names ``where`` and the dotted field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, value: Any, expected: str) -> None:
        raise ValueError(f"{self.where}: field {field!r} must be {expected}, got {_what(value)}")

    def integer(self, d: Mapping[str, Any], key: str, field: str, low: int) -> None:
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            self.fail(field, v, f"an integer >= {low}")

    def string(self, d: Mapping[str, Any], key: str, field: str) -> None:
        if not isinstance(d[key], str):
            self.fail(field, d[key], "a string")

    def table(self, d: Mapping[str, Any], key: str, field: str) -> None:
        if not isinstance(d[key], Mapping):
            self.fail(field, d[key], "an object ({...})")

    def numbers(self, d: Mapping[str, Any], key: str, field: str, length: int, positive: bool = False) -> None:
        v = d[key]
        ok = (isinstance(v, list) and len(v) == length and all(
            isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and (e > 0 or not positive)
            for e in v))
        if not ok:
            self.fail(field, v, f"a list of {length} finite{' positive' if positive else ''} number(s)")


def _architecture(f: _Fields, arch: Mapping[str, Any]) -> None:
    if "name" not in arch:
        raise ValueError(f"{f.where}: field 'architecture' has no 'name'")
    f.string(arch, "name", "architecture.name")
    for key, low in (("num_classes", 2), ("in_channels", 1)):
        if key in arch:
            f.integer(arch, key, f"architecture.{key}", low)
    if "input_size" in arch:
        size = arch["input_size"]
        if not (isinstance(size, list) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
            f.fail("architecture.input_size", size, "a list of two integers >= 1 ([height, width])")
    channels = arch.get("in_channels") if isinstance(arch.get("in_channels"), int) else None
    for key in ("mean", "std"):
        if key in arch and channels is not None:
            f.numbers(arch, key, f"architecture.{key}", channels, positive=key == "std")


#: field -> its check (top-level fields robustlab reads).
_CHECKS: dict[str, Callable[[_Fields, Mapping[str, Any], str], None]] = {
    "format": lambda f, d, k: f.string(d, k, k),
    "dataset": lambda f, d, k: f.string(d, k, k),
    "name": lambda f, d, k: f.string(d, k, k),
    "created": lambda f, d, k: f.string(d, k, k),
    "robustlab_version": lambda f, d, k: f.string(d, k, k),
    "weights_sha256": lambda f, d, k: f.string(d, k, k),
    "data_sha256": lambda f, d, k: f.string(d, k, k),
    "description": lambda f, d, k: f.string(d, k, k),
    "training": lambda f, d, k: f.table(d, k, k),
    "metrics": lambda f, d, k: f.table(d, k, k),
    "normalization": lambda f, d, k: f.table(d, k, k),
    "demo": lambda f, d, k: f.table(d, k, k),
}


def check_metadata(meta: Any, where: str) -> dict:
    """``meta`` if every field robustlab reads has the right type (``where``: the file, for messages);
    else ``ValueError`` naming the file, the field, its value and what was expected."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: the metadata must be a JSON object ({{...}}), got {_what(meta)}")
    f = _Fields(where)
    for key, check in _CHECKS.items():
        if key in meta:
            check(f, meta, key)
    if "architecture" in meta:
        if not isinstance(meta["architecture"], Mapping):
            f.fail("architecture", meta["architecture"], "an object with name, num_classes, in_channels, ...")
        _architecture(f, meta["architecture"])
    metrics = meta.get("metrics") or {}
    for key in NUMERIC_METRICS:
        value = metrics.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            f.fail(f"metrics.{key}", value, "a finite number")
    return meta


#: The metrics robustlab reads back as numbers (the report's facts, the demo's reuse message).
NUMERIC_METRICS = ("test_accuracy", "val_accuracy", "train_seconds", "wall_seconds")
