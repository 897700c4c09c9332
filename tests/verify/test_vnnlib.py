"""The VNNLIB reader: robustness and general linear properties, disjunctions, and strict errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from robustlab.verify.vnnlib import VNNLibError, parse_vnnlib, read_vnnlib


def _declare(n_x: int, n_y: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_x)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_y))


def _box(lower: list, upper: list) -> str:
    return "".join(f"(assert (<= X_{i} {u}))\n(assert (>= X_{i} {lo}))\n" for i, (lo, u) in enumerate(zip(lower, upper)))


def test_robustness_property_is_recognised(tmp_path) -> None:
    text = "; a robustness property\n" + _declare(4, 3) + _box([0, 0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.8]) + """
(assert (or
    (and (>= Y_0 Y_2))
    (and (<= Y_2 Y_1))
))"""
    path = tmp_path / "p.vnnlib"
    path.write_text(text)
    (prop,) = read_vnnlib(path, input_shape=(1, 2, 2), num_outputs=3)
    assert prop.label == 2 and prop.name == "p.vnnlib"
    assert prop.lower.shape == (1, 2, 2) and prop.lower.dtype == torch.float64
    assert prop.lower.flatten().tolist() == [0, 0.1, 0.2, 0.3] and prop.upper.flatten().tolist() == [0.5, 0.6, 0.7, 0.8]
    rows = sorted(c[0].tolist() for c, _ in prop.groups)
    assert rows == [[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]] and all(float(d[0]) == 0 for _, d in prop.groups)
    # y_2 the largest: safe; y_0 above y_2: unsafe
    assert prop.unsafe(torch.tensor([[0.0, 1.0, 2.0], [3.0, 1.0, 2.0]])).tolist() == [False, True]


def test_general_linear_property_matches_its_formula() -> None:
    """(Y_0 - 2 Y_1 <= 0.5 and Y_2 >= 1) or (Y_1 + Y_2 >= -Y_0) or (-1.5 * Y_2 = 3): evaluated directly
    and through the property on a grid of outputs."""
    text = _declare(2, 3) + _box([0, 0], [1, 1]) + """
(assert (or (and (<= (- Y_0 (* 2 Y_1)) 0.5) (>= Y_2 1))
            (>= (+ Y_1 Y_2) (- Y_0))
            (= (* -1.5 Y_2) 3.0)))"""
    (prop,) = parse_vnnlib(text)
    assert prop.label is None and len(prop.groups) == 3
    grid = torch.tensor(list(itertools.product([-3.0, -2.0, -0.5, 0.0, 1.0, 2.5], repeat=3)))

    def formula(y: torch.Tensor) -> bool:
        y0, y1, y2 = y.tolist()
        return (y0 - 2 * y1 <= 0.5 and y2 >= 1) or (y1 + y2 >= -y0) or (-1.5 * y2 == 3.0)

    assert prop.unsafe(grid).tolist() == [formula(y) for y in grid]


def test_disjunction_of_input_boxes_gives_one_property_per_box() -> None:
    text = _declare(1, 2) + """
(assert (or (and (>= X_0 0) (<= X_0 0.5) (>= Y_0 Y_1))
            (and (>= X_0 0.5) (<= X_0 1) (>= Y_1 3))
            (and (>= X_0 0) (<= X_0 0.5) (<= Y_0 -1))))"""
    props = parse_vnnlib(text, "two.vnnlib")
    assert [p.name for p in props] == ["two.vnnlib#0", "two.vnnlib#1"]
    assert props[0].upper.tolist() == [0.5] and len(props[0].groups) == 2  # same box: its groups merged
    assert props[1].lower.tolist() == [0.5] and len(props[1].groups) == 1
    # a shared box assertion and an input-only disjunct: every output of that box is unsafe
    text = _declare(1, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 -1))\n(assert (or (<= X_0 0) (>= Y_0 2)))"
    props = parse_vnnlib(text)
    assert len(props) == 2 and props[0].upper.tolist() == [0.0]
    assert props[0].unsafe(torch.tensor([[-5.0]])).tolist() == [True]


@pytest.mark.parametrize(("text", "match"), [
    (_declare(1, 1) + "(assert (<= X_0 1)\n(assert (>= X_0 0))", r":3: '\(' is never closed"),
    (_declare(1, 1) + "(assert (<= X_0 1)))", r":3: '\)' without"),
    (_declare(1, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (>= Y_3 0))", r":5: Y_3 is used but not declared"),
    (_declare(1, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 Y_0))", r":4: .*relating inputs and outputs"),
    (_declare(2, 1) + "(assert (<= (+ X_0 X_1) 1))", r":4: .*one variable each"),
    (_declare(1, 1) + "(assert (<= X_0 1))\n(assert (>= Y_0 0))", r"X_0 has no lower bound"),
    ("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)", r"X_1 is not declared"),
    ("(declare-const X_0 Int)", r":1: X_0 is declared Int"),
    ("(declare-const Z Real)", r":1: variable 'Z'"),
    (_declare(1, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (=> (>= Y_0 0) (<= Y_0 1)))",
     r":5: unsupported operator '=>'"),
    (_declare(1, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (>= (* Y_0 Y_0) 0))", r":5: .*not linear"),
    (_declare(1, 1) + "(assert (<= X_0 0))\n(assert (>= X_0 1))\n(assert (>= Y_0 0))", r"every input box is empty"),
    (_declare(1, 1) + "(push 1)", r":3: unsupported command 'push'"),
    (_declare(1, 1) + "(assert (<= X_0 1.2.3))", r":3: '1.2.3' is neither a number"),
], ids=["unclosed", "extra-paren", "undeclared", "mixed", "linear-input", "unbounded", "gap", "int", "name",
        "implies", "product", "empty-box", "command", "number"])
def test_malformed_files_are_one_clear_error_with_the_line(text: str, match: str) -> None:
    with pytest.raises(VNNLibError, match=match):
        parse_vnnlib(text, "bad.vnnlib")


def test_counts_must_match_the_network(tmp_path) -> None:
    text = _declare(4, 3) + _box([0] * 4, [1] * 4) + "(assert (>= Y_0 Y_1))"
    with pytest.raises(VNNLibError, match="4 inputs X_i but the network takes 6 values"):
        parse_vnnlib(text, input_shape=(2, 3))
    with pytest.raises(VNNLibError, match="3 outputs Y_j but the network has 10"):
        parse_vnnlib(text, num_outputs=10)
    with pytest.raises(FileNotFoundError):
        read_vnnlib(tmp_path / "missing.vnnlib")
    (prop,) = parse_vnnlib(text.replace("(assert (>= Y_0 Y_1))", "(assert (>= Y_0 Y_1))\n(check-sat)\n(get-model)"))
    assert prop.label is None  # one comparison of two classes is not a robustness property of 3 classes
