"""The house rules a reader relies on, checked on the source: only ``prtk.export.artifact`` reads an artifact's
description (nobody else indexes it by key), no two modules import each other (even inside functions), modules
stay small, and CLI commands stay thin."""

from __future__ import annotations

import ast
from pathlib import Path

from test_layering import imported_modules, modules

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = [ROOT / "toolkit", ROOT / "export", ROOT / "engines"]
ARTIFACT_PACKAGE = ROOT / "export" / "artifact"
MAX_MODULE_LINES = 350
MAX_COMMAND_LINES = 40
RAW_ATTRIBUTES = {"sidecar", "_description"}  # an artifact's raw description, by whatever name
DESCRIPTION_CALLS = {"description", "pruning_json", "engine_description"}  # Artifact methods returning its JSON


def description_reads(source: str) -> list[int]:
    """Lines of ``source`` that read an artifact description by key: a raw description attribute, or a subscript or
    ``.get`` of what an ``Artifact`` method returns as JSON (directly, or through a name bound to it)."""
    tree = ast.parse(source)
    bound = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _is_description(node.value)
             for target in node.targets if isinstance(target, ast.Name)}

    def raw(node: ast.AST) -> bool:
        return _is_description(node) or isinstance(node, ast.Name) and node.id in bound

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in RAW_ATTRIBUTES:
            found.append(node.lineno)
        elif isinstance(node, ast.Subscript) and raw(node.value):
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and raw(node.func.value):
            found.append(node.lineno)
    return found


def _is_description(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DESCRIPTION_CALLS


def product_modules(with_bench: bool = False) -> list[Path]:
    folders = SOURCE_FOLDERS + ([ROOT / "bench"] if with_bench else [])
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


def test_the_checker_finds_a_description_read_by_key():
    assert description_reads("model = artifact.description()['model']\n") == [1]
    assert description_reads("d = a.description()\nx = d.get('pruning')\n") == [2]
    assert description_reads("x = artifact.sidecar\n") == [1]
    assert description_reads("x = artifact.model\ny = record.as_dict()\n") == []


def test_only_the_artifact_package_reads_a_description_by_key():
    readers = {str(path.relative_to(ROOT)): lines for path in product_modules(with_bench=True)
               if not path.is_relative_to(ARTIFACT_PACKAGE) and (lines := description_reads(path.read_text()))}
    assert readers == {}


def test_no_module_is_over_the_line_limit():
    long = {str(path.relative_to(ROOT)): count for path in product_modules()
            if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_cli_command_function_is_over_the_line_limit():
    long = {}
    for path in (ROOT / "toolkit" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_command") \
                    and node.end_lineno - node.lineno + 1 > MAX_COMMAND_LINES:
                long[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (module -> the modules it imports), as the modules along it; [] without one."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def test_the_cycle_finder_finds_one():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) == []


def test_no_modules_import_each_other():
    found = modules()
    graph = {name: {target for target in imported_modules(path, name) if target in found and target != name}
             for name, path in found.items()}
    assert import_cycle(graph) == []


def third_party_imports() -> set[str]:
    """The top-level names of every package the product modules import (at the top or inside functions)."""
    import sys

    names = set()
    for path in product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add((node.module or "").split(".")[0])
    return {name for name in names if name and name != "prtk" and name not in sys.stdlib_module_names}


def test_every_imported_package_is_declared():
    """Each package a product module imports is a dependency of prtk or of one of its extras (under its
    distribution's name: open_clip is open_clip_torch, PIL is pillow)."""
    import importlib.metadata
    import re
    import tomllib

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {normal(re.split(r"[<>=!~ \[;]", requirement)[0])
                for requirement in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]}
    distributions = importlib.metadata.packages_distributions()
    missing = {name: distributions.get(name, [name]) for name in third_party_imports()
               if not {normal(dist) for dist in distributions.get(name, [name])} & declared}
    assert missing == {}
