"""The stages import one way: models -> pruning -> ranking / predictor -> evaluation -> export -> engines ->
quickstart -> cli, and nothing on the product path imports the test-bed training (``prtk.testbeds``)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"prtk": ROOT / "toolkit", "prtk.export": ROOT / "export", "prtk.engines": ROOT / "engines"}
# Each stage may import the stages before it. prtk.testbeds comes after every product stage but the CLI.
STAGES = ("core", "models", "data", "pruning", "structure", "ranking", "predictor", "evaluation", "export", "engines",
          "quickstart", "testbeds", "cli")
DATA_PACKAGES = ("model_configs", "checkpoints")


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "prtk" or len(parts) < 2:
        return None
    return "cli" if parts[1] == "__main__" else parts[1]  # ``python -m prtk``: the command line


def modules() -> dict[str, Path]:
    """Every prtk module -> its file."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("").parts
            if package == "prtk" and relative[0] in ("export", "engines"):
                continue
            name = ".".join([package, *(part for part in relative if part != "__init__")])
            found[name] = path
    return found


def imported_modules(path: Path, module: str) -> set[str]:
    """Every prtk module ``path`` imports, at the top or inside functions (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "prtk"}


def test_every_module_belongs_to_a_stage():
    strays = [name for name in modules() if name != "prtk" and stage_of(name) not in (*STAGES, *DATA_PACKAGES)]
    assert not strays, f"modules outside the stage packages: {strays}"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_earlier_stages(stage):
    allowed = set(STAGES[: STAGES.index(stage) + 1])
    found = []
    for name, path in modules().items():
        if stage_of(name) != stage:
            continue
        for target in imported_modules(path, name):
            target_stage = stage_of(target)
            if target_stage in STAGES and target_stage not in allowed:
                found.append(f"{name} imports {target}")
    assert not found, "\n".join(found)


def test_no_product_stage_imports_the_testbeds():
    product = [stage for stage in STAGES if stage not in ("testbeds", "cli")]
    found = [f"{name} imports {target}" for name, path in modules().items() if stage_of(name) in product
             for target in imported_modules(path, name) if stage_of(target) == "testbeds"]
    assert not found, "\n".join(found)


def test_importing_a_stage_loads_no_later_stage():
    """In one fresh interpreter, import the stages in order; after each, ``sys.modules`` holds no later stage."""
    stages = [stage for stage in STAGES if stage != "cli"]  # prtk.cli.__main__ would run the CLI
    names = {stage: sorted(name for name in modules() if stage_of(name) == stage) for stage in stages}
    code = f"""import importlib, sys
stages, names = {stages!r}, {names!r}
for index, stage in enumerate(stages):
    for name in names[stage]:
        importlib.import_module(name)
    later = set(stages[index + 1:]) | {{"cli"}}
    loaded = sorted(m for m in sys.modules if m.startswith("prtk.") and m.split(".")[1] in later)
    if loaded:
        print(f"importing prtk.{{stage}} loaded {{loaded}}")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "", result.stdout


TENSORRT_ADAPTER = "prtk.engines.tensorrt_adapter"
TENSORRT_MODULES = ("tensorrt", "polygraphy.backend.trt")  # TensorRT, and Polygraphy's backend over it


def reaches_tensorrt(path: Path) -> list[str]:
    """What in ``path`` reaches TensorRT: imports of ``TENSORRT_MODULES`` (at the top or inside functions) and
    ``import_module`` / ``lazy_import`` / ``__import__`` calls naming them."""
    def tensorrt(name: str) -> bool:
        return any(name == module or name.startswith(f"{module}.") for module in TENSORRT_MODULES)

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if tensorrt(alias.name)]
        elif isinstance(node, ast.ImportFrom) and not node.level and tensorrt(node.module or ""):
            found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if called in ("import_module", "lazy_import", "__import__") and tensorrt(
                    re.split(r"[<>=!~ ]", str(node.args[0].value))[0]):
                found.append(f"{called}({node.args[0].value!r})")
    return found


def test_only_the_adapter_reaches_tensorrt():
    reaching = {name: reaches_tensorrt(path) for name, path in modules().items()}
    assert set(reaching[TENSORRT_ADAPTER]) == {"tensorrt", "polygraphy.backend.trt"}, reaching[TENSORRT_ADAPTER]
    strays = {name: found for name, found in reaching.items() if found and name != TENSORRT_ADAPTER}
    assert not strays, f"TensorRT is reached outside {TENSORRT_ADAPTER}: {strays}"


def test_importing_every_module_tries_no_tensorrt():
    """In a fresh interpreter, importing every prtk module (the adapter too) never asks for TensorRT: an import
    hook records every attempt, whether or not TensorRT is installed."""
    names = sorted(name for name in modules() if stage_of(name) != "cli" or not name.endswith("__main__"))
    code = f"""import importlib, sys
asked = []
class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorrt":
            asked.append(name)
        return None
sys.meta_path.insert(0, Recorder())
for name in {names!r}:
    importlib.import_module(name)
print(asked, sorted(m for m in sys.modules if m.startswith("polygraphy.backend.trt")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] []", result.stdout
