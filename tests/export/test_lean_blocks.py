"""`--optimize O0|O1|O2`: lean portable blocks, ONNX Runtime's fused operators, the same answers at every level."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from conftest import assert_one_line_error
from prtk.export.checks import load_check_images
from prtk.export.deployed import DeployedTower
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models
from prtk.export.lean_blocks import export_blocks
from prtk.export.onnx_graph import fold_constants, graph_structure, tidy, trace
from prtk.export.onnxruntime_ops import CUSTOM_OPSETS
from prtk.models import import_open_clip, load_clip

SHAPES = "prtk-testbed-shapes"
CIFAR = "prtk-testbed-cifar10"


@pytest.mark.parametrize("level", ["O1", "O2"])
def test_levels_give_lean_checked_deterministic_graphs(tmp_path, level):
    clip = load_clip(CIFAR)
    images, _ = load_check_images(clip.preprocess, 32, None, 6)
    config = ExportConfig(keeps=(0.6,), full=True, optimize=level)
    records = export_models(clip, config, tmp_path / "a", images)
    again = export_models(clip, config, tmp_path / "b", images)  # equal inputs and checks: equal bytes
    layers = clip.spec.layers
    for record, twin in zip(records, again, strict=True):
        assert record.passed, [check.as_dict() for check in record.checks]
        assert record.path.read_bytes() == twin.path.read_bytes()
        model = onnx.load(str(record.path))
        structure = graph_structure(model)
        assert record.as_dict()["graph"] == structure.as_dict() and structure.blocks == layers
        assert record.as_dict()["optimize"] == level and model.opset_import[0].version == 20
        checks = [check.name for check in record.checks]
        if level == "O1":
            assert structure.nodes_per_block <= 25 and structure.fused_operators == {}
            assert checks == ["onnx.checker", "onnxruntime", "tensorrt"]
            assert record.as_dict()["runtimes"] == ["onnxruntime", "openvino", "tensorrt"]
            assert "Gelu" in {node.op_type for node in model.graph.node}
        else:
            assert structure.fused_operators == {"Attention": layers, "BiasGelu": layers,
                                                 "SkipLayerNormalization": layers}
            assert not any(node.op_type == "Softmax" and "resblocks" in node.name for node in model.graph.node)
            assert checks == ["onnx.checker", "onnxruntime"] and record.as_dict()["runtimes"] == ["onnxruntime"]


def test_o0_keeps_open_clips_blocks_at_opset_17(tmp_path):
    clip = load_clip(SHAPES)
    (record,) = export_models(clip, ExportConfig(keeps=(0.6,), optimize="O0"), tmp_path, None)
    assert record.passed and record.as_dict()["opset"] == 17 and record.as_dict()["graph"]["nodes_per_block"] > 80


def small_vit(**options):
    """An open_clip VisionTransformer with the parts the fused blocks must handle: ``options`` picks them."""
    open_clip = import_open_clip()
    torch.manual_seed(0)
    visual = open_clip.transformer.VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=4,
                                                     mlp_ratio=2.0, output_dim=32, **options)
    return visual.eval()


@pytest.mark.parametrize("options", [{"ls_init_value": 0.5}, {"act_layer": "quick_gelu"}],
                         ids=["layer-scale", "quick-gelu"])
@pytest.mark.parametrize("level", ["O1", "O2"])
def test_blocks_match_open_clip_with_layer_scale_and_quick_gelu(level, options):
    if options.get("act_layer") == "quick_gelu":
        options = {"act_layer": import_open_clip().transformer.QuickGELU}
    visual = small_vit(**options)
    module = DeployedTower(visual).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = module(images)[0].numpy()
    with export_blocks(visual, level), torch.inference_mode():
        eager = module(images)[0].numpy()
    with export_blocks(visual, level):
        model = tidy(fold_constants(trace(module, images[:2], "images", module.output_names, 20,
                                          CUSTOM_OPSETS if level == "O2" else None)))
    assert type(visual.transformer.resblocks[0]).__name__ == "ResidualAttentionBlock"  # open_clip's blocks are back
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(eager, want, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    fused = graph_structure(model).fused_operators
    activation = "QuickGelu" if "act_layer" in options else "BiasGelu"
    assert fused == ({"Attention": 2, activation: 2, "SkipLayerNormalization": 2} if level == "O2" else {})


def test_onnx_runtime_only_graphs_are_refused_where_tensorrt_is_asked_for(run_cli, tmp_path):
    out = tmp_path / "o2"
    assert run_cli("export", "--model", SHAPES, "--optimize", "O2", "--out", out, "--no-check").exit_code == 0
    graph = out / f"{SHAPES}_keep0.60.onnx"
    assert_one_line_error(run_cli("build-engine", graph), "holds com.microsoft operators",
                          "TensorRT cannot build it", "--optimize O1")
    assert not list(out.glob("*.engine"))
    assert_one_line_error(run_cli("export", "--model", SHAPES, "--optimize", "O2", "--fp16", "--out", tmp_path / "h"),
                          "--fp16 is not available at --optimize O2")
    assert_one_line_error(run_cli("bench", "--model", SHAPES, "--backend", "tensorrt", "--optimize", "O2"),
                          "--optimize O2 graphs run on onnxruntime only, not on tensorrt")
    assert_one_line_error(run_cli("bench", "--model", SHAPES, "--backend", "onnxruntime,openvino", "--optimize", "O2"),
                          "not on openvino")
    assert_one_line_error(run_cli("validate", graph, "--data", tmp_path, "--backend", "openvino"),
                          "runs on onnxruntime only", "not on openvino")
    assert_one_line_error(run_cli("export", "--model", SHAPES, "--optimize", "O3", "--out", tmp_path / "x"),
                          "'O3' is not one of 'O0', 'O1', 'O2'")
