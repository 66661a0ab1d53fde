"""Artifacts that cannot lie and runs that lose nothing: one test per class of fault, each asserting the exit
status and the one-line message (``prtk <command>: error: ...``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

from conftest import SimulatedKill, assert_one_line_error, perturbed_copy
from prtk.core import files
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models
from prtk.models import builtin_checkpoint, load_clip
from prtk.ranking.search import RankingConfig
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder

SHAPES = "prtk-testbed-shapes"
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes_export(tmp_path_factory):
    """A checked-in-place keep-0.6 export of the shapes test bed (cls-attention) and 40 held-out images."""
    root = tmp_path_factory.mktemp("reliability")
    (record,) = export_models(load_clip(SHAPES), ExportConfig(keeps=(0.6,), run_checks=False), root / "onnx", None)
    return record.path, write_shapes_folder(root / "data", 40, HELD_OUT_SEED, size=64)


def copy_export(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for source in (path, path.with_suffix(".json")):
        shutil.copy(source, folder / source.name)
    return folder / path.name


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


# --- validate checks the artifact, not only its outputs ---------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda d: d["pruning"].update(layer=2), "differs from the description embedded in"),
    (lambda d: d["input"].update(mean=[0.5, 0.5, 0.5]), "(at input.mean[0])"),
    (lambda d: d.update(precision="fp16"), "(at precision)"),
    (lambda d: d["pruning"].pop("keep_count"), "lacks the key pruning.keep_count"),
    (lambda d: d["pruning"].update(layer="3"), 'pruning.layer must be int, got "3"'),
    (lambda d: d.pop("outputs"), "lacks the key outputs"),
])
def test_an_edited_or_broken_sidecar_is_refused(run_cli, shapes_export, tmp_path, change, message):
    path, data = shapes_export
    copy = copy_export(path, tmp_path)
    edit_json(copy.with_suffix(".json"), change)
    assert_one_line_error(run_cli("validate", copy, "--data", data), message)
    assert not list(tmp_path.glob("*.validation.*"))


def test_a_graph_that_contradicts_its_description_is_refused(run_cli, shapes_export, tmp_path):
    """Sidecar and embedded description edited alike still lose against the graph (k, input size)."""
    path, data = shapes_export
    for field, edit, message in (
            ("k", lambda d: d["outputs"][-1].update(shape=["batch", 30]), "outputs are embedding float32[batch, 128]"),
            ("size", lambda d: d["input"].update(shape=["batch", 3, 32, 32]),
             "input is images float32[batch, 3, 64, 64]")):
        copy = copy_export(path, tmp_path / field)
        edit_json(copy.with_suffix(".json"), edit)
        model = onnx.load(str(copy))
        description = json.loads(model.metadata_props[0].value)
        edit(description)
        model.metadata_props[0].value = json.dumps(description, sort_keys=True)
        onnx.save(model, str(copy))
        assert_one_line_error(run_cli("validate", copy, "--data", data), "does not match its own description",
                              message)


def test_a_corrupt_or_truncated_graph_is_bad_input(run_cli, shapes_export, tmp_path):
    path, data = shapes_export
    copy = copy_export(path, tmp_path)
    copy.write_bytes(path.read_bytes()[:5000])
    assert_one_line_error(run_cli("validate", copy, "--data", data), f"cannot read ONNX graph {copy}")
    copy.write_bytes(b"\x00" * 64)
    result = run_cli("validate", copy, "--data", data)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    copy.with_suffix(".json").write_text("[1, 2]")
    assert_one_line_error(run_cli("validate", copy, "--data", data), "is not a prtk export sidecar")


def test_small_weight_damage_fails_on_the_difference_criteria(run_cli, shapes_export, tmp_path):
    """Noise of 0.5% of one weight matrix's spread keeps every cosine above 0.99999 and every prediction,
    but not the embeddings' element and relative differences."""
    path, data = shapes_export
    damaged = perturbed_copy(path, tmp_path / path.name, 0.005)
    result = run_cli("validate", damaged, "--data", data)
    assert result.exit_code == 1, result.output
    assert "FAIL (max_abs_diff, max_relative_error)" in result.stdout
    report = json.loads(Path(f"{damaged}.validation.json").read_text())
    assert report["cosine"]["min"] > 0.99999 and report["agreement"] == 100.0
    assert report["failed"] == ["max_abs_diff", "max_relative_error"]
    intact = run_cli("validate", path, "--data", data, "--report", tmp_path / "intact")
    assert intact.exit_code == 0, intact.output
    assert json.loads((tmp_path / "intact.json").read_text())["max_relative_error"] < 1e-5


def test_a_report_never_replaces_the_artifact_or_its_sidecar(run_cli, shapes_export, tmp_path):
    path, data = shapes_export
    copy = copy_export(path, tmp_path)
    before = copy.with_suffix(".json").read_bytes()
    assert_one_line_error(run_cli("validate", copy, "--data", data, "--report", copy.with_suffix(""), "--force"),
                          "is the input sidecar")
    assert copy.with_suffix(".json").read_bytes() == before


# --- nothing lost --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keeps", ["0.601,0.604", "0.6,0.6"])
def test_keep_ratios_with_one_file_name_are_refused_before_writing(run_cli, tmp_path, keeps):
    out = tmp_path / "out"
    assert_one_line_error(run_cli("export", "--model", SHAPES, "--keep", keeps, "--out", out),
                          "one ratio to two decimals (0.60)")
    assert not out.exists()


def test_a_kill_during_export_leaves_the_old_pair_or_the_new_pair(shapes_export, tmp_path, monkeypatch):
    """Killed before its commit, an export --force leaves the old pair untouched; killed between moving the graph
    and the sidecar, the journal it wrote makes the next reader complete the new pair."""
    path, data = shapes_export
    clip = load_clip(SHAPES)
    old = copy_export(path, tmp_path)
    old_bytes = (old.read_bytes(), old.with_suffix(".json").read_bytes())
    new_config = ExportConfig(keeps=(0.6,), scorer="fixed-random", run_checks=False)

    def kill_at_commit(name, moves):
        raise SimulatedKill

    with monkeypatch.context() as patch:
        patch.setattr("prtk.export.exporter.commit_together", kill_at_commit)
        with pytest.raises(SimulatedKill):
            export_models(clip, new_config, tmp_path, None, force=True)
    assert (old.read_bytes(), old.with_suffix(".json").read_bytes()) == old_bytes

    real_replace, moved = os.replace, []

    def kill_after_first_move(source, target):
        if ".staging" in str(source):  # the pair's moves, not the journal's own atomic write
            if moved:
                raise SimulatedKill
            moved.append(target)
        real_replace(source, target)

    name, moves = _staged_new_pair(clip, new_config, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(files.os, "replace", kill_after_first_move)
        with pytest.raises(SimulatedKill):
            files.commit_together(name, moves)
    assert list(tmp_path.glob(".*.commit.json"))
    from prtk.export.artifact import Artifact

    artifact = Artifact.read(old)  # completes the commit, then checks the sidecar against the graph
    assert artifact.description()["pruning"]["scorer"] == "fixed-random"
    assert not list(tmp_path.glob(".*.commit.json"))


def _staged_new_pair(clip, config, folder: Path):
    """Export into a scratch folder and stage that pair beside the old one, as ``export_models`` does."""
    (record,) = export_models(clip, config, folder / "scratch", None)
    staging = folder / f".{record.path.stem}.staging"
    staging.mkdir(exist_ok=True)
    staged = [Path(shutil.copy(file, staging / file.name)) for file in (record.path, record.path.with_suffix(".json"))]
    return record.path.stem, [(file, folder / file.name) for file in staged]


def test_a_real_kill_during_export_keeps_the_old_pair(shapes_export, tmp_path):
    path, _ = shapes_export
    old = copy_export(path, tmp_path)
    old_bytes = (old.read_bytes(), old.with_suffix(".json").read_bytes())
    command = [sys.executable, "-m", "prtk.cli", "export", "--model", SHAPES, "--keep", "0.6", "--scorer",
               "fixed-random", "--out", tmp_path, "--force"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".*.staging")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    from prtk.export.artifact import Artifact

    artifact = Artifact.read(old)  # consistent, whichever pair it is
    if artifact.description()["pruning"]["scorer"] == "cls-attention":
        assert (old.read_bytes(), old.with_suffix(".json").read_bytes()) == old_bytes


def test_outputs_that_are_inputs_are_refused_even_with_force(run_cli, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("make-shapes", other, "--force"), "notes.txt, which is not part of a shapes")
    assert (other / "notes.txt").read_text() == "mine"
    shapes = write_shapes_folder(tmp_path / "shapes", 10)
    assert run_cli("make-shapes", shapes, "--count", "20", "--force").exit_code == 0
    assert_one_line_error(run_cli("quickstart", "--out", other, "--force"), "which a quickstart does not write")
    checkpoint = tmp_path / "weights.safetensors"
    shutil.copy(builtin_checkpoint(SHAPES), checkpoint)
    assert_one_line_error(run_cli("eval", "--model", SHAPES, "--checkpoint", checkpoint, "--data", shapes,
                                  "--json", checkpoint, "--force"), "is the input --checkpoint")


# --- every output path is checked before the work starts ---------------------------------------------------------

def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: read-only bits, or /sys where root ignores them."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder if os.geteuid() != 0 else Path("/sys")


def test_unwritable_outputs_are_refused_before_any_work(run_cli, shapes_export, tmp_path):
    path, data = shapes_export
    blocked = unwritable_folder(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    model = ("--model", SHAPES)
    cases = [
        (("rank", *model, "--data", data, "--out", blocked / "r.prtk"), f"folder {blocked} is not writable"),
        (("rank", *model, "--data", data, "--out", a_file / "r.prtk"), f"{a_file} is a file, not a folder"),
        (("rank", *model, "--data", data, "--out", tmp_path), "output is a directory, not a file"),
        (("eval", *model, "--data", data, "--json", blocked / "e.json"), "is not writable"),
        (("export", *model, "--out", a_file), f"output folder is a file: {a_file}"),
        (("export", *model, "--out", blocked / "onnx"), "is not writable"),
        (("validate", path, "--data", data, "--report", blocked / "report"), "is not writable"),
        (("bench", *model, "--json", tmp_path), "output is a directory"),
        (("make-shapes", a_file / "x"), "is a file, not a folder"),
        (("quickstart", "--out", blocked / "q"), "is not writable"),
        (("train-testbed", SHAPES, "--out", a_file), "output folder is a file"),
        (("train", *model, "--ranking", "r.prtk", "--data", data, "--out", blocked / "p.prtk"), "is not writable"),
        (("rank", "merge", blocked / "m.prtk", "a.prtk"), "is not writable"),
    ]
    before = sorted(tmp_path.rglob("*"))
    for args, message in cases:
        assert_one_line_error(run_cli(*args), message)
        assert sorted(tmp_path.rglob("*")) == before, args  # nothing started: no lock, partial run or output


# --- bad configuration and bad weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("vision, message", [
    ({"layers": 1}, "vision_cfg.layers must be a whole number >= 2, got 1"),
    ({"width": 0}, "vision_cfg.width must be a whole number > 0, got 0"),
    ({"width": 100}, "vision_cfg.width 100 is not divisible by vision_cfg.head_width 32"),
    ({"patch_size": 128}, "vision_cfg.patch_size 128 is larger than vision_cfg.image_size 64"),
    ({"image_size": 60}, "vision_cfg.image_size 60 is not a multiple of vision_cfg.patch_size 8"),
    ({"mlp_ratio": -1}, "vision_cfg.mlp_ratio must be a number > 0"),
])
def test_impossible_model_configs_name_the_field(run_cli, shapes_export, tmp_path, vision, message):
    _, data = shapes_export
    config = json.loads((REPOSITORY / "toolkit" / "model_configs" / f"{SHAPES}.json").read_text())
    config["vision_cfg"] |= vision
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(config))
    assert_one_line_error(run_cli("eval", "--model-config", path, "--random-weights", "--data", data),
                          f"model config {path}: {message}")


def test_nan_weights_and_pickles_are_refused(run_cli, shapes_export, tmp_path):
    _, data = shapes_export
    state = {key: value.clone() for key, value in load_clip(SHAPES).model.state_dict().items()}
    state["visual.proj"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    assert_one_line_error(run_cli("eval", "--model", SHAPES, "--checkpoint", path, "--data", data),
                          "has NaN or infinite values in 1 tensors (first: visual.proj)")
    pickled = tmp_path / "pickled.pt"
    torch.save({"state": state["visual.proj"], "hook": print}, pickled)
    result = run_cli("eval", "--model", SHAPES, "--checkpoint", pickled, "--data", data)
    assert_one_line_error(result, "not a plain state dict of tensors", "prtk never unpickles")
    assert "weights_only=False" not in result.output and "add_safe_globals" not in result.output


def test_an_unknown_opset_is_one_line(run_cli, tmp_path):
    assert_one_line_error(run_cli("export", "--model", SHAPES, "--opset", "99", "--out", tmp_path / "o"),
                          "opset must be in [17, ", "got 99")


def test_a_corrupt_chunk_of_a_partial_rank_run_is_named(run_cli, shapes_export, tmp_path):
    from prtk.ranking.folder_ranking import rank_folder

    _, data = shapes_export
    out = tmp_path / "ranking.prtk"

    def kill_after_two_chunks(completed, total):
        if completed >= 16:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        rank_folder(load_clip(SHAPES), data, out, RankingConfig(layer=3, step=8), chunk=8,
                    progress=kill_after_two_chunks)
    chunk = tmp_path / ".ranking.prtk.partial" / "chunk-000001.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:100])
    args = ("rank", "--model", SHAPES, "--data", data, "--out", out, "--layer", "3", "--step", "8", "--chunk", "8",
            "--score", "label")
    assert_one_line_error(run_cli(*args), f"saved part of an interrupted run is unreadable: {chunk}", "--force")
    assert run_cli(*args, "--force").exit_code == 0


def test_dangling_symlinks_count_as_bad_images_and_empty_classes_are_reported(run_cli, shapes_export, tmp_path):
    _, data = shapes_export
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    ghost = copy / "red_circle" / "ghost.png"
    ghost.symlink_to(tmp_path / "nowhere.png")
    args = ("eval", "--model", SHAPES, "--data", copy, "--workers", "0")
    assert_one_line_error(run_cli(*args), f"cannot decode image {ghost}", "--skip-bad")
    result = run_cli(*args, "--skip-bad", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"]["skipped_bad"] == ["red_circle/ghost.png"]
    assert_one_line_error(run_cli("rank", "--model", SHAPES, "--data", copy, "--out", tmp_path / "r.prtk"),
                          f"cannot read image {ghost}")
    ghost.unlink()
    (copy / "green_star").mkdir()
    assert_one_line_error(run_cli(*args), f"class folder {copy / 'green_star'} holds no images")


# --- every tool takes your model -----------------------------------------------------------------------------------

def test_a_bench_script_runs_on_a_checkpoint_and_refuses_bad_input_in_one_line(tmp_path):
    checkpoint = tmp_path / "weights.safetensors"
    shutil.copy(builtin_checkpoint(SHAPES), checkpoint)
    script = [sys.executable, str(REPOSITORY / "bench" / "ranking_speed.py"), "--model", SHAPES, "--images", "1",
              "--runs", "1", "--layer", "2", "--vit-images", "0"]
    report = tmp_path / "speed.json"
    finished = subprocess.run([*script, "--checkpoint", checkpoint, "--json", report], capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(report.read_text())["args"]["checkpoint"] == str(checkpoint)
    for bad, message in ((["--checkpoint", tmp_path / "none.safetensors"], "checkpoint not found"),
                         (["--checkpoint", checkpoint, "--json", report], "output exists"),
                         (["--layer", "x"], "argument --layer: invalid int value")):
        finished = subprocess.run([*script, *map(str, bad)], capture_output=True, text=True, timeout=300)
        assert finished.returncode == 2 and finished.stderr.count("\n") == 1, finished.stderr
        assert finished.stderr.startswith("ranking_speed.py: error: ") and message in finished.stderr


def test_train_testbed_on_other_data_needs_a_name_of_its_own(run_cli, shapes_export, tmp_path):
    _, data = shapes_export
    assert_one_line_error(run_cli("train-testbed", "prtk-testbed-cifar10", "--train-data", data, "--test-data", data,
                                  "--out", tmp_path), "is not CIFAR-10", "pass --model-name NAME")
    assert_one_line_error(run_cli("train-testbed", SHAPES, "--model-name", "prtk-testbed-cifar10", "--out", tmp_path),
                          "is the name of a known model")
    result = run_cli("train-testbed", SHAPES, "--model-name", "my-shapes", "--out", tmp_path, "--train-count", "40",
                     "--test-count", "20", "--epochs", "1", "--batch-size", "20")
    assert result.exit_code == 0, result.output
    clip = load_clip(None, config=tmp_path / "my-shapes.json", checkpoint=tmp_path / "my-shapes.safetensors")
    card = json.loads((tmp_path / "my-shapes.card.json").read_text())
    assert clip.name == card["model"] == "my-shapes" and card["architecture"] == SHAPES
    assert clip.weights_sha256 == card["weights"]["sha256"]


def test_progress_goes_to_a_log_as_lines(shapes_export, tmp_path):
    _, data = shapes_export
    command = [sys.executable, "-m", "prtk.cli", "rank", "--model", SHAPES, "--data", data, "--out",
               tmp_path / "r.prtk", "--step", "16", "--chunk", "8"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if line.startswith(f"rank {SHAPES}: ")]
    assert lines[-1].startswith(f"rank {SHAPES}: 40/40 img (100%)") and len(lines) >= 5, finished.stderr
