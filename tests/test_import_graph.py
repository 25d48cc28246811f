"""Imports run one way: no import cycle among the modules of model_export/ and service/
(a cycle is what made ``export`` and ``step_graph`` unreadable apart), and the client
distribution (clients/python) shares no code with them. Every import
counts, those inside functions too, since deferring one only hides the cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model_export", "service")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Under ``if TYPE_CHECKING:``: never run, so no cycle at run time or in reading."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: ``from a.b import c`` is ``a.b.c`` where c is
    a module, else ``a.b``. A package's own __init__ is not counted as imported by its
    submodules (Python runs it first, but it is not a dependency the code states)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = known_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_graph_sees_the_imports_it_must() -> None:
    graph = import_graph()
    assert "model_export.export.keras_to_onnx" in graph["model_export.export.step_graph"]
    assert "model_export.frames.model" in graph["model_export.export.fast"]
    assert "service.registry" in graph["service.app"]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_a_cycle_is_found(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_model_export_stages_import_downwards() -> None:
    """The CLI calls the stages and export reads the models; frames/ and series/ never
    import the CLI, and frames/ never imports export/."""
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith(("model_export.frames", "model_export.series")):
            assert not {m for m in imported if m.startswith("model_export.cli")}, name
        if name.startswith("model_export.frames"):
            assert not {m for m in imported if m.startswith("model_export.export")}, name


def test_only_the_entry_point_imports_the_cli() -> None:
    """``model_export/cli/`` is the top: ``python -m model_export`` (its ``__main__``) calls
    it, and nothing else in model_export/ or service/ does."""
    graph = import_graph()
    assert "model_export.cli" in graph["model_export.__main__"]
    assert "model_export.cli.export" in graph["model_export.cli"]
    for name, imported in graph.items():
        if name == "model_export.__main__" or name.startswith("model_export.cli"):
            continue
        assert not {m for m in imported if m.startswith("model_export.cli")}, name


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every absolute import in ``path``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_the_client_and_the_server_share_no_code() -> None:
    """``clients/python`` is its own distribution: it imports none of the server's
    packages, and they import nothing of it (the fresh-venv test in tests/clients runs
    it without them)."""
    server_side = {"service", "model_export", "convlstm_card", "bench", "gpu", "docs_build"}
    client_files = sorted((REPO / "clients" / "python" / "convlstm_client").rglob("*.py"))
    assert client_files
    for path in client_files:
        assert not top_level_imports(path) & server_side, path
    for path in known_modules().values():
        assert "convlstm_client" not in top_level_imports(path), path
