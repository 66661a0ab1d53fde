"""Runners, `prtk bench` on the CPU backends, and `prtk build-engine` (TensorRT where present, a refusal elsewhere)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_prtk_process
from prtk.engines.runners import OnnxRuntimeRunner, TorchRunner
from prtk.export.checks import load_check_images
from prtk.export.config import ExportConfig
from prtk.export.exporter import deployed_tower, export_models
from prtk.models import load_clip

SHAPES = "prtk-testbed-shapes"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
NO_TENSORRT = "needs TensorRT and an NVIDIA GPU (pip install \"prtk[gpu]\")"


def test_torch_and_onnxruntime_runners_agree(tmp_path):
    clip = load_clip(SHAPES)
    config = ExportConfig(keeps=(0.6,), run_checks=False)
    (record,) = export_models(clip, config, tmp_path, None)
    images, _ = load_check_images(clip.preprocess, 64, None, 4)
    from_torch = TorchRunner(deployed_tower(clip, config, None, 0.6))(images)
    from_onnx = OnnxRuntimeRunner(record.path)(images)
    assert list(from_torch) == list(from_onnx) == ["embedding", "kept_indices"]
    np.testing.assert_allclose(from_onnx["embedding"], from_torch["embedding"], atol=1e-5)
    assert np.array_equal(from_onnx["kept_indices"], from_torch["kept_indices"])


def test_openvino_runs_an_fp32_graph_as_its_reference_does(tmp_path, shapes_dir):
    (record,) = export_models(load_clip(SHAPES), ExportConfig(keeps=(0.6,), run_checks=False), tmp_path, None)
    result = run_prtk_process("validate", record.path, "--data", shapes_dir, "--backend", "openvino")
    assert result.exit_code == 0, result.output
    report = json.loads(record.path.with_name(record.path.name + ".validation.json").read_text())
    assert report["backend"] == "openvino" and report["agreement"] == 100.0
    assert report["max_abs_diff"] <= 1e-4 and report["kept_overlap"]["identical"] == 100.0


def test_bench_measures_the_cpu_backends(run_cli):
    result = run_cli("bench", "--model", SHAPES, "--backend", "torch,onnxruntime", "--keep", "0.5,0.7",
                     "--batch", "1,4", "--warmup", "1", "--iterations", "3", "--seconds", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["backend"], r["variant"], r["keep"], r["batch"]) for r in rows] == [
        (backend, "fp32", keep, batch) for backend in ("torch", "onnxruntime") for keep in (None, 0.5, 0.7)
        for batch in (1, 4)]
    for row in rows:
        assert row["iterations"] >= 3 and 0 < row["median_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] == pytest.approx(1000 * row["batch"] / row["median_ms"])
        if row["keep"] is None:
            assert row["speedup"] == row["paired_speedup"] == row["bound"] == 1.0
        else:
            assert row["bound"] > 1.0 and row["gflops"] < rows[0]["gflops"]
    assert "speedup" in result.stderr and "onnxruntime" in result.stderr


def test_bench_frontier_over_backends_and_variants():
    result = run_prtk_process("bench", "--model", SHAPES, "--backend", "onnxruntime,openvino", "--variants",
                              "fp32,int8-dynamic", "--keep", "0.6", "--batch", "2", "--warmup", "1", "--iterations",
                              "3", "--seconds", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    rows = document["rows"]
    assert [(r["backend"], r["variant"], r["keep"]) for r in rows] == [
        (backend, variant, keep) for backend in ("onnxruntime", "openvino") for variant in ("fp32", "int8-dynamic")
        for keep in (None, 0.6)]
    fastest = min((r for r in rows if r["keep"] is None), key=lambda r: r["median_ms"])
    assert document["fastest_unpruned"] == {"2": f"{fastest['backend']} {fastest['variant']}"}
    assert fastest["vs_fastest_unpruned"] == fastest["paired_vs_fastest_unpruned"] == 1.0
    for row in rows:
        assert row["iterations"] >= 3
        assert row["vs_fastest_unpruned"] == pytest.approx(fastest["median_ms"] / row["median_ms"])
        if row["keep"] is None:
            assert row["vs_fastest_unpruned"] <= 1.0 and row["speedup"] == row["paired_speedup"] == 1.0
        else:
            assert row["paired_speedup"] > 0 and row["paired_vs_fastest_unpruned"] > 0
    assert "fastest unpruned" in result.stderr


def test_bench_times_an_export_folder_as_written(run_cli, tmp_path):
    clip = load_clip(SHAPES)
    folder = tmp_path / "exports"
    for quantize in (None, "int8-dynamic"):
        export_models(clip, ExportConfig(keeps=(0.6,), full=True, run_checks=False, quantize=quantize), folder, None)
    written = {path.name: path.read_bytes() for path in folder.iterdir()}
    result = run_cli("bench", folder, "--backend", "torch,onnxruntime", "--batch", "2", "--warmup", "1",
                     "--iterations", "3", "--seconds", "0", "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    stem = "prtk-testbed-shapes"
    assert [(r["backend"], r["variant"], r["keep"], r["artifact"]) for r in rows] == [
        ("torch", "fp32", None, f"{stem}_full.onnx"), ("torch", "fp32", 0.6, f"{stem}_keep0.60.onnx"),
        ("onnxruntime", "fp32", None, f"{stem}_full.onnx"), ("onnxruntime", "fp32", 0.6, f"{stem}_keep0.60.onnx"),
        ("onnxruntime", "int8-dynamic", None, f"{stem}_full_int8-dynamic.onnx"),
        ("onnxruntime", "int8-dynamic", 0.6, f"{stem}_keep0.60_int8-dynamic.onnx")]
    sidecar = json.loads((folder / f"{stem}_keep0.60.json").read_text())
    for row in rows[1::2]:
        assert row["gflops"] == sidecar["gflops"] and row["bound"] == pytest.approx(
            1 / sidecar["pruning"]["block_cost_ratio"])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == written
    result = run_cli("bench", "--baseline", folder / f"{stem}_full.onnx", folder / f"{stem}_keep0.60_int8-dynamic.onnx",
                     "--backend", "onnxruntime", "--batch", "2", "--warmup", "1", "--iterations", "2", "--seconds", "0",
                     "--json", "-")
    assert result.exit_code == 0, result.output
    base, int8 = json.loads(result.stdout)["rows"]
    assert int8["variant"] == "int8-dynamic" and int8["speedup"] is None and int8["paired_vs_baseline"] > 0
    assert int8["baseline_bound"] is None and base["baseline_bound"] == 1.0  # no FLOP bound across precisions
    one = folder / f"{stem}_keep0.60.onnx"
    assert_one_line_error(run_cli("bench", folder, "--keep", "0.5"), "--keep is for exporting a model's graphs")
    assert_one_line_error(run_cli("bench", one, "--backend", "onnxruntime"), "no unpruned fp32 tower")
    assert_one_line_error(run_cli("bench", folder, "--backend", "tensorrt"), "no artifact runs on tensorrt")
    assert_one_line_error(run_cli("bench", tmp_path / "none"), "artifact not found")
    engine = tmp_path / "copied" / f"{stem}_keep0.60.engine"  # an engine file beside a graph's sidecar: still no graph
    engine.parent.mkdir()
    shutil.copy(one, engine)
    shutil.copy(one.with_suffix(".json"), engine.with_suffix(".json"))
    assert_one_line_error(run_cli("bench", engine, "--backend", "onnxruntime"), "no artifact runs on onnxruntime")


def test_bench_compares_a_staged_graph_with_a_one_stage_one(run_cli, tmp_path):
    clip = load_clip(SHAPES)
    export_models(clip, ExportConfig(keeps=(0.6,), full=True, run_checks=False), tmp_path, None)
    export_models(clip, ExportConfig(keeps=(0.6,), layer=1, later_stages=((2, 0.7),), run_checks=False), tmp_path, None)
    result = run_cli("bench", tmp_path, "--backend", "onnxruntime", "--batch", "2", "--warmup", "1", "--iterations",
                     "2", "--seconds", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(row["schedule"], row["keep"]) for row in rows] == [("full", None), ("0.6", 0.6), ("0.6@1 > 0.7@2", 0.6)]
    staged = rows[2]
    assert staged["bound"] > rows[1]["bound"] > 1 and staged["paired_speedup"] > 0
    assert staged["beyond_bound"] == (staged["paired_speedup"] > 1.1 * staged["bound"])
    assert "0.6@1 > 0.7@2" in result.stderr


def test_bench_and_build_engine_refusals(run_cli, tmp_path):
    bench = ["bench", "--model", SHAPES, "--keep", "0.6", "--batch", "1"]
    assert_one_line_error(run_cli(*bench, "--precision", "fp16"), "fp16 is for GPUs")
    assert_one_line_error(run_cli(*bench, "--backend", "torch,tflite"), "backends must be among")
    assert_one_line_error(run_cli(*bench, "--batch", "1,x"), "--batch must be comma-separated integers")
    assert_one_line_error(run_cli("build-engine", tmp_path / "missing.onnx"), "no ONNX file at")
    assert_one_line_error(run_cli("build-engine", tmp_path, "--batch", "8:1:32"), "MIN:OPT:MAX")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT and a GPU are present: the refusal cannot happen")
def test_build_engine_without_tensorrt_says_what_is_missing(run_cli, tmp_path):
    export_models(load_clip(SHAPES), ExportConfig(keeps=(0.6,), run_checks=False), tmp_path, None)
    for args in (["build-engine", tmp_path, "--precision", "fp16"],
                 ["bench", "--model", SHAPES, "--keep", "0.6", "--batch", "1", "--backend", "tensorrt"]):
        result = run_cli(*args)
        assert_one_line_error(result, 'pip install "prtk[gpu]"' if "TensorRT is not installed" in result.stderr
                              else "no CUDA GPU")
    assert not list(tmp_path.glob("*.engine"))


@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_tensorrt_engine_matches_torch(tmp_path):
    from prtk.engines.tensorrt_adapter import TensorRTRunner
    from prtk.engines.tensorrt_build import EngineConfig, build_engine

    clip = load_clip(SHAPES)
    config = ExportConfig(keeps=(0.6,), run_checks=False)
    (record,) = export_models(clip, config, tmp_path, None)
    engine = build_engine(record.path, EngineConfig("fp16", (1, 4, 8)))
    sidecar = json.loads(engine.with_suffix(".json").read_text())
    assert sidecar["tensorrt"]["precision"] == "fp16" and sidecar["pruning"]["keep"] == 0.6
    images, _ = load_check_images(clip.preprocess, 64, None, 4)
    got = TensorRTRunner(engine)(images)
    want = TorchRunner(deployed_tower(clip, config, None, 0.6))(images)
    cosine = (got["embedding"] * want["embedding"]).sum(1)
    assert cosine.min() > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_runner_on_cuda_in_fp16_matches_cpu():
    clip = load_clip(SHAPES)
    module = deployed_tower(clip, ExportConfig(keeps=(0.6,), kept_indices=False), None, 0.6)
    images, _ = load_check_images(clip.preprocess, 64, None, 4)
    cpu = TorchRunner(module)(images)["embedding"]
    gpu = TorchRunner(module, "cuda", "fp16")(images)["embedding"]
    assert (cpu * gpu).sum(1).min() > 0.999
