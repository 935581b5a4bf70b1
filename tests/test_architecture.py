"""The house rules of DESIGN.md section 2, read from the code's own imports (AST), so they stay true:
flows -> serving -> tasks, the foundations (config, contracts) import nothing of the project, no import
circle (an import inside a function counts too), and modules small enough to have one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT

LAYERS = {"flows": 3, "serving": 2, "tasks": 1}
FOUNDATIONS = ("tasks.config", "tasks.contracts")  # every stage may use these; they use nothing else
MAX_LINES = 850
LONGER_ALLOWED = {"flows.cli"}  # the console script: one thin command per function, many commands


def _modules() -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        for path in sorted((REPO_ROOT / top).rglob("*.py")) if (REPO_ROOT / top).is_dir() else ():
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules `name` imports anywhere in its body, resolved to the modules that exist."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            # A package's own submodules are its parts, not a dependency of it (nor it of them).
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_the_import_graph_was_read() -> None:
    assert "tasks.config" in MODULES and "flows.retraining" in MODULES
    assert "tasks.config" in GRAPH["flows.retraining"], "the walker must see the flow's imports"


def test_imports_only_point_down_the_layers() -> None:
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m))
    assert upward == [], "a lower layer imports a higher one (flows -> serving -> tasks only)"


def test_the_foundations_import_nothing_of_the_project() -> None:
    leaks = sorted(f"{m} -> {t}" for m in FOUNDATIONS for t in GRAPH[m] if t not in FOUNDATIONS)
    assert leaks == []


def test_there_is_no_import_circle() -> None:
    """Tarjan's strongly connected components: any component of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(GRAPH[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_is_small_and_says_its_job(module: str) -> None:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if path.name == "__init__.py" and not tree.body:
        return  # an empty package marker
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.split()) >= 4, f"{path.relative_to(REPO_ROOT)} opens without a docstring naming its job"
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if module not in LONGER_ALLOWED:
        assert lines <= MAX_LINES, f"{path.relative_to(REPO_ROOT)} has {lines} lines: one job per module?"
