"""The modules of ``rl`` and ``precision_kernels`` import each other without a circle.

Every import statement counts, at module level or inside a function or an ``if`` block, read
from the source with ``ast`` (nothing is imported). An import of a package that contains the
importing module (its own ``__init__``, or an ancestor's) does not count: Python has already
started that package before the submodule runs.

An import the statements do not show (``importlib.import_module``, ``__import__``) would hide an
edge from this check, so no module of these packages imports one of their own modules that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under ``root / package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _imported(node: ast.AST, importer: str, modules: dict[str, Path]) -> list[str]:
    """The modules of ``modules`` that one import statement in ``importer`` names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = importer.split(".")
        if not _is_package(importer, modules):
            base = base[:-1]  # a plain module's relative imports start from its package
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    # ``from pkg import name``: a submodule when pkg.name is one, else an attribute of pkg itself
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]


def _is_dynamic_import(node: ast.AST) -> bool:
    """``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute):
        return f.attr == "import_module" and isinstance(f.value, ast.Name) and f.value.id == "importlib"
    return isinstance(f, ast.Name) and f.id in ("import_module", "__import__")


def dynamic_imports(root: Path, packages: tuple[str, ...]) -> list[str]:
    """``module:line target`` for every dynamic import in ``packages`` of one of their modules, or of a name
    the source does not spell out (not a string literal: it could be one of them)."""
    found = []
    for name, path in sorted(kv for package in packages for kv in module_names(root, package).items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not _is_dynamic_import(node) or not node.args:
                continue
            arg = node.args[0]
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                found.append(f"{name}:{node.lineno} {ast.unparse(arg)}")
            elif arg.value.startswith(".") or arg.value.split(".")[0] in packages:
                found.append(f"{name}:{node.lineno} {arg.value}")
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """importer -> imported, over the modules of ``packages`` (imports of the importer's own packages left out)."""
    modules: dict[str, Path] = {}
    for package in packages:
        modules.update(module_names(root, package))
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, name, modules):
                while target and target not in modules:  # ``import a.b.c`` of a non-module: its package
                    target = target.rpartition(".")[0]
                if not target or target == name or name.startswith(target + "."):
                    continue
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("package", ["rl", "precision_kernels"])
def test_no_import_circle(package):
    graph = import_graph(ROOT, ("rl", "precision_kernels"))
    inside = [c for c in cycles(graph) if any(m == package or m.startswith(package + ".") for m in c)]
    assert not inside, "import circles: " + "; ".join(" <-> ".join(c) for c in inside)


def test_the_check_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "b.py").write_text("import pkg\n\ndef g():\n    from ..a import f\n    return f\n")
    (pkg / "c.py").write_text("from pkg.sub.b import g\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub.b"] == {"pkg.a"}  # ``import pkg`` is its own package's __init__: left out
    assert graph["pkg.c"] == {"pkg.sub.b"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_no_dynamic_import_of_own_modules():
    found = dynamic_imports(ROOT, ("rl", "precision_kernels"))
    assert not found, "imports the import graph cannot see (write an import statement): " + "; ".join(found)


def test_the_check_finds_dynamic_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import importlib\nB = importlib.import_module('.b', __package__)\n")
    (pkg / "b.py").write_text("from importlib import import_module\n\n\ndef f(m):\n"
                              "    return import_module(f'pkg.{m}')\n")
    (pkg / "c.py").write_text("import importlib\nnp = importlib.import_module('numpy')\nd = __import__('pkg.b')\n")
    assert dynamic_imports(tmp_path, ("pkg",)) == ["pkg.a:2 .b", "pkg.b:5 f'pkg.{m}'", "pkg.c:3 pkg.b"]
