"""Typed command-line values: every numeric option is parsed and checked by argparse itself, so a bad
value is refused before any work with a message naming the option as the user typed it
(``argument --n-images/--n: must be an integer >= 1, got '0'``), never a library message about an
internal parameter name.

Each parser is a plain function usable as ``type=`` in ``add_argument``; its ``__name__`` is what
argparse prints for an unparsable value, so it describes the expected value.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Callable

__all__ = ["TYPED", "float_list", "key_value", "memory_size", "nonnegative_float", "nonnegative_int",
           "nonnegative_list", "positive_float", "positive_int", "positive_list", "probability", "unit_interval"]


def _number(text: str, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {'an integer' if integer else 'a number'}, got {text!r}") from None
    if not integer and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _bounded(integer: bool, low: float, low_open: bool, high: float = math.inf, high_open: bool = False,
             what: str = "") -> Callable[[str], float]:
    kind = "an integer" if integer else "a number"
    lo = f"> {low:g}" if low_open else f">= {low:g}"
    hi = "" if math.isinf(high) else f" and {'<' if high_open else '<='} {high:g}"
    expected = what or f"{kind} {lo}{hi}"

    def parse(text: str) -> float:
        value = _number(text, integer)
        if value < low or (low_open and value == low) or value > high or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


positive_int = _bounded(True, 1, False)
positive_int.__name__ = "positive integer"
nonnegative_int = _bounded(True, 0, False)
nonnegative_int.__name__ = "non-negative integer"
positive_float = _bounded(False, 0.0, True)
positive_float.__name__ = "positive number"
nonnegative_float = _bounded(False, 0.0, False)
nonnegative_float.__name__ = "non-negative number"
probability = _bounded(False, 0.0, True, 1.0, True, "a probability in (0, 1)")
probability.__name__ = "probability"
unit_interval = _bounded(False, 0.0, False, 1.0, False, "a number in [0, 1]")
unit_interval.__name__ = "number in [0, 1]"


def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers, e.g. ``0.1,0.2,0.3`` (at least one)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers such as 0.1,0.2,0.3, got {text!r}")
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated numbers such as 0.1,0.2,0.3; {p!r} in "
                                             f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be finite numbers, got {p!r} in {text!r}")
        values.append(v)
    return tuple(values)


def _list_above(low: float, strict: bool) -> Callable[[str], tuple[float, ...]]:
    sign = ">" if strict else ">="

    def parse(text: str) -> tuple[float, ...]:
        values = float_list(text)
        bad = [v for v in values if v < low or (strict and v == low)]
        if bad:
            raise argparse.ArgumentTypeError(f"must be numbers {sign} {low:g}, got {bad[0]:g} in {text!r}")
        return values

    return parse


float_list.__name__ = "comma-separated numbers"
#: Comma-separated numbers >= 0 (radii).
nonnegative_list = _list_above(0.0, False)
nonnegative_list.__name__ = "comma-separated numbers >= 0"
#: Comma-separated numbers > 0 (standard deviations).
positive_list = _list_above(0.0, True)
positive_list.__name__ = "comma-separated numbers > 0"


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false), else a string;
    dashes in KEY become underscores (``-o random-start=false``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a parameter name as KEY, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


key_value.__name__ = "KEY=VALUE"


def memory_size(text: str) -> str:
    """A memory size such as ``8G``, ``512M`` or a number of bytes (:func:`robustlab.memory.parse_size`),
    checked and kept as written."""
    from robustlab.memory import parse_size

    try:
        parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


memory_size.__name__ = "memory size"

#: Every typed parser of this module for numbers (the parser-walking test checks numeric options use one of them).
TYPED = (positive_int, nonnegative_int, positive_float, nonnegative_float, probability, unit_interval, float_list,
         nonnegative_list, positive_list, memory_size)
