"""int8 exports (ONNX Runtime's quantizer): what is quantized and what stays float, the sidecar's record, checks
and validation against the float references on ONNX Runtime and OpenVINO, build-engine's int8 rules, refusals."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import assert_one_line_error, run_prtk_process
from prtk.export.onnx_graph import graph_facts
from prtk.export.tensorrt_readiness import tensorrt_findings

CIFAR = "prtk-testbed-cifar10"
SHAPES = "prtk-testbed-shapes"


def export(run_cli, out, *args):
    result = run_cli("export", "--model", CIFAR, "--keep", "0.6", "--full", "--out", out, *args)
    assert result.exit_code == 0, result.output
    return result


def ops(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


@pytest.fixture(scope="module")
def static_exports(cifar_test_dir, tmp_path_factory):
    """int8-static keep 0.6 and unpruned CIFAR-10 test bed graphs, calibrated on 64 test images (in a real run the
    calibration images come from the training split)."""
    from click.testing import CliRunner

    from prtk.cli import cli

    out = tmp_path_factory.mktemp("int8")
    args = ["export", "--model", CIFAR, "--keep", "0.6", "--full", "--out", str(out), "--quantize", "int8-static",
            "--calib-data", str(cifar_test_dir), "--calib-images", "64", "--data", str(cifar_test_dir),
            "--check-images", "32"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_int8_static_is_a_checked_qdq_graph_that_keeps_the_scoring_float(static_exports):
    keep = static_exports / f"{CIFAR}_keep0.60_int8-static.onnx"
    sidecar = json.loads(keep.with_suffix(".json").read_text())
    assert sidecar["precision"] == "int8" and graph_facts(onnx.load(keep)).precision == "int8"
    assert all(check["passed"] for check in sidecar["checks"])
    assert [check["name"] for check in sidecar["checks"]] == ["onnx.checker", "onnxruntime", "tensorrt"]
    assert sidecar["runtimes"] == ["onnxruntime", "openvino", "tensorrt"]
    quantization = sidecar["quantization"]
    assert quantization["mode"] == "int8-static" and quantization["format"] == "QDQ"
    assert quantization["calibration"]["images"] == 64 and len(quantization["calibration"]["sha256"]) == 64
    assert quantization["float"]["first_blocks"] == sidecar["pruning"]["layer"] == 1
    model = onnx.load(keep)
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    int8_matmuls = [node.name for node in model.graph.node
                    if node.op_type == "MatMul" and set(node.input) <= dequantized]
    assert len(int8_matmuls) == quantization["int8_nodes"] == 4 * 5 + 1  # blocks 1-5's four GEMMs, the projection
    assert not [name for name in int8_matmuls if "/scorer/" in name or "/resblocks.0/" in name]
    assert {"Conv", "TopK", "Softmax", "LayerNormalization", "ReduceL2"} <= set(quantization["float"]["operators"])
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
               and len(t.dims) == 2]
    assert weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)  # 7-bit: no VNNI-less saturation
    full = json.loads((static_exports / f"{CIFAR}_full_int8-static.json").read_text())
    assert full["quantization"]["int8_nodes"] == 4 * 6 + 1 and full["quantization"]["float"]["first_blocks"] == 0


def test_int8_static_export_is_byte_identical(static_exports, cifar_test_dir, run_cli, tmp_path):
    export(run_cli, tmp_path, "--quantize", "int8-static", "--calib-data", cifar_test_dir, "--calib-images", "64",
           "--data", cifar_test_dir, "--check-images", "32")
    for name in (f"{CIFAR}_keep0.60_int8-static.onnx", f"{CIFAR}_full_int8-static.onnx"):
        assert (tmp_path / name).read_bytes() == (static_exports / name).read_bytes()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_static_validates_against_the_float_references(static_exports, cifar_test_dir, run_cli, backend):
    keep = static_exports / f"{CIFAR}_keep0.60_int8-static.onnx"
    run = run_prtk_process if backend == "openvino" else run_cli
    result = run("validate", keep, "--data", cifar_test_dir, "--limit", "400", "--backend", backend,
                 "--report", static_exports / backend, "--force")
    report = json.loads((static_exports / f"{backend}.json").read_text())
    assert report["backend"] == backend and report["precision"] == "int8"
    assert report["thresholds"]["min_agreement"] == 99.0 and report["thresholds"]["max_accuracy_delta"] == 0.5
    assert report["kept_overlap"]["identical"] == 100.0  # the scoring is float: the same patches are kept
    assert report["cosine"]["min"] > 0.99 and report["agreement"] >= 97.0, result.output
    assert abs(report["top1"]["artifact"] - report["top1"]["pruned"]) <= 1.0


def test_int8_dynamic_runs_on_onnxruntime_and_openvino_not_tensorrt(run_cli, tmp_path, cifar_test_dir):
    export(run_cli, tmp_path, "--quantize", "int8-dynamic", "--data", cifar_test_dir, "--check-images", "32")
    keep = tmp_path / f"{CIFAR}_keep0.60_int8-dynamic.onnx"
    sidecar = json.loads(keep.with_suffix(".json").read_text())
    assert sidecar["runtimes"] == ["onnxruntime", "openvino"] and sidecar["quantization"]["calibration"] is None
    assert [check["name"] for check in sidecar["checks"]] == ["onnx.checker", "onnxruntime"]
    assert ops(keep)["MatMulInteger"] == sidecar["quantization"]["int8_nodes"] == 4 * 6 + 1  # block 0 too, by default
    assert sidecar["quantization"]["float"]["first_blocks"] == 0
    result = run_prtk_process("validate", keep, "--data", cifar_test_dir, "--limit", "300", "--backend", "openvino")
    report = json.loads(keep.with_name(keep.name + ".validation.json").read_text())
    assert report["backend"] == "openvino" and report["kept_overlap"]["identical"] == 100.0, result.output
    assert report["agreement"] >= 97.0
    assert_one_line_error(run_cli("build-engine", keep, "--precision", "int8"), "dynamically quantized",
                          "--quantize int8-static")


def test_build_engine_int8_needs_qdq_and_qdq_needs_int8(static_exports, run_cli, tmp_path):
    export(run_cli, tmp_path, "--no-check")
    assert_one_line_error(run_cli("build-engine", tmp_path / f"{CIFAR}_keep0.60.onnx", "--precision", "int8"),
                          "has no Q/DQ nodes", "--quantize int8-static")
    assert_one_line_error(run_cli("build-engine", static_exports / f"{CIFAR}_keep0.60_int8-static.onnx",
                                  "--precision", "fp16"), "build it with --precision int8")


def test_readiness_flags_asymmetric_quantization(static_exports):
    model = onnx.load(static_exports / f"{CIFAR}_keep0.60_int8-static.onnx")
    assert tensorrt_findings(model) == []
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zero_point = next(t for t in model.graph.initializer if t.name == node.input[2])
    zero_point.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(zero_point)), zero_point.name))
    assert any(f.rule == "quantization zero point" for f in tensorrt_findings(model))


def test_int8_bad_input_is_one_line(run_cli, tmp_path, shapes_dir):
    base = ["export", "--model", SHAPES, "--keep", "0.6", "--out", tmp_path / "out"]
    assert_one_line_error(run_cli(*base, "--quantize", "int8-static"), "pass --calib-data DIR")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert_one_line_error(run_cli(*base, "--quantize", "int8-static", "--calib-data", tmp_path / "empty"),
                          "calibration data: no images in")
    assert_one_line_error(run_cli(*base, "--quantize", "int8-static", "--calib-data", tmp_path / "none"),
                          "calibration data: data folder not found")
    assert_one_line_error(run_cli(*base, "--quantize", "int8-dynamic", "--calib-data", shapes_dir),
                          "--calib-data is for --quantize int8-static")
    assert_one_line_error(run_cli(*base, "--quantize", "int8-dynamic", "--fp16"), "exclude each other")
    assert_one_line_error(run_cli(*base, "--quantize", "int8-static", "--calib-data", shapes_dir, "--calib-images",
                                  "0"), "--calib-images must be at least 1")
    assert_one_line_error(run_cli(*base, "--before-pruning", "int8"), "--before-pruning is for int8 graphs")
    bench = ["bench", "--model", SHAPES, "--keep", "0.6", "--batch", "1"]
    assert_one_line_error(run_cli(*bench, "--variants", "fp32,int8-static"), "pass --calib-data DIR")
    assert_one_line_error(run_cli(*bench, "--variants", "int8", "--backend", "onnxruntime"), "variants must be among")
    assert_one_line_error(run_cli(*bench, "--variants", "int8-dynamic", "--backend", "torch"),
                          "no backend among torch runs int8-dynamic")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
