"""A description that lies is refused by `prtk validate` (exit 2, naming the key), even when the graph's embedded
copy is rewritten with the sidecar: preprocessing against the model's own transform, stage keep counts against the
graph and the cost model, GFLOPs, L2 normalisation, runtimes against the checks, and the checks themselves."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import assert_one_line_error, lying_copy
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models
from prtk.models import builtin_checkpoint, builtin_config_path, load_clip

SHAPES = "prtk-testbed-shapes"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A one-stage and a three-stage keep export of the shapes test bed, with their checks, and 24 held-out images."""
    root = tmp_path_factory.mktemp("descriptions")
    clip = load_clip(SHAPES)
    data = write_shapes_folder(root / "data", 24, HELD_OUT_SEED, size=64)
    images = load_check_images(clip, data)
    (one,) = export_models(clip, ExportConfig(keeps=(0.6,)), root / "onnx", images)
    (staged,) = export_models(clip, ExportConfig(keeps=(0.8,), layer=1, later_stages=((3, 0.8), (4, 0.8))),
                              root / "onnx", images)
    return one.path, staged.path, data


def load_check_images(clip, data):
    from prtk.export.checks import load_check_images as load

    return load(clip.preprocess, clip.spec.image_size, data, 4)[0]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["input"].update(mean=[0.5, 0.5, 0.5]), "describes input.mean[0] as 0.5, but prtk-testbed-shapes's "
                                                        "own transform has 0.48145466"),
    (lambda d: d["input"].update(std=[0.25, 0.25, 0.25]), "describes input.std[0] as 0.25"),
    (lambda d: d["input"]["resize"].update(interpolation="bilinear"),
     'describes input.resize.interpolation as "bilinear", but prtk-testbed-shapes\'s own transform has "bicubic"'),
    (lambda d: d["input"]["resize"].update(size=72), "describes input.resize.size as 72"),
    (lambda d: d["input"]["resize"].update(mode="squash"), 'describes input.resize.mode as "squash"'),
    (lambda d: d.update(gflops=0.05), "describes gflops as 0.05, but the cost model gives 0.0773"),
    (lambda d: d["pruning"].update(block_cost_ratio=0.5), "describes pruning.block_cost_ratio as 0.5"),
    (lambda d: d["architecture"].update(layers=12), "describes architecture.layers as 12"),
])
def test_a_description_that_lies_about_its_model_is_refused(run_cli, exports, tmp_path, change, message):
    one, _, data = exports
    copy = lying_copy(one, tmp_path, change)
    assert_one_line_error(run_cli("validate", copy, "--data", data), message)
    assert not list(tmp_path.glob("*.validation.*"))


def test_stage_keep_counts_are_checked_against_the_graph_and_the_cost_model(run_cli, exports, tmp_path):
    _, staged, data = exports
    counts = json.loads(staged.with_suffix(".json").read_text())["pruning"]
    assert (counts["keep_count"], [stage["keep_count"] for stage in counts["later_stages"]]) == (51, [41, 33])
    lie = lying_copy(staged, tmp_path / "graph", lambda d: d["pruning"]["later_stages"][1].update(keep_count=20))
    assert_one_line_error(run_cli("validate", lie, "--data", data),
                          "does not match its own description: the graph keeps 51 then 41 then 33 patches, described "
                          "as 51 then 41 then 20")
    keep = lying_copy(staged, tmp_path / "keep", lambda d: d["pruning"]["later_stages"][0].update(keep=0.5))
    assert_one_line_error(run_cli("validate", keep, "--data", data),
                          "describes pruning.block_cost_ratio as 0.6957", "but its reference tower has 0.5964")
    assert run_cli("validate", staged, "--data", data, "--report", tmp_path / "true").exit_code == 0


@pytest.mark.parametrize("change, message", [
    (lambda d: d["outputs"][0].update(l2_normalized=False),
     "outputs' embedding l2_normalized is false but export.normalize is true"),
    (lambda d: (d["outputs"][0].update(l2_normalized=False), d["export"].update(normalize=False)),
     "the embedding is described as raw but the graph L2-normalises it"),
    (lambda d: d["runtimes"].append("tensorrt") or d["checks"][-1].update(passed=False),
     "runtimes lists tensorrt, but its tensorrt check failed"),
    (lambda d: d.update(optimize="O2"), "the graph has no fused operators of ONNX Runtime, described as optimize O2"),
    (lambda d: d["export"].update(kept_indices=False), "export.kept_indices is false, but the outputs hold"),
    (lambda d: d["pruning"].update(keep_count=20), "the graph keeps 38 patches, described as 20"),
])
def test_a_description_the_graph_contradicts_is_refused(run_cli, exports, tmp_path, change, message):
    one, _, data = exports
    original = json.loads(one.with_suffix(".json").read_text())
    assert [check["name"] for check in original["checks"]] == ["onnx.checker", "onnxruntime", "tensorrt"]
    if "tensorrt" in original["runtimes"]:
        original["runtimes"].remove("tensorrt")  # the runtimes edit adds it back next to a failed check
    copy = lying_copy(one, tmp_path, change)
    assert_one_line_error(run_cli("validate", copy, "--data", data), "does not match its own description", message)


def test_the_checks_are_embedded_so_a_sidecar_only_edit_is_caught(run_cli, exports, tmp_path):
    one, _, data = exports
    embedded = json.loads(onnx.load(str(one)).metadata_props[0].value)
    assert embedded["checks"] == json.loads(one.with_suffix(".json").read_text())["checks"] and embedded["checks"]
    copy = lying_copy(one, tmp_path, lambda d: d["checks"][1].update(passed=False), embedded=False)
    assert_one_line_error(run_cli("validate", copy, "--data", data),
                          "differs from the description embedded in", "(at checks[1].passed)")


@pytest.mark.parametrize("option, value, message", [
    ("--min-agreement", "101", "--min-agreement must be in [0, 100], got 101"),
    ("--min-cosine", "nan", "--min-cosine must be in [-1, 1], got nan"),
    ("--max-abs-diff", "-1", "--max-abs-diff must be in [0, inf], got -1"),
    ("--max-relative-error", "nan", "--max-relative-error must be in [0, inf], got nan"),
    ("--max-accuracy-delta", "-0.5", "--max-accuracy-delta must be in [0, 100], got -0.5"),
])
def test_thresholds_out_of_range_or_nan_are_bad_input(run_cli, exports, tmp_path, option, value, message):
    one, _, data = exports
    assert_one_line_error(run_cli("validate", one, "--data", data, "--report", tmp_path / "r", option, value), message)


def test_save_results_loader_feeds_a_model_known_only_by_its_files(run_cli, exports, tmp_path):
    """A model loaded with --model-config and --checkpoint (as every prune-structure output is) has no name a fresh
    process knows: the data loader preprocesses from the artifact's proven description, and polygraphy repeats the
    comparison."""
    _, _, data = exports
    config, weights = tmp_path / "my-shapes.json", tmp_path / "my-shapes.safetensors"
    shutil.copy(builtin_config_path(SHAPES), config)
    shutil.copy(builtin_checkpoint(SHAPES), weights)
    files = ("--model-config", config, "--checkpoint", weights)
    assert run_cli("export", *files, "--keep", "0.6", "--out", tmp_path / "onnx", "--no-check").exit_code == 0
    graph, results = tmp_path / "onnx" / "my-shapes_keep0.60.onnx", tmp_path / "results.json"
    result = run_cli("validate", graph, *files, "--data", data, "--batch-size", "16", "--save-results", results)
    assert result.exit_code == 0, result.output
    command = json.loads(Path(f"{graph}.validation.json").read_text())["polygraphy_command"]
    polygraphy = str(Path(sys.executable).with_name("polygraphy"))
    rerun = subprocess.run([polygraphy, *shlex.split(command)[1:]], capture_output=True, text=True, cwd=tmp_path)
    assert rerun.returncode == 0 and "PASSED" in rerun.stdout, rerun.stdout[-2000:] + rerun.stderr[-2000:]
