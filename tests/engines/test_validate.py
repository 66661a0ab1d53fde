"""`prtk validate` against the PyTorch references, its refusals, and `prtk quickstart` end to end."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import assert_one_line_error, perturbed_copy, seeded_pack
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models
from prtk.models import load_clip

CIFAR = "prtk-testbed-cifar10"
SHAPES = "prtk-testbed-shapes"


def test_validate_passes_the_cifar_exports_and_fails_a_perturbed_one(run_cli, cifar_test_dir, tmp_path):
    clip = load_clip(CIFAR)
    pack = seeded_pack(clip, tmp_path / "pack.prtk", tokens=8)
    records = export_models(clip, ExportConfig(keeps=(0.5, 0.6, 0.7), pack=str(pack), run_checks=False), tmp_path, None)
    for record in records:
        result = run_cli("validate", record.path, "--data", cifar_test_dir, "--pack", pack, "--limit", "300")
        assert result.exit_code == 0, result.output
        report = json.loads(record.path.with_name(record.path.name + ".validation.json").read_text())
        assert report["passed"] and report["agreement"] == 100.0 and report["data"]["images"] == 300
        assert report["cosine"]["min"] > 0.9999 and report["kept_overlap"]["identical"] == 100.0
        assert len(report["per_class"]) == 10 and sum(c["images"] for c in report["per_class"].values()) == 300
        assert "PASS" in record.path.with_name(record.path.name + ".validation.md").read_text()
    broken = perturbed_copy(records[1].path, tmp_path / "broken.onnx", 0.05)
    result = run_cli("validate", broken, "--data", cifar_test_dir, "--pack", pack, "--limit", "300")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "broken.onnx.validation.json").read_text())
    assert not report["passed"] and not report["criteria"]["min_cosine"]["passed"]


def test_validate_saves_results_that_polygraphy_reads_and_compares_again(run_cli, shapes_dir, tmp_path):
    (record,) = export_models(load_clip(SHAPES), ExportConfig(keeps=(0.6,), run_checks=False), tmp_path, None)
    results = tmp_path / "results.json"
    validate = ["validate", record.path, "--data", shapes_dir, "--batch-size", "16"]
    result = run_cli(*validate, "--save-results", results)
    assert result.exit_code == 0, result.output
    report = json.loads(record.path.with_name(record.path.name + ".validation.json").read_text())
    comparison = report["tensor_comparison"]
    assert comparison["tool"].startswith("polygraphy ") and comparison["outputs"]["embedding"]["passed"]
    assert report["max_abs_diff"] == comparison["outputs"]["embedding"]["max_abs_diff"] <= 1e-4
    command = report["polygraphy_command"]
    assert command.startswith("polygraphy run ") and command in result.stdout and str(results) in command
    polygraphy = str(Path(sys.executable).with_name("polygraphy"))
    inspect = subprocess.run([polygraphy, "inspect", "data", results], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    assert "pytorch-reference (3 iterations)" in inspect.stdout and "onnxruntime" in inspect.stdout
    assert "embedding [dtype=float32, shape=(16, 128)]" in inspect.stdout
    rerun = subprocess.run([polygraphy, *shlex.split(command)[1:]], capture_output=True, text=True)
    assert rerun.returncode == 0 and "PASSED" in rerun.stdout, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    broken = perturbed_copy(record.path, tmp_path / "broken.onnx", 0.05)
    failing = subprocess.run([polygraphy, *shlex.split(command.replace(str(record.path), str(broken)))[1:]],
                             capture_output=True, text=True)
    assert failing.returncode != 0 and "FAILED" in failing.stdout + failing.stderr
    assert_one_line_error(run_cli(*validate, "--force", "--save-results", tmp_path / "r.txt"),
                          "--save-results must name a .json file")
    assert_one_line_error(run_cli(*validate, "--report", tmp_path / "again", "--save-results", results),
                          f"output exists: {results}")
    assert_one_line_error(run_cli(*validate, "--force", "--save-results", record.path.with_suffix(".json")),
                          "is the input sidecar")


def test_validate_refuses_a_mismatched_pair(run_cli, shapes_dir, tmp_path):
    clip = load_clip(SHAPES)
    pack = seeded_pack(clip, tmp_path / "pack.prtk")
    other = seeded_pack(clip, tmp_path / "other.prtk", seed=1)
    (record,) = export_models(clip, ExportConfig(keeps=(0.6,), pack=str(pack), run_checks=False), tmp_path / "x", None)
    validate = ["validate", record.path, "--data", shapes_dir]
    assert_one_line_error(run_cli(*validate, "--pack", pack, "--model", CIFAR), "was made for prtk-testbed-shapes")
    assert_one_line_error(run_cli(*validate, "--pack", pack, "--model", SHAPES, "--random-weights"),
                          "was made for prtk-testbed-shapes with weights", "(--random-weights --seed 0)")
    assert_one_line_error(run_cli(*validate), "pass it with --pack FILE")
    assert_one_line_error(run_cli(*validate, "--pack", other), "is not the pack")
    record.path.with_suffix(".json").unlink()
    assert_one_line_error(run_cli(*validate, "--pack", pack), "has no readable sidecar")
    assert_one_line_error(run_cli("validate", tmp_path / "none.onnx", "--data", shapes_dir), "artifact not found")


def test_quickstart_writes_the_report_and_readable_plots(run_cli, tmp_path):
    out = tmp_path / "quickstart"
    result = run_cli("quickstart", "--out", out, "--rank-images", "24", "--eval-images", "20", "--json", "-")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["accuracy"]) == {"random", "cls-attention", "predictor", "predictor + 8 tokens",
                                        "predictor + 8 tokens, int8-static ONNX"}
    assert set(summary["validation"]) == {"fp32", "int8-static"}
    assert all(v["passed"] for v in summary["validation"]["fp32"].values()) and len(summary["validation"]["fp32"]) == 4
    assert len(summary["validation"]["int8-static"]) == 4
    assert all(v["agreement"] >= 90.0 for v in summary["validation"]["int8-static"].values())
    assert set(summary["vs_fastest_unpruned"]) == {"torch", "onnxruntime", "onnxruntime int8-static"}
    assert "engines: skipped" in result.stderr or summary["engines"]
    exported, bench = {path.name for path in (out / "onnx").glob("*.onnx")}, json.loads(
        (out / "summary.json").read_text())["bench"]
    assert {row["artifact"] for row in bench if row["backend"] == "onnxruntime"} == exported
    assert len(exported) == 8 and {(row["backend"], row["variant"]) for row in bench} >= {
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8-static")}
    for name in ("accuracy_vs_keep.png", "speedup_vs_keep.png", "kept_patches.png"):
        with Image.open(out / name) as image:
            assert image.width >= 600 and image.height >= 400
    assert "![kept patches](kept_patches.png)" in (out / "summary.md").read_text()
    assert_one_line_error(run_cli("quickstart", "--out", out), "is not empty")
