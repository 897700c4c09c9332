"""No import cycle between robustlab's packages.

Packages are ``robustlab.<name>`` (a sub-package such as ``robustlab.evaluate``, or a top-level
module such as ``robustlab.threat``, which counts as its own package). Every import counts, also one
inside a function (a lazy import is still a dependency) and ``importlib.import_module("...")`` with
a literal name; imports under ``if TYPE_CHECKING:`` do not (they never run). The root
``robustlab/__init__.py`` is a lazy loader over every package and is left out. Cycles inside one
package (module A <-> module B of ``robustlab.attacks``) are not this test's business.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])  # robustlab.evaluate.run -> robustlab.evaluate


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.here = module if is_package else module.rpartition(".")[0]
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # the else branch runs
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.here.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        self.found.add(target)
        for alias in node.names:  # `from robustlab import evaluate` imports the package robustlab.evaluate
            self.found.add(f"{target}.{alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self.found.add(node.args[0].value)
        self.generic_visit(node)


def package_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """Edges package -> packages it imports, and the files behind each edge."""
    modules = {_module_name(p): p for p in (SRC / "robustlab").rglob("*.py")}
    packages = {_package(m) for m in modules if m != "robustlab"}
    edges: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], set[str]] = defaultdict(set)
    for module, path in modules.items():
        if module == "robustlab":
            continue
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        a = _package(module)
        for target in visitor.found:
            if not target.startswith("robustlab."):
                continue
            b = _package(target)
            if b != a and b in packages:
                edges[a].add(b)
                why[(a, b)].add(str(path.relative_to(SRC)))
    return edges, why


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walker_counts_lazy_imports_and_skips_type_checking():
    code = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from robustlab.report import schema\n"
            "def f():\n    from robustlab.evaluate import checks\n    import importlib\n"
            "    importlib.import_module('robustlab.verify')\nfrom . import sibling\n")
    v = _Imports("robustlab.attacks.pgd", False)
    v.visit(ast.parse(code))
    assert "robustlab.evaluate" in v.found and "robustlab.verify" in v.found and "robustlab.attacks.sibling" in v.found
    assert not any(t.startswith("robustlab.report") for t in v.found)


def test_no_import_cycle_between_packages():
    edges, why = package_graph()
    assert "robustlab.evaluate" in edges and "robustlab.report" in edges["robustlab.evaluate"]
    assert "robustlab.evaluate" not in edges.get("robustlab.report", set()), "report/ must never import evaluate/"
    found = cycles(edges)
    described = ["; ".join(f"{a} -> {b} ({', '.join(sorted(why[(a, b)]))})" for a in c for b in c if b in edges[a])
                 for c in found]
    assert not found, "import cycles between robustlab's packages:\n" + "\n".join(described)
