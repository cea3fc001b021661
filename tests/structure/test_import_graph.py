"""The package's import graph has no cycle, and no module imports from a layer above its own.

Why: an import circle (architectures -> training -> architectures) made the registry import the trainer
lazily; a declared order tells a contributor where new code goes. Built from the source with ``ast``,
so no module is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hybrid_sae_ext"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("io", "folders", "measure", "progress", "kernels"),
    ("architectures", "models", "pretrained"),
    ("activations", "evals", "distributed", "embedded"),
    ("training",),
    ("experiments", "dashboards"),
    ("cli_errors", "activations.cli", "training.cli", "evals.cli", "experiments.cli", "dashboards.cli",
     "dashboards.serve"),
    ("cli", "__main__"),
)
"""Bottom to top; a module may import only from its own layer or below. Each command line sits near the top,
the ``hybrid-sae`` dispatcher above them, the package's ``__init__`` (which re-exports the public API) above
all. A dotted name overrides its parent's layer."""


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The layer of a module (relative to the package); the package itself is above every layer."""
    best, best_length = len(LAYERS), -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_length:
                best, best_length = index, len(name)
    return best


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its source, lazy imports included)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] if package else [])
                    base = f"{root.name}.{base}" if base else root.name
                    found = [f"{base}.{node.module}" if node.module else base]
                else:
                    found = [node.module or ""]
                submodules = [f"{found[0]}.{alias.name}" for alias in node.names]
                # ``from package import submodule`` imports the submodule, not the package's own names
                names_of_package = any(sub[len(root.name) + 1 :] not in modules for sub in submodules)
                found = (found if names_of_package else []) + submodules
            else:
                continue
            for target in found:
                if target.startswith(root.name + "."):
                    relative = target[len(root.name) + 1 :]
                    if relative in modules and relative != name:
                        targets.add(relative)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a list of names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in graph.items() if source
        for target in targets if layer_of(target) > layer_of(source)
    )


def test_the_package_has_no_import_cycle_and_no_upward_import() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "architectures.registry" in graph
    assert cycles(graph) == []
    assert upward_imports(graph) == []


def test_the_check_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """A copy with an added circle and an added upward arrow fails both checks, naming the modules."""
    root = tmp_path / "hybrid_sae_ext"
    for path in PACKAGE.rglob("*.py"):
        target = root / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    registry = root / "architectures" / "registry.py"
    registry.write_text(registry.read_text() + "\nfrom hybrid_sae_ext.training.trainer import Trainer\n")
    graph = import_graph(root)
    assert any("architectures.registry" in group and "training.trainer" in group for group in cycles(graph))
    assert "architectures.registry (layer 1) imports training.trainer (layer 3)" in upward_imports(graph)


@pytest.mark.parametrize("module, layer", [("io", 0), ("kernels.topk", 0), ("training.trainer", 3),
                                           ("training.cli", 5), ("", len(LAYERS))])
def test_layers_resolve_by_the_longest_declared_name(module: str, layer: int) -> None:
    assert layer_of(module) == layer
