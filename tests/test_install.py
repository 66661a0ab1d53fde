"""prtk imports cleanly (no warnings) and its console script answers --help."""

import subprocess
import sys
import sysconfig
from pathlib import Path


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)


def test_import_prtk_prints_nothing_and_warns_nothing():
    result = run_python("import prtk, prtk.cli, prtk.export, prtk.engines; print(prtk.__version__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"
    assert result.stderr == ""


def test_open_clip_imports_through_prtk_and_compat_only_acts_where_the_extension_fails():
    code = (
        "from prtk.models import compat\n"
        "open_clip = compat.import_open_clip()\n"
        "import torchvision.extension as ext\n"
        "assert (compat._fallback_library is None) == ext._has_ops(), (compat._fallback_library, ext._has_ops())\n"
        "compat.import_open_clip()\n"
        "print(len(open_clip.list_models()) > 0)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert result.stderr == ""


def test_console_script_help():
    script = Path(sysconfig.get_path("scripts")) / "prtk"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "eval" in result.stdout and result.stderr == ""
    result = subprocess.run([str(script), "eval", "--help"], capture_output=True, text=True, timeout=120)
    for option in ("--model", "--pretrained", "--checkpoint", "--data", "--keep", "--layer", "--scorer", "--json"):
        assert option in result.stdout


def test_help_loads_no_heavy_module():
    """``prtk --help`` and each command's ``--help`` import neither torch nor onnx, ONNX Runtime or OpenVINO (the
    modules ``-X importtime`` reports loaded): heavy imports wait for the command to run."""
    heavy = {"torch", "onnx", "onnxruntime", "openvino", "numpy", "open_clip"}
    for command in ([], ["export"], ["bench"], ["validate"], ["build-engine"], ["cpp", "build"], ["quickstart"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "prtk", *command, "--help"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Usage: prtk" in result.stdout, result.stderr[-2000:]
        loaded = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                  if line.startswith("import time:")}
        assert "prtk.cli" in loaded and not heavy & loaded, (command, sorted(heavy & loaded))
