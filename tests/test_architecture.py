"""The layering of docs/architecture.md, read from the source: every import of a facerecon module
(at the top of a file or inside a function) goes to the same layer or a lower one, and the
imports form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import facerecon

PACKAGE = Path(facerecon.__file__).parent

#: docs/architecture.md, top to bottom; a module's layer is that of its longest listed prefix.
LAYERS: dict[str, int] = {
    "facerecon.cli": 4,
    "facerecon.api": 4,
    "facerecon.__main__": 4,
    "facerecon.engine": 3,
    "facerecon.runtime": 3,
    "facerecon.model": 2,
    "facerecon.data": 2,
    "facerecon.mesh": 2,
    "facerecon.mesh_formats": 2,
    "facerecon.losses": 2,
    "facerecon.metrics": 2,
    "facerecon.detect": 2,
    "facerecon.mtcnn": 2,
    "facerecon.mtcnn_cascade": 2,
    "facerecon.viewer": 2,
    "facerecon.overlay": 2,
    "facerecon.plots": 2,
    "facerecon.render": 2,
    "facerecon.ops": 1,
    "facerecon.frames": 1,
    "facerecon.crop": 1,
    "facerecon.crop_records": 1,
    "facerecon.errors": 0,
    "facerecon.io_utils": 0,
    "facerecon.machine": 0,
    "facerecon.allocator": 0,
    "facerecon.imageio": 0,
    "facerecon.opengl": 0,
    "facerecon.progress": 0,
    "facerecon.signals": 0,
    "facerecon.config": 0,
    "facerecon": 0,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _lazy_export_nodes(tree: ast.Module) -> set[int]:
    """The nodes inside a module-level ``__getattr__`` (PEP 562): the package's lazy exports
    (``from facerecon import Reconstructor`` loads :mod:`facerecon.api` on first use), which
    are not a dependency of the module itself."""
    return {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        for inner in ast.walk(node)
    }


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The facerecon modules ``module`` imports anywhere in its file (lazy exports aside)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    lazy = _lazy_export_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != module}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def test_the_layer_table_covers_every_module() -> None:
    for module in _modules():
        assert any(module == p or module.startswith(p + ".") for p in LAYERS), module


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in sorted(_graph().items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The two checks above on a made-up package: they must be able to fail."""
    pkg = tmp_path / "facerecon"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "frames.py").write_text("def f():\n    from facerecon.engine import run\n")
    (pkg / "engine" / "run.py").write_text("from facerecon import frames\n")
    known = {}
    for path in pkg.rglob("*.py"):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        known[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    assert graph["facerecon.frames"] == {"facerecon.engine", "facerecon.engine.run"}
    assert "facerecon.frames" in graph["facerecon.engine.run"]
    assert _layer("facerecon.engine.run") > _layer("facerecon.frames")


@pytest.mark.parametrize("command", ["predict", "detect_crop"])
def test_the_photo_commands_have_no_loop_over_photos_or_frames(command: str) -> None:
    """``facerecon predict`` and ``detect-crop`` parse and print; the loops over photos and frames
    are the library's (facerecon.engine.photos, .video, .crops), usable from Python. Their only
    loops print the lines of a summary."""
    printing = {"print", "display_path", "escape", "join", "split"}
    tree = ast.parse((PACKAGE / "cli" / f"{command}.py").read_text())
    called = set()
    for loop in (node for node in ast.walk(tree) if isinstance(node, (ast.For, ast.While, ast.AsyncFor))):
        for call in (n for stmt in loop.body for n in ast.walk(stmt) if isinstance(n, ast.Call)):
            called.add(call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "?"))
    assert called <= printing, called - printing
