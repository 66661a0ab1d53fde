"""int8 for every artifact: Q/DQ around the fused (O2) graph's MatMuls, staged int8 graphs that keep their float
twin's patches (and validate's kept-identical criterion that fails those that do not), and accuracy-controlled
int8-static (``--max-agreement-drop``) with the float-reverting surgery it stands on."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import assert_one_line_error, lying_copy
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder
from prtk.export.artifact import Artifact

SHAPES = "prtk-testbed-shapes"
CIFAR = "prtk-testbed-cifar10"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shapes_folder(tmp_path_factory.mktemp("int8") / "data", 300, HELD_OUT_SEED, size=64)


def exported(run_cli, out, *args) -> Artifact:
    result = run_cli("export", *args, "--out", out)
    assert result.exit_code == 0, result.output
    (graph,) = out.glob("*.onnx")
    return Artifact.read(graph)


def validated(run_cli, artifact: Artifact, data, *args) -> dict:
    result = run_cli("validate", artifact.path, "--data", data, *args)
    report = json.loads(artifact.path.with_name(artifact.path.name + ".validation.json").read_text())
    assert result.exit_code == (0 if report["passed"] else 1), result.output
    return report


def int8_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls both of whose inputs are dequantized (an int8 weight and a quantized activation)."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and set(node.input) <= dequantized]


def test_o2_int8_static_puts_qdq_around_the_fused_graphs_matmuls(run_cli, data, tmp_path):
    artifact = exported(run_cli, tmp_path, "--model", SHAPES, "--keep", "0.6", "--optimize", "O2", "--quantize",
                        "int8-static", "--calib-data", data, "--calib-images", "64", "--data", data)
    sidecar = artifact.description()
    quantization = sidecar["quantization"]
    assert sidecar["runtimes"] == ["onnxruntime"] and quantization["format"] == "QDQ"
    assert sidecar["graph"]["fused_operators"]["Attention"] == 6 and "Attention" in quantization["float"]["operators"]
    matmuls = int8_matmuls(onnx.load(artifact.path))  # activations too: the fused operators' outputs are typed
    assert len(matmuls) == quantization["int8_nodes"] == 3 * 5 + 1  # blocks 1-5: out_proj, c_fc, c_proj; projection
    report = validated(run_cli, artifact, data)
    assert report["passed"] and report["kept_overlap"]["identical"] == 100.0


def test_a_staged_int8_graph_keeps_its_float_twins_patches(run_cli, data, tmp_path):
    stages = ("--model", SHAPES, "--stages", "1:0.7,3:0.7,5:0.7", "--quantize", "int8-dynamic", "--no-check")
    artifact = exported(run_cli, tmp_path / "default", *stages)
    quantization = artifact.description()["quantization"]
    assert quantization["float"]["first_blocks"] == 5  # the later stages rank on the blocks before them
    assert quantization["float"]["scopes"] == ["/tower/scorer/", "/tower/stage_scorer/", "/tower/stage_scorer_1/"]
    integer = [node.name for node in onnx.load(artifact.path).graph.node if node.op_type == "MatMulInteger"]
    assert integer and not [name for name in integer if "scorer" in name or "/resblocks.4/" in name]
    report = validated(run_cli, artifact, data)
    assert report["passed"] and report["criteria"]["kept_identical"]["value"] >= 99.0
    drifting = exported(run_cli, tmp_path / "int8", *stages, "--before-pruning", "int8")
    report = validated(run_cli, drifting, data)
    assert "kept_identical" in report["failed"] and report["criteria"]["kept_identical"]["value"] < 90.0
    relaxed = validated(run_cli, drifting, data, "--min-kept-identical", "0", "--force")
    assert relaxed["criteria"]["kept_identical"]["passed"] and relaxed["thresholds"]["min_kept_identical"] == 0
    assert_one_line_error(run_cli("validate", drifting.path, "--data", data, "--min-kept-identical", "101"),
                          "--min-kept-identical must be in [0, 100], got 101")


def test_reverting_every_int8_gemm_gives_the_float_graph_back(data, tmp_path):
    from prtk.export.accuracy_control import revert_to_float
    from prtk.export.config import ExportConfig
    from prtk.export.exporter import export_models
    from prtk.export.onnxruntime_session import open_session, run_session
    from prtk.models import load_clip

    clip = load_clip(SHAPES)
    float_graph, = export_models(clip, ExportConfig(run_checks=False), tmp_path / "fp32", None)
    int8_graph, = export_models(clip, ExportConfig(quantize="int8-static", calib_data=str(data), calib_images=32,
                                                   run_checks=False), tmp_path / "int8", None)
    float_model, quantized = onnx.load(float_graph.path), onnx.load(int8_graph.path)
    names = int8_matmuls(quantized)
    assert len(names) == int8_graph.artifact.description()["quantization"]["int8_nodes"]
    one = revert_to_float(quantized, float_model, names[:1])
    assert int8_matmuls(one) == names[1:] and len(one.graph.node) < len(quantized.graph.node)
    everything = revert_to_float(quantized, float_model, names)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {node.op_type for node in everything.graph.node}
    onnx.save(everything, tmp_path / "reverted.onnx")
    images = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    expected = run_session(open_session(float_graph.path), images)["embedding"]
    np.testing.assert_allclose(run_session(open_session(tmp_path / "reverted.onnx"), images)["embedding"], expected,
                               atol=1e-6)


def test_accuracy_control_keeps_the_fewest_gemms_float_within_the_bound(cifar_test_dir, run_cli, tmp_path):
    args = ("--model", CIFAR, "--keep", "0.6", "--quantize", "int8-static", "--calib-data", cifar_test_dir,
            "--calib-images", "64", "--control-images", "400", "--no-check")
    artifact = exported(run_cli, tmp_path, *args, "--max-agreement-drop", "0")
    quantization = artifact.description()["quantization"]
    control = quantization["accuracy_control"]
    reverted = control["float_nodes"]
    assert control["control_images"] == 400 and control["max_agreement_drop"] == 0
    assert control["agreement"] == 100.0 or len(reverted) == 4 * 5 + 1  # within the bound, or every GEMM float
    assert reverted and control["agreement_all_int8"] < control["agreement"]  # 400 images: int8 moves a few
    assert quantization["int8_nodes"] == 4 * 5 + 1 - len(reverted)
    remaining = int8_matmuls(onnx.load(artifact.path))
    assert len(remaining) == quantization["int8_nodes"] and not set(remaining) & set(reverted)
    assert control["trials"] >= 1 + (4 * 5 + 1) + len(reverted)  # all int8, each GEMM alone, each revert, ...
    assert 0 < control["float_weight_share"] <= 1
    report = validated(run_cli, artifact, cifar_test_dir, "--limit", "500")
    assert report["passed"] and report["agreement"] >= 99.0
    lie = lying_copy(artifact.path, tmp_path / "lie",
                     lambda description: description["quantization"]["accuracy_control"].update(agreement="high"))
    assert_one_line_error(run_cli("validate", lie, "--data", cifar_test_dir),
                          'quantization.accuracy_control.agreement must be int or float, got "high"')
    assert_one_line_error(run_cli("export", *args[:-1], "--max-agreement-drop", "1", "--calib-images", "10000",
                                  "--out", tmp_path / "more"), "beyond the 10000 calibration images")


def test_bench_compares_one_schedule_quantized_two_ways(run_cli, data, tmp_path):
    calibration = ("--quantize", "int8-static", "--calib-data", data, "--calib-images", "32", "--no-check")
    for folder, extra in (("float", ("--full",)), ("int8", ("--before-pruning", "int8"))):
        result = run_cli("export", "--model", SHAPES, "--keep", "0.6", *calibration, *extra, "--out", tmp_path / folder)
        assert result.exit_code == 0, result.output
    timing = ("--backend", "onnxruntime", "--batch", "2", "--warmup", "1", "--iterations", "2", "--seconds", "0")
    result = run_cli("bench", tmp_path / "float", tmp_path / "int8", *timing, "--json", "-")
    assert result.exit_code == 0, result.output
    rows = {row["artifact"]: row for row in json.loads(result.stdout)["rows"]}
    name = f"{SHAPES}_keep0.60_int8-static.onnx"
    assert set(rows) == {f"{SHAPES}_full_int8-static.onnx", f"float/{name}", f"int8/{name}"}
    assert all(rows[f"{folder}/{name}"]["speedup"] is not None for folder in ("float", "int8"))
    result = run_cli("export", "--model", SHAPES, "--keep", "0.6", *calibration, "--full", "--force", "--out",
                     tmp_path / "int8")
    assert result.exit_code == 0, result.output
    assert_one_line_error(run_cli("bench", tmp_path / "float", tmp_path / "int8", *timing),
                          "are both onnxruntime int8-static O1 unpruned")
