"""`prtk export`: static-shape ONNX per keep ratio, its metadata, determinism, and the three checks."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from conftest import assert_one_line_error, seeded_pack
from prtk.pruning.cost import block_cost_ratio
from prtk.pruning.spec import TowerSpec, build_tower
from prtk.export.checks import check_runtime, load_check_images
from prtk.export.criteria import Tolerance
from prtk.export.deployed import DeployedTower
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models
from prtk.export.tensorrt_readiness import tensorrt_findings
from prtk.models import load_clip
from prtk.predictor.pack import load_pack

SHAPES = "prtk-testbed-shapes"


@pytest.fixture(scope="module")
def shapes_pack(tmp_path_factory):
    return seeded_pack(load_clip(SHAPES), tmp_path_factory.mktemp("pack") / "shapes.prtk")


def export_args(pack, out, *extra):
    return ["export", "--model", SHAPES, "--pack", pack, "--keep", "0.5,0.6,0.7", "--out", out, *extra]


def test_export_writes_checked_deterministic_graphs_with_metadata(run_cli, shapes_pack, shapes_dir, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("red circle\nblue square\ngreen triangle\n")
    extra = ("--full", "--classes", classes, "--data", shapes_dir, "--check-images", "5")
    first = run_cli(*export_args(shapes_pack, tmp_path / "a", *extra, "--json", tmp_path / "a.json"))
    assert first.exit_code == 0, first.output
    assert run_cli(*export_args(shapes_pack, tmp_path / "b", *extra)).exit_code == 0
    names = [f"{SHAPES}_keep{keep}" for keep in ("0.50", "0.60", "0.70")] + [f"{SHAPES}_full"]
    for name in names:
        for suffix in (".onnx", ".json"):
            first_bytes, second_bytes = ((tmp_path / run / f"{name}{suffix}").read_bytes() for run in ("a", "b"))
            assert first_bytes == second_bytes
    report = json.loads((tmp_path / "a.json").read_text())
    assert [len(export["checks"]) for export in report["exports"]] == [3, 3, 3, 3]
    assert all(check["passed"] for export in report["exports"] for check in export["checks"])

    path = tmp_path / "a" / f"{SHAPES}_keep0.60.onnx"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    model = onnx.load(str(path))
    embedded = json.loads({p.key: p.value for p in model.metadata_props}["prtk"])
    assert embedded == {key: value for key, value in sidecar.items() if key != "files"}
    clip = load_clip(SHAPES)
    assert sidecar["weights"]["sha256"] == clip.weights_sha256
    assert sidecar["pruning"] | {"block_cost_ratio": None} == {
        "scorer": "predictor", "seed": None, "layer": 3, "keep": 0.6, "keep_count": 38, "num_learnable_tokens": 4,
        "block_cost_ratio": None}
    assert sidecar["pack"]["sha256"] == hashlib.sha256(shapes_pack.read_bytes()).hexdigest()
    assert sidecar["input"]["shape"] == ["batch", 3, 64, 64] and len(sidecar["input"]["mean"]) == 3
    assert [(o["name"], o["shape"]) for o in sidecar["outputs"]] == [
        ("embedding", ["batch", 128]), ("logits", ["batch", 3]), ("kept_indices", ["batch", 38])]
    assert model.opset_import[0].version == 20 and sidecar["optimize"] == "O1"  # the default level and its opset
    assert "LayerNormalization" in {node.op_type for node in model.graph.node}
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output]
    assert dims == [["batch", 128], ["batch", 3], ["batch", 38]]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, _ = load_check_images(clip.preprocess, 64, shapes_dir, 3)
    embedding, logits, kept = session.run(None, {"images": images.numpy()})
    reference = build_tower(clip, TowerSpec(0.6, "predictor"), load_pack(shapes_pack))
    with torch.inference_mode():
        want_embedding, want_kept = reference(images, return_indices=True)
    np.testing.assert_allclose(embedding, torch.nn.functional.normalize(want_embedding, dim=-1), atol=1e-5)
    assert np.array_equal(kept, want_kept.numpy()) and np.all(np.diff(kept, axis=1) > 0)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    assert logits.shape == (3, 3)


def test_baseline_exports_and_external_data(run_cli, tmp_path):
    clip = load_clip(SHAPES)
    images, _ = load_check_images(clip.preprocess, 64, None, 4)
    config = ExportConfig(keeps=(0.6,), scorer="fixed-random", layer=2, normalize=False, kept_indices=False,
                          external_threshold=1024)
    (record,) = export_models(clip, config, tmp_path, images)
    assert [file.name for file in record.files] == [f"{SHAPES}_keep0.60.onnx", f"{SHAPES}_keep0.60.onnx.data"]
    assert record.passed, record.checks
    assert record.path.stat().st_size < 200_000 < record.files[1].stat().st_size
    assert record.as_dict()["pruning"]["scorer"] == "fixed-random" and record.as_dict()["pruning"]["layer"] == 2
    assert [o["name"] for o in record.as_dict()["outputs"]] == ["embedding"]
    result = run_cli("export", "--model", SHAPES, "--keep", "0.6", "--out", tmp_path / "fp16", "--fp16")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(tmp_path / "fp16" / f"{SHAPES}_keep0.60_fp16.onnx"))
    types = {init.data_type for init in model.graph.initializer if init.dims and np.prod(init.dims) > 1000}
    assert types == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_a_staged_export_is_checked_described_and_validated(run_cli, shapes_pack, shapes_dir, tmp_path):
    result = run_cli("export", "--model", SHAPES, "--pack", shapes_pack, "--stages", "3:0.6,4:0.5,5:0.5",
                     "--out", tmp_path, "--json", tmp_path / "exports.json")
    assert result.exit_code == 0, result.output
    graph = tmp_path / f"{SHAPES}_keep0.60_b4k0.50_b5k0.50.onnx"
    sidecar = json.loads(graph.with_suffix(".json").read_text())
    pruning = sidecar["pruning"]
    assert (pruning["layer"], pruning["keep"], pruning["keep_count"], pruning["scorer"]) == (3, 0.6, 38, "predictor")
    assert pruning["later_stages"] == [{"block": 4, "keep": 0.5, "keep_count": 19, "scorer": "cls-attention"},
                                       {"block": 5, "keep": 0.5, "keep_count": 10, "scorer": "cls-attention"}]
    assert sidecar["outputs"][-1]["shape"] == ["batch", 10]
    spec, tokens = load_clip(SHAPES).spec, pruning["num_learnable_tokens"]
    assert pruning["block_cost_ratio"] == block_cost_ratio(spec, 0.6, 3, tokens, later_stages=((4, 0.5), (5, 0.5)))
    assert pruning["block_cost_ratio"] < block_cost_ratio(spec, 0.6, 3, tokens)
    assert all(check["passed"] for check in json.loads((tmp_path / "exports.json").read_text())["exports"][0]["checks"])
    result = run_cli("validate", graph, "--data", shapes_dir, "--pack", shapes_pack)
    assert result.exit_code == 0, result.output
    report = json.loads(graph.with_name(graph.name + ".validation.json").read_text())
    assert report["agreement"] == 100.0 and report["kept_overlap"]["identical"] == 100.0
    assert_one_line_error(run_cli("export", "--model", SHAPES, "--stages", "3:0.6,5:0.5", "--keep", "0.5", "--out",
                                  tmp_path), "--stages replaces --keep")
    assert_one_line_error(run_cli("export", "--model", SHAPES, "--pack", shapes_pack, "--stages", "2:0.6,5:0.5",
                                  "--out", tmp_path), "--layer 2 differs from the pack's layer 3")


def test_a_three_stage_elip_export_bakes_its_language_side(run_cli, shapes_dir, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(path.name.replace("_", " ") for path in sorted(shapes_dir.iterdir())) + "\n")
    elip = ["export", "--model", SHAPES, "--scorer", "elip", "--stages", "2:0.7,3:0.7,4:0.7", "--stage-scorer",
            "elip", "--fuse-dropped", "--out", tmp_path]
    assert_one_line_error(run_cli(*elip), "the elip scorer needs a language side", "--classes FILE")
    result = run_cli(*elip, "--classes", classes)
    assert result.exit_code == 0, result.output
    graph = tmp_path / f"{SHAPES}_keep0.70_b3k0.70_b4k0.70.onnx"
    pruning = json.loads(graph.with_suffix(".json").read_text())["pruning"]
    assert pruning["scorer"] == "elip" and pruning["fuse_dropped"] is True
    assert [stage["scorer"] for stage in pruning["later_stages"]] == ["elip", "elip"]
    result = run_cli("validate", graph, "--data", shapes_dir)
    assert result.exit_code == 0, result.output
    report = json.loads(graph.with_name(graph.name + ".validation.json").read_text())
    assert report["agreement"] == 100.0 and report["kept_overlap"]["identical"] == 100.0


def test_runtime_check_fails_for_a_graph_that_is_not_its_reference(tmp_path):
    clip = load_clip(SHAPES)
    images, _ = load_check_images(clip.preprocess, 64, None, 4)
    (record,) = export_models(clip, ExportConfig(keeps=(0.6,), run_checks=False), tmp_path, None)
    other = load_clip(SHAPES, random_weights=True)
    from prtk.pruning.tower import PrunedVisionTower

    reference = DeployedTower(PrunedVisionTower(other.visual, 0.6)).eval()
    result = check_runtime(record.path, reference, images, Tolerance.for_precision("fp32"))
    assert not result.passed and "max abs diff" in result.detail


def graph(nodes, inputs, outputs, initializers=()):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def tensor(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


FLOAT_IN = tensor("x", TensorProto.FLOAT, ["batch", 16])


@pytest.mark.parametrize("case, rule", [
    ("nonzero", "data-dependent shape"),
    ("topk from shape", "TopK K not constant"),
    ("reshape from data", "data-dependent shape"),
    ("int64 beyond int32", "int64 beyond int32"),
    ("unsupported", "unsupported operator"),
    ("custom", "custom operator"),
    ("dynamic width", "dynamic dimension"),
])
def test_tensorrt_readiness_finds_what_tensorrt_cannot_build(case, rule, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tensor("y", TensorProto.FLOAT, None)
    if case == "nonzero":
        model = graph([helper.make_node("NonZero", ["x"], ["y"])], [FLOAT_IN], [tensor("y", TensorProto.INT64, None)])
    elif case == "topk from shape":
        model = graph([helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
                       helper.make_node("TopK", ["x", "s"], ["y", "i"])], [FLOAT_IN], [out])
    elif case == "reshape from data":
        model = graph([helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
                       helper.make_node("Cast", ["m"], ["c"], to=TensorProto.INT64),
                       helper.make_node("Concat", ["c", "c"], ["s"], axis=0),
                       helper.make_node("Reshape", ["x", "s"], ["y"])], [FLOAT_IN], [out])
    elif case == "int64 beyond int32":
        big = helper.make_tensor("big", TensorProto.INT64, [1], [2 ** 40])
        model = graph([helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
                       helper.make_node("Add", ["xi", "big"], ["y"])], [FLOAT_IN],
                      [tensor("y", TensorProto.INT64, None)], [big])
    elif case == "unsupported":
        model = graph([helper.make_node("Det", ["x"], ["y"])], [FLOAT_IN], [out])
    elif case == "custom":
        model = graph([helper.make_node("Relu", ["x"], ["y"], domain="com.example")], [FLOAT_IN], [out])
    else:
        model = graph([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", TensorProto.FLOAT, ["batch", "w"])], [out])
    findings = tensorrt_findings(model)
    assert rule in {finding.rule for finding in findings}, findings
    assert not list(tmp_path.iterdir())  # nothing left in the working directory


def test_tensorrt_readiness_passes_a_static_graph():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 4], np.ones(64, dtype=np.float32))
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    model = graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("TopK", ["h", "k"], ["y", "i"])],
                  [FLOAT_IN], [tensor("y", TensorProto.FLOAT, ["batch", 2])], [weight, k])
    assert tensorrt_findings(model) == []


def test_export_refusals(run_cli, shapes_pack, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(run_cli("export", "--model", "prtk-testbed-cifar10", "--pack", shapes_pack, "--out", out),
                          "pack was made for prtk-testbed-shapes")
    assert_one_line_error(run_cli(*export_args(shapes_pack, out, "--layer", "2")),
                          "--layer 2 differs from the pack's layer 3")
    assert_one_line_error(run_cli(*export_args(shapes_pack, out, "--opset", "16")), "opset must be in [17, ")
    assert_one_line_error(run_cli(*export_args(shapes_pack, out, "--keep", "0.6,0")), "keep ratio must be in (0, 1]")
    assert_one_line_error(run_cli(*export_args(shapes_pack, out, "--keep", "0.6,0.8")), "pack has tokens for keep")
    assert not out.exists()  # refused before anything was written
    assert_one_line_error(run_cli(*export_args(shapes_pack, out, "--classes", tmp_path / "none.txt")),
                          "classes file not found")
    assert run_cli(*export_args(shapes_pack, out, "--keep", "0.6", "--no-check")).exit_code == 0
    assert_one_line_error(run_cli(*export_args(shapes_pack, out, "--keep", "0.6")), "output exists")


def test_cifar_onnx_predictions_agree_with_pytorch_on_the_test_split(cifar_test_dir, tmp_path):
    from prtk.data.folder import ImageFolderDataset, class_display_name, make_loader
    from prtk.models.zeroshot import class_embeddings, zero_shot_logits

    clip = load_clip("prtk-testbed-cifar10")
    pack = seeded_pack(clip, tmp_path / "cifar.prtk", keeps=(0.6,), tokens=8)
    dataset = ImageFolderDataset(cifar_test_dir, clip.preprocess, 32)
    classes = tuple(class_display_name(name) for name in dataset.classes)
    config = ExportConfig(keeps=(0.6,), pack=str(pack), classes=classes, run_checks=False)
    (record,) = export_models(clip, config, tmp_path, None)
    session = onnxruntime.InferenceSession(str(record.path), providers=["CPUExecutionProvider"])
    tower = build_tower(clip, TowerSpec(0.6, "predictor"), load_pack(pack))
    classifier = class_embeddings(clip.model, clip.tokenizer, list(classes))
    agree = correct_onnx = correct_torch = 0
    with torch.inference_mode():
        for images, labels, _, _ in make_loader(dataset, 500, 0):
            want = zero_shot_logits(tower(images), classifier).argmax(1)
            got = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0]).argmax(1)
            agree += int((got == want).sum())
            correct_onnx += int((got == labels).sum())
            correct_torch += int((want == labels).sum())
    assert len(dataset) == 10_000
    assert agree / len(dataset) >= 0.999, (agree, correct_onnx, correct_torch)
    assert abs(correct_onnx - correct_torch) <= 10


def test_vit_b16_keep_06_export_passes_the_checks(tmp_path):
    clip = load_clip("ViT-B-16", random_weights=True)
    images, _ = load_check_images(clip.preprocess, 224, None, 3)
    (record,) = export_models(clip, ExportConfig(keeps=(0.6,), layer=3), tmp_path, images)
    assert record.passed, record.checks
    assert record.as_dict()["pruning"]["keep_count"] == 118
