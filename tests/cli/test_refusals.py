"""Reliability round 3: what used to end in a traceback, a late refusal, a wrong exit status or a silently wrong
result is a working feature or one line with exit status 2, before any long work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, lying_copy
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder
from prtk.export.artifact import Artifact

SHAPES = "prtk-testbed-shapes"
EXPORT = ("export", "--model", SHAPES, "--keep", "0.6")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shapes_folder(tmp_path_factory.mktemp("refusals") / "data", 300, HELD_OUT_SEED, size=64)


@pytest.mark.parametrize("args, message", [
    (("export", "--calib-method", "percentile"), "--calib-method does nothing without --quantize int8-static"),
    (("export", "--calib-images", "10", "--quantize", "int8-dynamic"),
     "--calib-images does nothing without --quantize int8-static"),
    (("export", "--stage-scorer", "elip"), "--stage-scorer does nothing without --stages"),
    (("export", "--no-tokens"), "--no-tokens does nothing without --pack"),
    (("export", "--check-images", "4", "--no-check"), "--check-images does nothing without the checks"),
    (("export", "--control-images", "10"), "--control-images does nothing without --max-agreement-drop"),
    (("export", "--max-agreement-drop", "1"), "--max-agreement-drop is for int8 graphs"),
    (("export", "--max-agreement-drop", "1", "--quantize", "int8-dynamic"),
     "--max-agreement-drop is for --quantize int8-static; int8-dynamic has no calibrated graph"),
    (("export", "--max-agreement-drop", "nan", "--quantize", "int8-static"), "must be in [0, 100] (points), got nan"),
    (("export", "--max-agreement-drop", "1", "--quantize", "int8-static", "--control-images", "0"),
     "--control-images must be at least 1, got 0"),
    (("eval", "--stage-scorer", "elip"), "--stage-scorer does nothing without --stages"),
    (("eval", "--no-tokens"), "--no-tokens does nothing without --pack"),
    (("bench", "--seconds", "nan"), "seconds a finite number >= 0"),
    (("bench", "--seconds", "inf"), "seconds a finite number >= 0"),
    (("bench", "--calib-method", "entropy"), "--calib-method does nothing without the int8-static variant"),
    (("bench", "--backend", "torch,torch"), "--backend names torch twice"),
    (("bench", "--batch", "1,1"), "--batch names 1 twice"),
    (("prune-structure", "--depth", "1"), "--depth must be in [2, 6] (blocks to keep; a tower keeps at least 2), "
                                          "got 1"),
    (("prune-structure", "--mlp", "64", "--mlp-group", "0"), "--mlp-group must be at least 1, got 0"),
    (("prune-structure", "--heads", "3", "--mlp-group", "64"),
     "--mlp-group does nothing without an MLP target (--mlp or --gflops)"),
    (("train", "--tokens", "0", "--token-epochs", "3"),
     "--token-epochs does nothing without learnable tokens (--tokens above 0)"),
    (("prune-structure", "--heads", "3", "--distill-images", "1"), "--distill-images must be at least 2"),
    (("prune-structure", "--heads", "3", "--name", "prtk-testbed-cifar10"), "ships with prtk or open_clip"),
    (("prune-structure", "--heads", "3", "--name", "ViT-B-16"), "ships with prtk or open_clip"),
    (("prune-structure", "--heads", "3", "--select", "magnitude", "--metric", "similarity"),
     "--metric does nothing without --select mope"),
    (("prune-structure", "--heads", "3", "--distill-epochs", "0", "--lr", "1e-3"),
     "--lr does nothing without distillation"),
])
def test_options_that_cannot_work_are_refused_before_any_work(run_cli, data, tmp_path, args, message):
    command, *rest = args
    where = {"export": ("--out", tmp_path / "out"), "eval": ("--data", data), "bench": ("--keep", "0.6"),
             "prune-structure": ("--data", data, "--out", tmp_path / "out"),
             "train": ("--ranking", tmp_path / "ranking.prtk", "--data", data, "--out", tmp_path / "out")}[command]
    assert_one_line_error(run_cli(command, "--model", SHAPES, *where, *rest), message)
    assert not (tmp_path / "out").exists()


def test_a_baseline_scorer_beside_a_pack_is_refused(run_cli, tmp_path):
    from conftest import seeded_pack
    from prtk.models import load_clip

    pack = seeded_pack(load_clip(SHAPES), tmp_path / "pack.prtk", layer=1)
    for scorer in ("elip", "fixed-random", "cls-attention"):
        assert_one_line_error(run_cli(*EXPORT, "--pack", pack, "--scorer", scorer, "--out", tmp_path / "out"),
                              f"--scorer {scorer} is for exports without --pack")
    for scorer in ("fixed-random", "cls-attention"):
        assert_one_line_error(run_cli("bench", "--model", SHAPES, "--pack", pack, "--scorer", scorer),
                              f"--scorer {scorer} is for benches without --pack")
    assert not (tmp_path / "out").exists()


def test_a_binary_classes_file_is_one_line(run_cli, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    assert_one_line_error(run_cli(*EXPORT, "--classes", classes, "--out", tmp_path / "out"),
                          f"classes file {classes} is not UTF-8 text")
    classes.write_bytes(b"cat\x00\ndog\n")
    assert_one_line_error(run_cli(*EXPORT, "--classes", classes, "--out", tmp_path / "out"), "holds NUL bytes")


def test_o2_int8_dynamic_exports_and_validates(run_cli, data, tmp_path):
    result = run_cli(*EXPORT, "--optimize", "O2", "--quantize", "int8-dynamic", "--out", tmp_path, "--data", data)
    assert result.exit_code == 0, result.output
    graph = tmp_path / f"{SHAPES}_keep0.60_int8-dynamic.onnx"
    sidecar = Artifact.read(graph).description()
    assert sidecar["runtimes"] == ["onnxruntime"] and sidecar["quantization"]["int8_nodes"] > 0
    fused = sidecar["graph"]["fused_operators"]
    assert fused["QAttention"] == 6 and "Attention" not in fused  # ONNX Runtime's int8 attention
    assert sidecar["quantization"]["operators"] == ["MatMul", "Gemm", "Attention"]
    validated = run_cli("validate", graph, "--data", data)
    assert validated.exit_code == 0, validated.output
    lie = lying_copy(graph, tmp_path / "lie", lambda d: d["quantization"].update(int8_nodes=3))
    assert_one_line_error(run_cli("validate", lie, "--data", data),
                          f"the graph has {sidecar['quantization']['int8_nodes']} int8 weight GEMMs, described as 3")


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_takes_any_number_of_images(run_cli, data, tmp_path, method):
    result = run_cli(*EXPORT, "--quantize", "int8-static", "--calib-data", data, "--calib-images", "67",
                     "--calib-method", method, "--out", tmp_path, "--no-check", "--json", "-")
    assert result.exit_code == 0, result.output
    (export,) = json.loads(result.stdout)["exports"]  # the calibrators' progress lines stay off stdout
    assert export["quantization"]["calibration"] | {"data": None, "sha256": None} == {
        "data": None, "images": 67, "seed": 0, "method": method, "sha256": None}


def test_runtimes_name_only_those_whose_checks_passed(run_cli, data, tmp_path):
    """TensorRT's readiness check fails on an O0 int8-static graph (asymmetric zero points): its description leaves
    TensorRT out, and build-engine refuses the graph for that reason."""
    result = run_cli(*EXPORT, "--optimize", "O0", "--quantize", "int8-static", "--calib-data", data,
                     "--calib-images", "32", "--out", tmp_path)
    assert result.exit_code == 1 and "a check failed" in result.stderr, result.output
    graph = tmp_path / f"{SHAPES}_keep0.60_int8-static.onnx"
    sidecar = Artifact.read(graph).description()
    assert sidecar["runtimes"] == ["onnxruntime", "openvino"]
    assert [(check["name"], check["passed"]) for check in sidecar["checks"]] == [
        ("onnx.checker", True), ("onnxruntime", True), ("tensorrt", False)]
    assert_one_line_error(run_cli("build-engine", graph, "--precision", "int8"),
                          "is not for TensorRT (its runtimes: onnxruntime, openvino): its export's TensorRT check "
                          "failed")


def test_bench_names_an_artifact_given_twice(run_cli, tmp_path):
    assert run_cli(*EXPORT, "--full", "--out", tmp_path, "--no-check").exit_code == 0
    assert_one_line_error(run_cli("bench", tmp_path, tmp_path, "--batch", "1"),
                          f"{tmp_path / f'{SHAPES}_full.onnx'} is given twice (in {tmp_path})")
    graph = tmp_path / f"{SHAPES}_keep0.60.onnx"
    assert_one_line_error(run_cli("bench", tmp_path, graph, "--batch", "1"), f"{graph} is given twice")


def test_a_16_bit_grayscale_image_reads_as_its_8_bit_twin(tmp_path):
    """PIL's own conversion clips 16-bit values at 255 (an all-white image); prtk scales them to 8 bits."""
    from prtk.data.folder import ImageFolderDataset
    from prtk.data.tensors import load_image_folder
    from prtk.models import load_clip

    gray = np.random.default_rng(0).integers(0, 256, size=(48, 40), dtype=np.uint16)
    for folder, pixels in (("eight", gray.astype(np.uint8)), ("sixteen", gray * 257)):
        for name in ("a", "b"):
            (tmp_path / folder / name).mkdir(parents=True)
            Image.fromarray(pixels).save(tmp_path / folder / name / "image.png")
    assert Image.open(tmp_path / "sixteen" / "a" / "image.png").mode == "I;16"
    clip = load_clip(SHAPES)
    eight, sixteen = (ImageFolderDataset(tmp_path / folder, clip.preprocess, 64) for folder in ("eight", "sixteen"))
    assert sixteen[0][3] == "" and np.array_equal(eight[0][0].numpy(), sixteen[0][0].numpy())
    assert float(sixteen[0][0].std()) > 0.1  # not a flat white image
    assert np.array_equal(load_image_folder(tmp_path / "eight", 32).images,
                          load_image_folder(tmp_path / "sixteen", 32).images)
    shutil.rmtree(tmp_path / "eight")


def test_build_engine_timing_cache_is_neither_an_input_nor_an_engine(run_cli, tmp_path):
    assert run_cli(*EXPORT, "--out", tmp_path, "--no-check").exit_code == 0
    graph = tmp_path / f"{SHAPES}_keep0.60.onnx"
    assert_one_line_error(run_cli("build-engine", tmp_path, "--timing-cache", graph), "is the input ONNX")
    engine = tmp_path / f"{SHAPES}_keep0.60_fp16.engine"
    assert_one_line_error(run_cli("build-engine", tmp_path, "--timing-cache", engine),
                          f"--timing-cache {engine} is also the engine {engine} of this command")
