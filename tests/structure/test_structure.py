"""Structured pruning's parts on the shapes test bed: exact module removal, the smaller model it writes (config,
narrow attention, loading), the MoPE metric and its resumption, targets, selection and distillation."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SimulatedKill
from prtk.core.errors import PrtkInputError
from prtk.models import load_clip
from prtk.models.structure import NarrowAttention
from prtk.pruning.cost import block_macs, gflops, vision_macs
from prtk.structure.distillation import DistillConfig, DistillTargets, distill
from prtk.structure.metric import Calibration, module_errors
from prtk.structure.modules import TowerModule, block_modules, magnitude, removed, width_modules
from prtk.structure.selection import StructureShape, keep_per_block, random_scores, resolve_shape
from prtk.structure.surgery import KeptModules, write_model


@pytest.fixture(scope="module")
def shapes_bed():
    return load_clip("prtk-testbed-shapes")


def images(count=6, seed=0):
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def write_test_model(clip, kept, shape, folder, name):
    """The smaller model as ``prune_structure`` writes it, and its config as written."""
    smaller = write_model(clip, kept, shape, folder, name, {"note": "test"})
    return smaller, json.loads((folder / f"{name}.json").read_text())


def test_the_written_model_computes_what_removal_in_place_computes(shapes_bed, tmp_path):
    """Heads, MLP groups and a block cut out of the weights give the embeddings of zeroing them in place."""
    spec, group = shapes_bed.spec, 32
    heads = {b: (0, 2, 3) if b != 2 else (1, 2, 3) for b in range(spec.layers)}
    groups = {b: tuple(g for g in range(8) if g not in (b % 4, 5)) for b in range(spec.layers)}
    kept = KeptModules((0, 1, 2, 3, 5), heads, groups, group)
    smaller, config = write_test_model(shapes_bed, kept, StructureShape(3, 192, 5), tmp_path, "shapes-h3m192d5")
    assert smaller.spec.heads == 3 and smaller.spec.mlp_width == 192 and smaller.spec.layers == 5
    assert smaller.spec.attention_width == 96 and smaller.spec.width == 128
    assert isinstance(smaller.visual.transformer.resblocks[0].attn, NarrowAttention)
    assert config["vision_heads"] == 3 and config["vision_cfg"]["layers"] == 5 and smaller.lineage == {"note": "test"}
    modules = [TowerModule("head", b, h) for b in range(spec.layers) for h in range(4) if h not in heads[b]]
    modules += [TowerModule("mlp", b, g) for b in range(spec.layers) for g in range(8) if g not in groups[b]]
    modules += [TowerModule("block", 4)]
    before = {key: value.clone() for key, value in shapes_bed.visual.state_dict().items()}
    with torch.inference_mode():
        with removed(shapes_bed.visual, modules, group):
            expected = shapes_bed.visual(images())
        actual = smaller.visual(images())
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()
    assert all(torch.equal(before[k], v) for k, v in shapes_bed.visual.state_dict().items())  # restored
    assert smaller.model.encode_text(smaller.tokenizer(["a circle"])).shape == (1, 128)  # text tower kept


def test_configs_without_removed_heads_are_plain_open_clip(shapes_bed, tmp_path):
    kept = KeptModules((0, 2, 4, 5), {b: (0, 1, 2, 3) for b in range(6)}, {b: tuple(range(6)) for b in range(6)}, 32)
    smaller, config = write_test_model(shapes_bed, kept, StructureShape(4, 192, 4), tmp_path, "shapes-h4m192d4")
    assert "vision_heads" not in config and config["vision_cfg"]["mlp_ratio"] * 128 == 192
    assert type(smaller.visual.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    bad = dict(config, vision_heads=5)
    (tmp_path / "bad-heads.json").write_text(json.dumps(bad))
    with pytest.raises(PrtkInputError, match=r"vision_heads must be a whole number in \[1, 4\].*got 5"):
        load_clip("bad-heads", config=tmp_path / "bad-heads.json", random_weights=True)


def test_cost_model_counts_the_narrow_widths(shapes_bed):
    n, d = 65, 128
    assert block_macs(n, d, 96, 192) == 4 * n * d * 96 + 2 * n * d * 192 + 2 * n * n * 96
    assert block_macs(n, d, d, 4 * d) == block_macs(n, d)
    shape = StructureShape(3, 192, 5)
    blocks = 5 * block_macs(65, 128, 96, 192)
    full = vision_macs(shapes_bed.spec) - 6 * block_macs(65, 128, 128, 256)
    assert shape.gflops(shapes_bed.spec) == pytest.approx(gflops(full + blocks), rel=1e-12)


@pytest.mark.parametrize("targets, message", [
    ({"heads": 5}, "--heads must be in [1, 4]"),
    ({"depth": 1}, "--depth must be in [2, 6]"),
    ({"mlp": 100}, "--mlp must be a multiple of the MLP group 32"),
    ({"target_gflops": 9.0}, "--gflops must be above 0 and below the model's"),
    ({"target_gflops": 1e-5}, "is below the smallest shape"),
    ({}, "no target given"),
    ({"heads": 4, "depth": 6}, "the targets remove nothing"),
])
def test_bad_targets_are_refused(shapes_bed, targets, message):
    arguments = {"heads": None, "mlp": None, "depth": None, "target_gflops": None} | targets
    with pytest.raises(PrtkInputError, match=None) as error:
        resolve_shape(shapes_bed.spec, mlp_group=32, **arguments)
    assert message in str(error.value)


def test_a_gflops_target_takes_the_largest_shape_under_it(shapes_bed):
    spec = shapes_bed.spec
    full = gflops(vision_macs(spec))
    shape = resolve_shape(spec, None, None, None, 0.7 * full, 32)
    assert shape.gflops(spec) <= 0.7 * full
    bigger = [StructureShape(h, m, d) for h in range(1, 5) for m in range(32, 257, 32) for d in range(1, 7)
              if 0.7 * full >= StructureShape(h, m, d).gflops(spec) > shape.gflops(spec)]
    assert not bigger
    fixed = resolve_shape(spec, 2, None, None, 0.5 * full, 32)
    assert fixed.heads == 2 and fixed.gflops(spec) <= 0.5 * full


def test_selection_keeps_the_highest_scores_per_block(shapes_bed):
    modules = width_modules(shapes_bed.spec, 32)
    assert len(modules) == 6 * (4 + 8) and len(block_modules(shapes_bed.spec)) == 6
    scores = {m: (float(m.index),) for m in modules}
    assert keep_per_block(scores, "head", 3, 2) == (2, 3)
    assert keep_per_block(scores, "mlp", 0, 3) == (5, 6, 7)
    assert random_scores(modules, 1) == random_scores(modules, 1) != random_scores(modules, 2)
    assert magnitude(shapes_bed.visual, modules[0], 32) > 0
    assert magnitude(shapes_bed.visual, TowerModule("block", 0), 32) > 0


def test_module_errors_resume_to_the_same_numbers(shapes_bed, tmp_path):
    from prtk.data.synthetic import CLASSES
    from prtk.models.zeroshot import class_embeddings

    classifier = class_embeddings(shapes_bed.model, shapes_bed.tokenizer, list(CLASSES))
    calibration = Calibration(images(12, 1), torch.arange(12) % len(CLASSES), classifier)
    modules = [TowerModule("head", 1, 0), TowerModule("mlp", 3, 2), TowerModule("block", 0), TowerModule("block", 5)]
    whole = module_errors(shapes_bed.visual, calibration, modules, 32, 4, tmp_path / "a.json", {"k": 1})

    def stop_after_first_batch(done, total):
        if done == 4:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        module_errors(shapes_bed.visual, calibration, modules, 32, 4, tmp_path / "b.json", {"k": 1},
                      stop_after_first_batch)
    assert json.loads((tmp_path / "b.json").read_text())["batches"] == 1
    resumed = module_errors(shapes_bed.visual, calibration, modules, 32, 4, tmp_path / "b.json", {"k": 1})
    assert resumed == whole
    similarity = {error.module.key: error.similarity_drop for error in whole}
    assert similarity["b0"] > similarity["b1.head0"] > 0  # a whole block costs more than one head
    assert all(error.accuracy_drop is not None for error in whole)


def test_distillation_resumes_to_the_same_weights(shapes_bed, tmp_path):
    """A run killed in its second epoch and started again ends with the uninterrupted run's student."""
    kept = KeptModules((0, 1, 2, 3, 4, 5), {b: (0, 1, 2) for b in range(6)}, {b: tuple(range(4)) for b in range(6)}, 32)
    pixels = images(20, 2)
    with torch.no_grad():
        teacher = shapes_bed.visual(pixels)
    targets = DistillTargets(pixels.half(), teacher, None, 100.0)
    config = DistillConfig(epochs=2, images=20, batch_size=8, lr=1e-3)  # 18 training images: 3 steps per epoch

    def kill_in_second_epoch(done, total):
        if done == 4:
            raise SimulatedKill

    students = []
    for run in ("whole", "resumed"):
        student, _ = write_test_model(shapes_bed, kept, StructureShape(3, 128, 6), tmp_path, f"shapes-{run}")
        if run == "resumed":
            with pytest.raises(SimulatedKill):
                distill(student.visual, targets, config, tmp_path / f"{run}.pt", kill_in_second_epoch)
            student, _ = write_test_model(shapes_bed, kept, StructureShape(3, 128, 6), tmp_path, f"shapes-{run}")
        history = distill(student.visual, targets, config, tmp_path / f"{run}.pt")
        students.append(student.visual.state_dict())
        assert [record["epoch"] for record in history] == [1, 2]
        assert history[-1]["held_out_agreement"] is None
    assert all(torch.equal(students[0][key], students[1][key]) for key in students[0])


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
def test_narrow_towers_export_and_match_at_every_level(shapes_bed, tmp_path, level):
    """Attention of 3 heads in a 128-wide tower through open_clip's blocks (O0), the lean blocks (O1) and ONNX
    Runtime's fused Attention (O2): the export's checks compare each graph with the PyTorch tower."""
    from prtk.export.checks import load_check_images
    from prtk.export.config import ExportConfig
    from prtk.export.exporter import export_models

    kept = KeptModules((0, 1, 2, 4, 5), {b: (0, 1, 3) for b in range(6)}, {b: tuple(range(6)) for b in range(6)}, 32)
    smaller, _ = write_test_model(shapes_bed, kept, StructureShape(3, 192, 5), tmp_path, f"shapes-narrow-{level}")
    check_images, _ = load_check_images(smaller.preprocess, 64, None, 4)
    records = export_models(smaller, ExportConfig(keeps=(0.6,), full=True, optimize=level), tmp_path / "onnx",
                            check_images)
    assert [record.passed for record in records] == [True, True], [c.as_dict() for r in records for c in r.checks]
    assert all(record.as_dict()["architecture"]["heads"] == 3 and record.as_dict()["lineage"] == {"note": "test"}
               for record in records)
