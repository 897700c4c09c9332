"""The import graph follows the layers and has no loop inside a package.

Layers (DESIGN.md): data -> models -> attacks / verify -> training / defenses -> evaluate -> report -> cli; a
package may import its own layer's siblings (acyclically: tests/test_import_cycles.py) and the
layers below it, never one above. Top-level modules (``robustlab.threat``, ``robustlab.losses``,
``robustlab.model_ops``, ...) are the foundation every layer may use. ``report/`` holds the
Report's types and rendering and is imported by ``evaluate/`` (which builds Reports), never the
other way. Inside a package, modules import each other without a loop (every import counts, also
one inside a function).
"""

from __future__ import annotations

import ast

from test_import_cycles import SRC, _Imports, _module_name, _package, cycles

#: What each package must never import (the layers above it).
FORBIDDEN = {
    "robustlab.data": {"robustlab.models", "robustlab.attacks", "robustlab.defenses", "robustlab.verify",
                       "robustlab.evaluate", "robustlab.report", "robustlab.cli"},
    "robustlab.models": {"robustlab.attacks", "robustlab.defenses", "robustlab.verify", "robustlab.evaluate",
                         "robustlab.report", "robustlab.cli"},
    "robustlab.attacks": {"robustlab.defenses", "robustlab.training", "robustlab.verify", "robustlab.evaluate",
                          "robustlab.report", "robustlab.cli"},
    "robustlab.verify": {"robustlab.training", "robustlab.defenses", "robustlab.evaluate", "robustlab.report",
                         "robustlab.cli"},
    "robustlab.defenses": {"robustlab.evaluate", "robustlab.report", "robustlab.cli"},
    # the training family never needs a defended model (PixelDP registers its adversary from defenses/)
    "robustlab.training": {"robustlab.defenses", "robustlab.evaluate", "robustlab.report", "robustlab.cli"},
    "robustlab.report": {"robustlab.evaluate", "robustlab.cli", "robustlab.attacks", "robustlab.defenses",
                         "robustlab.verify", "robustlab.models"},
    "robustlab.evaluate": {"robustlab.cli"},
}


def _module_edges() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> modules of the same package it imports, package -> packages it imports)."""
    modules = {_module_name(p): p for p in (SRC / "robustlab").rglob("*.py")}
    inside: dict[str, set[str]] = {}
    across: dict[str, set[str]] = {}
    for module, path in modules.items():
        if module == "robustlab":
            continue
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text()))
        pkg = _package(module)
        for target in visitor.found:
            if target not in modules or target == module:
                continue
            if _package(target) == pkg and target != pkg and module != pkg:
                inside.setdefault(module, set()).add(target)
            elif _package(target) != pkg:
                across.setdefault(pkg, set()).add(_package(target))
    return inside, across


def test_packages_import_only_their_layer_and_below():
    _, across = _module_edges()
    wrong = {pkg: sorted(across.get(pkg, set()) & banned) for pkg, banned in FORBIDDEN.items()}
    assert not any(wrong.values()), f"imports against the layers: { {k: v for k, v in wrong.items() if v} }"


def test_no_import_loop_between_the_modules_of_a_package():
    inside, _ = _module_edges()
    found = cycles(inside)
    assert not found, "module import loops inside a package: " + "; ".join(" <-> ".join(c) for c in found)
