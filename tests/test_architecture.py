"""The shape of the house (ARCHITECTURE.md): no import circle between edgekit modules, every
module importable in dependency order, the light entry points free of heavy SDKs, and no table
of backend names outside ``edgekit/backends``.

Module-level imports only: ``if TYPE_CHECKING:`` blocks and function bodies (where the heavy
optional SDKs are imported, see ruff's PLC0415/TID253 settings in pyproject.toml) are not edges.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.backends import backend_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgekit"
HEAVY = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "openvino", "nncf",
         "matplotlib", "scipy", "pydicom", "ai_edge_litert", "litert_torch", "torch_pruning")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The most specific edgekit module ``name`` refers to (``edgekit.a.b.func`` -> ``edgekit.a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _top_level_imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # annotations only
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                names = [f"{base}.{a.name}" for a in node.names]
            else:  # if/try/with blocks at module level run at import time too
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)]
                          + [s for h in getattr(node, "handlers", []) for s in h.body])
                continue
            for name in names:
                target = _resolve(name) if name.startswith("edgekit") else None
                if target and target != module:
                    found.add(target)

    visit(ast.parse(path.read_text()).body)
    return found


GRAPH = {m: _top_level_imports(m) for m in MODULES}


def _topological_order() -> list[str]:
    """Dependencies first; raises AssertionError naming a circle when there is one."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(m: str, stack: list[str]) -> None:
        if state.get(m) == "done":
            return
        if state.get(m) == "open":
            circle = stack[stack.index(m):] + [m]
            raise AssertionError("import circle: " + " -> ".join(circle))
        state[m] = "open"
        for dep in sorted(GRAPH[m]):
            visit(dep, [*stack, m])
        state[m] = "done"
        order.append(m)

    for m in sorted(GRAPH):
        visit(m, [])
    return order


def test_no_import_circle_between_edgekit_modules() -> None:
    order = _topological_order()
    assert set(order) == set(MODULES)


def test_the_circle_check_can_fail() -> None:
    GRAPH["edgekit.errors"].add("edgekit.sources")  # errors -> sources -> ... -> errors
    try:
        with pytest.raises(AssertionError, match="import circle: .*edgekit.errors"):
            _topological_order()
    finally:
        GRAPH["edgekit.errors"].discard("edgekit.sources")


def test_every_module_imports_in_dependency_order() -> None:
    """A fresh interpreter imports every module, dependencies first; each must load."""
    order = [m for m in _topological_order() if not m.endswith("__main__")]  # runs the CLI
    code = ("import importlib, json, sys\n"
            "failed = {}\n"
            f"for m in {order!r}:\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except Exception as exc:\n"
            "        failed[m] = f'{type(exc).__name__}: {exc}'\n"
            "print(json.dumps(failed))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("entry", ["edgekit", "edgekit.cli", "edgekit.runner", "edgekit.report",
                                   "edgekit.sources", "edgekit.compress", "edgekit.bench.run"])
def test_entry_points_do_not_import_heavy_sdks(entry: str) -> None:
    """Heavy SDKs are imported inside the functions that use them: the CLI starts, and the
    device runner runs, without torch, TensorFlow, the runtimes or matplotlib."""
    code = (f"import sys, json, {entry}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_no_backend_name_table_outside_the_backends() -> None:
    """A backend's name in a table (dict key, tuple/list/set element) or a comparison is backend
    knowledge: it lives on the plugin (``edgekit/backends``); everything else asks the
    registry."""
    names = set(backend_names())
    found = []
    for module, path in MODULES.items():
        if module.startswith("edgekit.backends"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                items = node.keys
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = node.elts
            elif isinstance(node, ast.Compare):
                items = [node.left, *node.comparators]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{c.lineno} {c.value!r}" for c in items
                      if isinstance(c, ast.Constant) and c.value in names]
    assert not found, "backend names outside edgekit/backends:\n" + "\n".join(found)
