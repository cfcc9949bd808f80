"""The layout's rules, checked on the source (every import statement, including those inside
functions and under TYPE_CHECKING): no import circle anywhere in the packages, the method apart
from the model side, one-way arrows between the packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compression", "storage", "jobs", "serving", "tokenreel")
# What the method (compression, outside compression.models) may import beside itself.
METHOD_MAY_IMPORT = {"torch", "numpy"}


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement of the file names (relative ones resolved)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name resolves to its longest module prefix)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def is_method(module: str) -> bool:
    return module.startswith("compression") and not module.startswith("compression.models")


def test_the_rules_see_every_package() -> None:
    graph = project_graph()
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert "compression.models.registry" in graph and "compression.text_merge" in graph


def test_no_import_circle() -> None:
    assert cycles(project_graph()) == []


def test_cycle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_method_imports_only_itself_torch_and_numpy() -> None:
    modules = module_files()
    problems = []
    for module, path in modules.items():
        if not is_method(module):
            continue
        for name in imported_names(path, module):
            top = name.split(".")[0]
            allowed = top in METHOD_MAY_IMPORT | {"compression"} | sys.stdlib_module_names
            if name.startswith("compression.models") or not allowed:
                problems.append(f"{module} imports {name}")
    assert problems == []


def test_jobs_and_serving_use_the_model_side_through_its_package_only() -> None:
    """jobs/, serving/ and tokenreel/ import `compression.models` (its interface and registry),
    never the modules behind it; jobs and serving never import each other."""
    modules = module_files()
    behind = [m for m in modules if m.startswith("compression.models.")]
    problems = []
    for module, path in modules.items():
        top = module.split(".")[0]
        if top not in ("jobs", "serving", "tokenreel"):
            continue
        for name in imported_names(path, module):
            if any(name == m or name.startswith(m + ".") for m in behind):
                problems.append(f"{module} imports {name}")
            other = {"jobs": "serving", "serving": "jobs"}.get(top)
            if other and name.split(".")[0] == other:
                problems.append(f"{module} imports {name}")
    assert problems == []


def test_storage_imports_neither_jobs_nor_serving_nor_ray() -> None:
    modules = module_files()
    problems = [
        f"{module} imports {name}"
        for module, path in modules.items()
        if module.startswith("storage")
        for name in imported_names(path, module)
        if name.split(".")[0] in ("jobs", "serving", "tokenreel", "ray")
        or name.startswith("compression.models")
    ]
    assert problems == []


@pytest.mark.parametrize("package", ["compression", "storage", "jobs.index"])
def test_importing_a_package_loads_no_more_than_it_needs(package: str) -> None:
    """`import compression` loads no model-side module and not transformers; the store's and
    the indexing job's packages load their heavy modules only when a name is used (a decode
    worker imports `storage.ids` and `jobs.index.decode` without torch or SQLAlchemy)."""
    code = (
        f"import sys, {package}\n"
        "print(sorted(m for m in sys.modules if m.startswith(('compression.models', "
        "'transformers', 'sqlalchemy', 'ray'))))\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded, torch_loaded = result.stdout.splitlines()
    assert loaded == "[]"
    if package != "compression":
        assert torch_loaded == "False"
