"""VNNLIB properties (the VNN-COMP subset of SMT-LIB) read into :class:`~robustlab.verify.spec.Property`.

A file declares the network's inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 .. Y_{K-1}``
(``(declare-const X_0 Real)``) and asserts a formula whose models are the counterexamples::

    (assert (<= X_0 0.5))  (assert (>= X_0 0.25))  ...                  ; the input box
    (assert (or (and (>= Y_1 Y_0)) (and (<= Y_2 3.5) (>= Y_2 Y_0))))    ; the unsafe outputs

Atoms are ``(<= a b)``, ``(>= a b)``, ``(< a b)``, ``(> a b)`` (read as non-strict, the closure of
the region, as VNN-COMP tools do) and ``(= a b)`` over linear terms (numbers, variables,
``(+ ...)``, ``(- ...)``, ``(* number term)``), combined with ``and`` / ``or`` anywhere. The
conjunction of all assertions is brought to disjunctive normal form; in each disjunct the atoms
over inputs must be bounds of single variables (they give an input box) and the atoms over
outputs give a conjunction ``C y <= d``. Disjuncts sharing a box form one :class:`Property`
(its groups the union of their output conjunctions); several boxes give several properties, and
the instance is unsat only if every one of them is. Mixed input/output atoms, general linear
input constraints, undeclared or non-contiguous variables, missing bounds and anything else
outside this subset raise :class:`VNNLibError` naming the file and line.

A property whose groups are exactly the rows ``y_c - y_j <= 0`` (up to a positive factor) for
every ``j != c`` is recognised as the robustness property of class ``c`` (``Property.label``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from robustlab.verify.spec import Property

__all__ = ["VNNLibError", "parse_vnnlib", "read_vnnlib"]

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)")
_IGNORED = ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit")
_MAX_DISJUNCTS = 100_000


class VNNLibError(ValueError):
    """A VNNLIB file outside the supported subset, with the place it was found."""


@dataclass
class _Sexp:
    items: list  # of _Sexp or _Atom
    line: int


@dataclass
class _Atom:
    text: str
    line: int


@dataclass
class _Linear:
    """``sum coef[v] * v + const``."""

    coef: dict
    const: float


@dataclass
class _Constraint:
    """``expr <= 0``."""

    expr: _Linear
    line: int


class _Reader:
    def __init__(self, text: str, name: str) -> None:
        self.name = name
        self.forms = self._parse(text)
        self.declared: dict[str, int] = {}

    def fail(self, line: int, why: str) -> VNNLibError:
        return VNNLibError(f"{self.name}:{line}: {why}")

    # -- s-expressions --------------------------------------------------------------------------
    def _parse(self, text: str) -> list:
        stack: list[_Sexp] = [_Sexp([], 0)]
        for number, raw in enumerate(text.splitlines(), start=1):
            code = raw.split(";", 1)[0]
            for tok in _TOKEN.findall(code):
                if tok == "(":
                    stack.append(_Sexp([], number))
                elif tok == ")":
                    if len(stack) == 1:
                        raise self.fail(number, "')' without a matching '('")
                    done = stack.pop()
                    stack[-1].items.append(done)
                else:
                    stack[-1].items.append(_Atom(tok, number))
        if len(stack) > 1:
            raise self.fail(stack[-1].line, "'(' is never closed")
        for item in stack[0].items:
            if isinstance(item, _Atom):
                raise self.fail(item.line, f"{item.text!r} outside any command")
        return stack[0].items

    # -- commands -------------------------------------------------------------------------------
    def read(self) -> tuple[int, int, list]:
        formulas = []
        for form in self.forms:
            head = form.items[0] if form.items else None
            if not isinstance(head, _Atom):
                raise self.fail(form.line, "expected a command such as (declare-const ...) or (assert ...)")
            if head.text == "declare-const":
                self._declare(form)
            elif head.text == "assert":
                if len(form.items) != 2:
                    raise self.fail(form.line, f"assert takes one formula, got {len(form.items) - 1}")
                formulas.append(form.items[1])
            elif head.text not in _IGNORED:
                raise self.fail(form.line, f"unsupported command {head.text!r} (declare-const and assert)")
        n_x, n_y = self._counts()
        return n_x, n_y, formulas

    def _declare(self, form: _Sexp) -> None:
        items = form.items
        if len(items) != 3 or not all(isinstance(i, _Atom) for i in items[1:]):
            raise self.fail(form.line, "expected (declare-const NAME Real)")
        name, kind = items[1].text, items[2].text
        if kind != "Real":
            raise self.fail(form.line, f"{name} is declared {kind}; only Real variables are supported")
        if not _VARIABLE.fullmatch(name):
            raise self.fail(form.line, f"variable {name!r}: expected X_i (inputs) or Y_j (outputs)")
        if name in self.declared:
            raise self.fail(form.line, f"{name} is declared twice (first on line {self.declared[name]})")
        self.declared[name] = form.line

    def _counts(self) -> tuple[int, int]:
        counts = []
        for kind in "XY":
            idx = sorted(int(n[2:]) for n in self.declared if n[0] == kind)
            if not idx:
                raise VNNLibError(f"{self.name}: no {kind}_i variable is declared")
            if idx != list(range(len(idx))):
                missing = next(i for i in range(len(idx) + 1) if i not in set(idx))
                raise VNNLibError(f"{self.name}: {kind}_{missing} is not declared but {kind}_{idx[-1]} is "
                                  f"({kind} variables must be numbered 0, 1, 2, ...)")
            counts.append(len(idx))
        return counts[0], counts[1]

    # -- formulas -------------------------------------------------------------------------------
    def dnf(self, form: object) -> list[list[_Constraint]]:
        """The formula as a list of conjunctions of ``expr <= 0`` (``[]``: false; ``[[]]``: true)."""
        if not isinstance(form, _Sexp) or not form.items or not isinstance(form.items[0], _Atom):
            line = form.line if isinstance(form, (_Sexp, _Atom)) else 0
            raise self.fail(line, "expected a formula (and ...), (or ...) or a comparison")
        op, args = form.items[0].text, form.items[1:]
        if op in ("and", "or"):
            if not args:
                raise self.fail(form.line, f"({op}) without operands")
            parts = [self.dnf(a) for a in args]
            if op == "or":
                return [c for p in parts for c in p]
            out: list[list[_Constraint]] = [[]]
            for p in parts:
                if len(out) * len(p) > _MAX_DISJUNCTS:
                    raise self.fail(form.line, f"the formula has more than {_MAX_DISJUNCTS} disjuncts in normal form")
                out = [a + b for a in out for b in p]
            return out
        if op in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.fail(form.line, f"({op} ...) takes two terms, got {len(args)}")
            a, b = self.term(args[0]), self.term(args[1])
            less = _sub(a, b) if op in ("<=", "<", "=") else _sub(b, a)
            rows = [less] + ([_sub(b, a)] if op == "=" else [])
            conj = []
            for r in rows:
                if not r.coef:
                    if r.const > 0:
                        return []  # a false comparison of constants
                    continue
                conj.append(_Constraint(r, form.line))
            return [conj]
        raise self.fail(form.line, f"unsupported operator {op!r} in a formula (and, or, <=, >=, <, >, =)")

    def term(self, t: object) -> _Linear:
        if isinstance(t, _Atom):
            if _NUMBER.fullmatch(t.text):
                return _Linear({}, float(t.text))
            if t.text not in self.declared:
                if _VARIABLE.fullmatch(t.text):
                    raise self.fail(t.line, f"{t.text} is used but not declared")
                raise self.fail(t.line, f"{t.text!r} is neither a number nor a declared variable")
            return _Linear({t.text: 1.0}, 0.0)
        assert isinstance(t, _Sexp)
        if not t.items or not isinstance(t.items[0], _Atom):
            raise self.fail(t.line, "expected a term")
        op, args = t.items[0].text, [self.term(a) for a in t.items[1:]]
        if op == "+" and args:
            out = args[0]
            for a in args[1:]:
                out = _add(out, a, 1.0)
            return out
        if op == "-" and args:
            if len(args) == 1:
                return _scale(args[0], -1.0)
            out = args[0]
            for a in args[1:]:
                out = _add(out, a, -1.0)
            return out
        if op == "*" and len(args) == 2:
            a, b = args
            if not a.coef:
                return _scale(b, a.const)
            if not b.coef:
                return _scale(a, b.const)
            raise self.fail(t.line, "a product of two variables is not linear")
        raise self.fail(t.line, f"unsupported term ({op} ...) (numbers, variables, +, -, * by a number)")


def _add(a: _Linear, b: _Linear, s: float) -> _Linear:
    coef = dict(a.coef)
    for k, v in b.coef.items():
        coef[k] = coef.get(k, 0.0) + s * v
    return _Linear({k: v for k, v in coef.items() if v != 0.0}, a.const + s * b.const)


def _sub(a: _Linear, b: _Linear) -> _Linear:
    return _add(a, b, -1.0)


def _scale(a: _Linear, s: float) -> _Linear:
    return _Linear({k: s * v for k, v in a.coef.items() if s * v != 0.0}, s * a.const)


@dataclass
class _Region:
    """What a conjunction says: per-input bounds (Python floats) and the output rows ``C y <= d``."""

    lower: list
    upper: list
    rows: list  # of (coefficients {j: a}, d)

    def copy(self) -> "_Region":
        return _Region(list(self.lower), list(self.upper), list(self.rows))

    def add(self, reader: _Reader, conj: list[_Constraint]) -> "_Region":
        for c in conj:
            kinds = {k[0] for k in c.expr.coef}
            if kinds == {"X", "Y"}:
                raise reader.fail(c.line, "a constraint relating inputs and outputs is not supported")
            if kinds == {"X"}:
                if len(c.expr.coef) != 1:
                    raise reader.fail(c.line, "input constraints must bound one variable each (an input box)")
                (name, a), = c.expr.coef.items()
                i, bound = int(name[2:]), (0.0 - c.expr.const) / a + 0.0  # a x + k <= 0 (+ 0.0: no -0.0)
                if a > 0:
                    self.upper[i] = min(self.upper[i], bound)
                else:
                    self.lower[i] = max(self.lower[i], bound)
            else:
                self.rows.append(({int(n[2:]): a for n, a in c.expr.coef.items()}, 0.0 - c.expr.const))
        return self

    def outputs(self, n_y: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, d); no output condition at all: every output of the box is unsafe (``0 <= 0``)."""
        c = torch.zeros(max(1, len(self.rows)), n_y, dtype=torch.float64)
        d = torch.zeros(max(1, len(self.rows)), dtype=torch.float64)
        for r, (coef, rhs) in enumerate(self.rows):
            for j, a in coef.items():
                c[r, j] = a
            d[r] = rhs
        return c, d


def _robust_label(groups: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int) -> Optional[int]:
    """The class c when the groups are exactly {y_c - y_j <= 0 : j != c} (up to positive factors)."""
    if len(groups) != k - 1 or k < 2:
        return None
    label, others = None, set()
    for c, d in groups:
        if c.shape[0] != 1 or float(d[0]) != 0.0:
            return None
        row = c[0]
        pos, neg = (row > 0).nonzero().flatten(), (row < 0).nonzero().flatten()
        if pos.numel() != 1 or neg.numel() != 1 or float(row[pos[0]]) != -float(row[neg[0]]):
            return None
        if label is None:
            label = int(pos[0])
        if int(pos[0]) != label:
            return None
        others.add(int(neg[0]))
    return label if others == set(range(k)) - {label} else None


def parse_vnnlib(text: str, name: str = "<vnnlib>", *, input_shape: Optional[Sequence[int]] = None,
                 num_outputs: Optional[int] = None) -> list[Property]:
    """The properties of VNNLIB ``text`` (see the module docstring). ``input_shape`` (one sample,
    no batch axis) reshapes the boxes and must hold as many values as there are ``X_i``;
    ``num_outputs`` must equal the number of ``Y_j``."""
    reader = _Reader(text, name)
    n_x, n_y, formulas = reader.read()
    if input_shape is not None and math.prod(int(s) for s in input_shape) != n_x:
        raise VNNLibError(f"{name}: declares {n_x} inputs X_i but the network takes {math.prod(input_shape)} values "
                          f"per sample (shape {tuple(input_shape)})")
    if num_outputs is not None and int(num_outputs) != n_y:
        raise VNNLibError(f"{name}: declares {n_y} outputs Y_j but the network has {num_outputs}")
    if not formulas:
        raise VNNLibError(f"{name}: no assert")
    common: list[_Constraint] = []
    branching: list[list[list[_Constraint]]] = []
    for f in formulas:
        d = reader.dnf(f)
        if len(d) == 1:
            common += d[0]  # a plain conjunction: shared by every disjunct (no product to build)
        else:
            branching.append(d)
    disjuncts: list[list[_Constraint]] = [[]]
    for d in branching:
        if len(disjuncts) * len(d) > _MAX_DISJUNCTS:
            raise VNNLibError(f"{name}: the assertions have more than {_MAX_DISJUNCTS} disjuncts in normal form")
        disjuncts = [a + b for a in disjuncts for b in d]
    boxes: dict[tuple, tuple[torch.Tensor, torch.Tensor, list]] = {}
    empty = 0
    shared = _Region([-math.inf] * n_x, [math.inf] * n_x, []).add(reader, common)
    for conj in disjuncts:
        region = shared.copy().add(reader, conj)
        lower = torch.tensor(region.lower, dtype=torch.float64)
        upper = torch.tensor(region.upper, dtype=torch.float64)
        c, dvec = region.outputs(n_y)
        unbounded = (~torch.isfinite(lower)) | (~torch.isfinite(upper))
        if bool(unbounded.any()):
            i = int(unbounded.nonzero()[0])
            side = "lower" if not math.isfinite(float(lower[i])) else "upper"
            raise VNNLibError(f"{name}: X_{i} has no {side} bound (the inputs must lie in a box)")
        if bool((lower > upper).any()):
            empty += 1  # an infeasible disjunct: no input reaches it
            continue
        key = (lower.numpy().tobytes(), upper.numpy().tobytes())
        boxes.setdefault(key, (lower, upper, []))[2].append((c, dvec))
    if not boxes:
        raise VNNLibError(f"{name}: every input box is empty ({empty} disjunct(s) with a lower bound above the upper)")
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else (n_x,)
    props = []
    for k, (lower, upper, groups) in enumerate(boxes.values()):
        label = _robust_label(groups, n_y)
        props.append(Property(lower.reshape(shape), upper.reshape(shape), tuple(groups), label,
                              name if len(boxes) == 1 else f"{name}#{k}"))
    return props


def read_vnnlib(path: Union[str, "os.PathLike[str]"], *, input_shape: Optional[Sequence[int]] = None,
                num_outputs: Optional[int] = None) -> list[Property]:
    """The properties of the VNNLIB file ``path`` (see :func:`parse_vnnlib`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no VNNLIB file at {p}")
    try:
        text = p.read_text()
    except UnicodeDecodeError as exc:
        raise VNNLibError(f"{p}: not a text file ({exc.reason})") from None
    return parse_vnnlib(text, p.name, input_shape=input_shape, num_outputs=num_outputs)
