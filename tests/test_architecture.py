"""The layering docs/architecture.md states, read from the source: who imports whom, and who prints."""

import ast
from pathlib import Path

import vidbooth

PACKAGE = Path(vidbooth.__file__).parent
LEAVES = ("adapters", "attention", "data")
LEAF_MAY_USE = {"errors", "fileio", "reporting", "__version__"}
"""All that the leaf layers use of vidbooth: errors, atomic writes, the reporting layer and the version."""


def _modules() -> dict[str, ast.Module]:
    return {str(path.relative_to(PACKAGE.parent)): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def _layer(path: str) -> str:
    """'vidbooth/engine/generate.py' -> 'engine'; 'vidbooth/library.py' -> 'library'."""
    return Path(path).parts[1].removesuffix(".py")


def _imported_layers(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "vidbooth" and node.level == 0:
            names.update(f"vidbooth.{alias.name}" for alias in node.names)  # from vidbooth import reporting
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[1] for name in names if name.startswith("vidbooth.")}


MODULES = _modules()


def test_the_walk_finds_the_package():
    layers = {_layer(path) for path in MODULES}
    assert {"cli", "config", "engine", "adapters", "attention", "data", "eval", "nano", "reporting"} <= layers
    assert "engine" in _imported_layers(MODULES["vidbooth/cli/generate.py"])  # the reader sees lazy imports too
    assert "reporting" in _imported_layers(MODULES["vidbooth/data/images.py"])  # and `from vidbooth import x`


def _import_breaches(path: str) -> list[str]:
    layer, imported = _layer(path), _imported_layers(MODULES[path]) - {_layer(path)}
    breaches = []
    if layer not in ("cli", "__main__") and "cli" in imported:
        breaches.append("imports cli")
    if layer in (*LEAVES, "eval") and "engine" in imported:
        breaches.append("imports engine")
    if layer in LEAVES and not imported <= LEAF_MAY_USE:
        breaches.append(f"imports {sorted(imported - LEAF_MAY_USE)}")
    return [f"{path} {breach}" for breach in breaches]


def test_imports_flow_one_way():
    assert [breach for path in sorted(MODULES) for breach in _import_breaches(path)] == []


def test_only_reporting_prints():
    printing = []
    for path, tree in sorted(MODULES.items()):
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        lines = [call.lineno for call in calls if isinstance(call.func, ast.Name) and call.func.id == "print"]
        if lines and path != "vidbooth/reporting.py":
            printing.append(f"{path}:{lines}")
    assert printing == [], "print() outside vidbooth/reporting.py"
