"""Every bad input of `prtk eval`: one line naming the problem, exit status 2, no traceback."""

import pytest
from safetensors.torch import save_file

from conftest import assert_one_line_error
from prtk.models import load_clip


def eval_args(data, *extra):
    return ["eval", "--model", "prtk-tiny", "--random-weights", "--data", data, "--workers", "0", *extra]


def test_missing_data_folder(run_cli, tmp_path):
    missing = tmp_path / "nowhere"
    assert_one_line_error(run_cli(*eval_args(missing)), f"data folder not found: {missing}")


def test_empty_data_folder(run_cli, tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert_one_line_error(run_cli(*eval_args(tmp_path / "empty")), "no images in", "<class>/<image file>")


def test_corrupt_image_is_named_and_skip_bad_counts_it(run_cli, shapes_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    corrupt = data / "red_circle" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    assert_one_line_error(run_cli(*eval_args(data)), f"cannot decode image {corrupt}", "--skip-bad")
    report = tmp_path / "report.json"
    result = run_cli(*eval_args(data, "--skip-bad", "--json", report))
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable images" in result.stderr
    import json

    document = json.loads(report.read_text())
    assert document["data"]["skipped_bad"] == ["red_circle/broken.png"]
    assert document["data"]["images"] == 40


@pytest.mark.parametrize("keep", ["0", "1.5", "-0.2"])
def test_keep_outside_unit_interval(run_cli, shapes_dir, keep):
    assert_one_line_error(run_cli(*eval_args(shapes_dir, "--keep", keep)),
                          f"keep ratio must be in (0, 1], got {float(keep)}")


@pytest.mark.parametrize("layer", ["0", "6", "9"])
def test_layer_outside_range(run_cli, shapes_dir, layer):
    assert_one_line_error(run_cli(*eval_args(shapes_dir, "--layer", layer)),
                          f"layer must be in [1, 5] for a 6-block ViT, got {layer}")


def test_unknown_model(run_cli, shapes_dir):
    result = run_cli("eval", "--model", "ViT-Q-99", "--random-weights", "--data", shapes_dir)
    assert_one_line_error(result, "unknown model 'ViT-Q-99'", "prtk models")


def test_checkpoint_that_does_not_fit(run_cli, shapes_dir, tmp_path):
    other = load_clip("prtk-tiny-avgpool", random_weights=True).model.state_dict()
    path = tmp_path / "avgpool.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    result = run_cli("eval", "--model", "prtk-tiny", "--checkpoint", path, "--data", shapes_dir)
    assert_one_line_error(result, f"checkpoint {path} does not fit prtk-tiny", "shape mismatches")


def test_non_numeric_option_is_one_line_too(run_cli, shapes_dir):
    assert_one_line_error(run_cli(*eval_args(shapes_dir, "--keep", "lots")), "prtk eval: error:", "--keep")


def test_existing_json_report_is_not_overwritten(run_cli, shapes_dir, tmp_path):
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert_one_line_error(run_cli(*eval_args(shapes_dir, "--json", report)), f"output exists: {report}", "--force")
    assert report.read_text() == "{}"


@pytest.mark.parametrize("stages, message", [
    ("2:0.7,2:0.5", "stage block 2 appears twice"),
    ("4:0.7,2:0.7", "stage blocks must ascend"),
    ("2:0.7,4:1.5", "keep ratio must be in (0, 1], got 1.5"),
    ("2:0.7,6:0.7", "stage block 6 is outside [1, 5] for a 6-block ViT"),
    ("2:0.7,x", "--stages must be BLOCK:KEEP"),
])
def test_bad_stage_schedules(run_cli, shapes_dir, stages, message):
    assert_one_line_error(run_cli(*eval_args(shapes_dir, "--stages", stages)), message)


def test_stages_replace_keep_and_layer(run_cli, shapes_dir, tmp_path):
    assert_one_line_error(run_cli(*eval_args(shapes_dir, "--stages", "2:0.7,4:0.7", "--keep", "0.5")),
                          "--stages replaces --keep")
    report = tmp_path / "staged.json"
    result = run_cli(*eval_args(shapes_dir, "--stages", "2:0.7,4:0.5", "--json", report))
    assert result.exit_code == 0, result.output
    import json

    pruning = json.loads(report.read_text())["pruning"]
    assert (pruning["layer"], pruning["keep"], pruning["keep_count"]) == (2, 0.7, 45)
    assert pruning["later_stages"] == [{"block": 4, "keep": 0.5, "keep_count": 23, "scorer": "cls-attention"}]
    assert "0.7 > 0.5" in result.output
