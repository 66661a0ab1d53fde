"""``prtk prune-structure`` end to end on the shapes test bed, and the smaller model through every later command:
eval, rank, train, export (with the pack), validate and bench, whose sidecar records the lineage."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error

MODEL = ["--model", "prtk-testbed-shapes"]


@pytest.fixture(scope="module")
def smaller(tmp_path_factory, shapes_dir):
    from click.testing import CliRunner

    from prtk.cli import cli

    out = tmp_path_factory.mktemp("structure")
    args = ["prune-structure", *MODEL, "--data", shapes_dir, "--out", out, "--heads", "3", "--mlp", "192",
            "--depth", "5", "--calibration-images", "16", "--distill-epochs", "2", "--distill-images", "40",
            "--batch-size", "16", "--json", out / "result.json"]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, args


def test_prune_structure_writes_a_smaller_model_with_its_card(smaller):
    out, _ = smaller
    name = "prtk-testbed-shapes-h3m192d5"
    result = json.loads((out / "result.json").read_text())
    assert result["name"] == name and result["gflops"] < 0.7 * result["parent_gflops"]
    assert set(result["calibration_top1"]) == {"parent", "pruned", "distilled"}
    assert [record["epoch"] for record in result["distillation"]] == [1, 2]
    config = json.loads((out / f"{name}.json").read_text())
    assert config["vision_heads"] == 3 and config["vision_cfg"]["layers"] == 5
    lineage = config["prtk_lineage"]
    assert lineage["parent"]["model"] == "prtk-testbed-shapes" and lineage["selection"] == "mope"
    assert len(lineage["removed"]["blocks"]) == 1
    assert all(len(heads) == 1 and len(lineage["removed"]["mlp_groups"][b]) == 2
               for b, heads in lineage["removed"]["heads"].items())
    card = json.loads((out / f"{name}.card.json").read_text())
    assert len(card["module_errors"]) == 6 * (4 + 8) + 6 and card["calibration"]["images"] == 16
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{name}.json", f"{name}.safetensors",
                                                            f"{name}.card.json", "result.json"])


def test_the_smaller_model_goes_through_eval_rank_train_export_validate_bench(smaller, run_cli, shapes_dir, tmp_path):
    out, _ = smaller
    name = "prtk-testbed-shapes-h3m192d5"
    model = ["--model-config", out / f"{name}.json", "--checkpoint", out / f"{name}.safetensors"]
    ranking, pack = tmp_path / "ranking.prtk", tmp_path / "pack.prtk"
    result = run_cli("eval", *model, "--data", shapes_dir, "--keep", "0.6", "--json", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval.json").read_text())["architecture"]["heads"] == 3
    result = run_cli("rank", *model, "--data", shapes_dir, "--out", ranking, "--layer", "2", "--step", "8")
    assert result.exit_code == 0, result.output
    result = run_cli("train", *model, "--ranking", ranking, "--data", shapes_dir, "--out", pack, "--keep", "0.6",
                     "--tokens", "2", "--predictor-epochs", "2", "--token-epochs", "1", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    result = run_cli("export", *model, "--pack", pack, "--keep", "0.6", "--full", "--out", tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    graph = tmp_path / "onnx" / f"{name}_keep0.60.onnx"
    sidecar = json.loads(graph.with_suffix(".json").read_text())
    assert sidecar["lineage"]["parent"]["model"] == "prtk-testbed-shapes"
    assert sidecar["architecture"]["heads"] == 3 and sidecar["architecture"]["layers"] == 5
    result = run_cli("validate", graph, *model, "--pack", pack, "--data", shapes_dir, "--batch-size", "16")
    assert result.exit_code == 0, result.output
    report = json.loads(graph.with_name(graph.name + ".validation.json").read_text())
    assert report["passed"] and report["agreement"] == 100.0
    result = run_cli("bench", tmp_path / "onnx", *model, "--pack", pack, "--backend", "onnxruntime", "--batch", "4",
                     "--warmup", "1", "--iterations", "2", "--seconds", "0.1", "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {row["keep"] for row in rows} == {0.6, None}  # None: the unpruned tower
    result = run_cli("export", *MODEL, "--keep", "0.6", "--full", "--out", tmp_path / "parent", "--no-check")
    assert result.exit_code == 0, result.output
    parent = tmp_path / "parent" / "prtk-testbed-shapes_full.onnx"
    result = run_cli("bench", "--baseline", parent, graph, *model, "--pack", pack, "--backend", "onnxruntime,torch",
                     "--batch", "4", "--warmup", "1", "--iterations", "2", "--seconds", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["baseline"] == parent.name and "baseline" in result.stderr
    rows = {(row["backend"], row["artifact"]): row for row in document["rows"]}
    assert set(rows) == {(backend, file) for backend in ("onnxruntime", "torch") for file in (parent.name, graph.name)}
    for backend in ("onnxruntime", "torch"):
        child, base = rows[(backend, graph.name)], rows[(backend, parent.name)]
        assert (child["model"], base["model"]) == (name, "prtk-testbed-shapes")
        assert child["speedup"] is None and base["vs_baseline"] == base["paired_vs_baseline"] == 1.0
        assert child["vs_baseline"] == pytest.approx(base["median_ms"] / child["median_ms"])
        assert child["baseline_bound"] == pytest.approx(base["gflops"] / child["gflops"])
        assert child["baseline_bound"] > 1
    assert_one_line_error(run_cli("bench", graph, "--backend", "onnxruntime"), "no unpruned fp32 tower",
                          "name a --baseline")


@pytest.mark.parametrize("mode", ["int8-dynamic", "int8-static"])
def test_the_smaller_models_int8_graph_passes_validate(smaller, run_cli, shapes_dir, tmp_path, mode):
    out, _ = smaller
    name = "prtk-testbed-shapes-h3m192d5"
    model = ["--model-config", out / f"{name}.json", "--checkpoint", out / f"{name}.safetensors"]
    calibration = ["--calib-data", shapes_dir, "--calib-images", "32"] if mode == "int8-static" else []
    result = run_cli("export", *model, "--keep", "0.6", "--quantize", mode, *calibration, "--out", tmp_path,
                     "--data", shapes_dir)
    assert result.exit_code == 0, result.output
    graph = tmp_path / f"{name}_keep0.60_{mode}.onnx"
    assert json.loads(graph.with_suffix(".json").read_text())["lineage"]["parent"]["model"] == "prtk-testbed-shapes"
    result = run_cli("validate", graph, *model, "--data", shapes_dir)
    report = json.loads(graph.with_name(graph.name + ".validation.json").read_text())
    assert report["precision"] == "int8" and report["kept_overlap"]["identical"] == 100.0, result.output
    if mode == "int8-dynamic":
        assert result.exit_code == 0 and report["passed"], report["criteria"]
    else:  # 40 images, calibrated on 32 of them: one flipped prediction is 2.5 points (CIFAR-10: README)
        assert report["agreement"] >= 95.0 and report["cosine"]["min"] >= 0.98, report["criteria"]


def test_prune_structure_refuses_bad_targets_and_existing_files(smaller, run_cli, shapes_dir, tmp_path):
    out, args = smaller
    base = ["prune-structure", *MODEL, "--data", shapes_dir, "--out", tmp_path]
    assert_one_line_error(run_cli(*base, "--heads", "9"), "--heads must be in [1, 4]", "got 9")
    assert_one_line_error(run_cli(*base, "--depth", "0"), "--depth must be in [2, 6]", "got 0")
    assert_one_line_error(run_cli(*base, "--gflops", "5"), "--gflops must be above 0 and below the model's")
    assert_one_line_error(run_cli(*base, "--mlp", "100"), "multiple of the MLP group 32")
    assert_one_line_error(run_cli(*base, "--mlp-group", "48", "--mlp", "96"), "--mlp-group must be a positive divisor")
    assert_one_line_error(run_cli(*base), "no target given")
    assert_one_line_error(run_cli(*args[:-2]), "output exists", "pass --force")
