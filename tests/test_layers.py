"""The package's layers, as the tree shows them: imports go one way only.

``vsphere`` (the only code that touches pyVmomi) <- ``workflows`` and the
strategies <- ``driver`` <- ``cli``. Every import counts, also one inside a
function: a loop hidden in a function is still a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vmdk_snap"

# Which top-level parts of the package each part may import.
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "errors": {"types"},
    "testing": set(),
    "vsphere": {"types", "errors", "vsphere"},
    "workflows": {"types", "errors", "vsphere", "workflows"},
    "strategies": {"types", "errors", "vsphere", "workflows"},
    "volume_state": {"types", "errors", "vsphere", "workflows", "strategies"},
    "group_snapshots": {"types", "errors", "vsphere", "workflows", "strategies", "volume_state"},
    "driver": {
        "types",
        "errors",
        "vsphere",
        "workflows",
        "strategies",
        "volume_state",
        "group_snapshots",
    },
    "cli": {
        "types",
        "errors",
        "vsphere",
        "workflows",
        "strategies",
        "volume_state",
        "group_snapshots",
        "driver",
        "cli",
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``vmdk_snap`` module ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vmdk_snap"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vmdk_snap"):
            base = str(node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                as_path = PACKAGE.parent / sub.replace(".", "/")
                is_module = as_path.is_dir() or as_path.with_suffix(".py").exists()
                found.add(sub if is_module else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_import_graph_has_no_loop() -> None:
    graph = _graph()
    assert "vmdk_snap.vsphere.session" in graph  # the walk found the package
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if dep == node or dep.startswith(node + "."):
                continue  # a package importing its own submodules
            if state.get(dep) == 1:
                loop = [*path[path.index(dep) :], dep]
                pytest.fail("import loop: " + " -> ".join(loop))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_go_from_the_upper_layers_to_the_lower_ones_only() -> None:
    wrong = [
        f"{module} imports {dep}"
        for module, deps in sorted(_graph().items())
        for dep in sorted(deps)
        if _part(module) in ALLOWED and _part(dep) not in ALLOWED[_part(module)] | {"__init__"}
    ]
    assert wrong == []


def test_only_the_vsphere_layer_touches_pyvmomi() -> None:
    touching = sorted(
        _module_name(path)
        for path in PACKAGE.rglob("*.py")
        if any(
            (isinstance(n, ast.ImportFrom) and (n.module or "").startswith(("pyVmomi", "pyVim")))
            or (
                isinstance(n, ast.Import)
                and any(a.name.startswith(("pyVmomi", "pyVim")) for a in n.names)
            )
            for n in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert touching
    assert [m for m in touching if not m.startswith("vmdk_snap.vsphere")] == []
