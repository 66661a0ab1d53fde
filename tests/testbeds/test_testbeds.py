"""The test-bed CLIPs: the training script end to end on a tiny run, and the shipped checkpoints' accuracy."""

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error
from prtk.testbeds.clip_training import ClipTrainConfig, caption_contrastive_loss
from prtk.models import load_clip
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder
from prtk.testbeds.recipes import RECIPES, build_testbed

CHECKPOINTS = Path(str(resources.files("prtk.checkpoints")))
TINY_RUN = ("--train-count", "64", "--test-count", "20", "--epochs", "2", "--batch-size", "32")


def card(name: str) -> dict:
    return json.loads((CHECKPOINTS / f"{name}.card.json").read_text())


def test_caption_loss_rewards_matching_captions():
    text = torch.eye(4, 8)  # [C=4, E=8]
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    matching = text[labels] + 0.1 * torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    scale = torch.tensor(2.0)
    aligned = caption_contrastive_loss(matching, text, labels, scale)
    shuffled = caption_contrastive_loss(matching, text, labels.roll(1), scale)
    assert aligned < shuffled
    assert aligned > 0 and torch.isfinite(shuffled)
    logits = scale.exp() * F.normalize(matching, dim=-1) @ text.T
    assert caption_contrastive_loss(matching, text, labels, scale) >= F.cross_entropy(logits, labels) / 2


def test_tiny_training_run_end_to_end(run_cli, tmp_path):
    out = tmp_path / "beds"
    result = run_cli("train-testbed", "prtk-testbed-shapes", "--out", out, *TINY_RUN)
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.stderr and "zero-shot top-1" in result.stdout
    weights, card_path = out / "prtk-testbed-shapes.safetensors", out / "prtk-testbed-shapes.card.json"
    written = json.loads(card_path.read_text())
    assert written["command"].startswith("prtk train-testbed prtk-testbed-shapes --out")
    assert written["epochs"] == 2 and written["seed"] == 0 and len(written["history"]) == 2
    assert written["data"]["train"]["images"] == 64 and len(written["data"]["train"]["sha256"]) == 64
    assert written["accuracy"]["held_out_images"] == 20
    assert weights.stat().st_size <= 15 * 2**20
    clip = load_clip("prtk-testbed-shapes", checkpoint=weights)
    assert clip.weights_sha256 == written["weights"]["sha256"]
    assert not (out / ".prtk-testbed-shapes.work").exists()
    again = run_cli("train-testbed", "prtk-testbed-shapes", "--out", out, *TINY_RUN)
    assert again.exit_code == 2 and "output exists" in again.stderr


class SimulatedKill(Exception):
    pass


def test_training_is_deterministic_and_resumes_after_a_kill(tmp_path):
    config = ClipTrainConfig(epochs=2, batch_size=32)
    tiny = {"config": config, "train_count": 64, "test_count": 20}
    straight = build_testbed("prtk-testbed-shapes", tmp_path / "straight", **tiny)

    def kill_after_first_epoch(record):
        if record["epoch"] == 1:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        build_testbed("prtk-testbed-shapes", tmp_path / "resumed", on_epoch=kill_after_first_epoch, **tiny)
    assert (tmp_path / "resumed" / ".prtk-testbed-shapes.work" / "state.pt").exists()
    resumed = build_testbed("prtk-testbed-shapes", tmp_path / "resumed", **tiny)
    assert resumed["weights"]["sha256"] == straight["weights"]["sha256"]

    def without_times(history):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in history]

    assert without_times(resumed["history"]) == without_times(straight["history"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_checkpoint_and_card(name):
    written = card(name)
    weights = CHECKPOINTS / f"{name}.safetensors"
    assert weights.stat().st_size <= 15 * 2**20 and written["weights"]["bytes"] == weights.stat().st_size
    assert written["command"].startswith(f"prtk train-testbed {name} ")
    assert written["seed"] == 0 and written["epochs"] >= 1 and written["wall_time_s"] > 0
    assert len(written["data"]["train"]["sha256"]) == 64
    clip = load_clip(name)  # no weights flag: the shipped file
    assert clip.weights == {"source": "built-in", "file": weights.name}
    assert clip.weights_sha256 == written["weights"]["sha256"]


def test_models_lists_the_test_beds_with_shipped_weights(run_cli):
    listing = json.loads(run_cli("models", "--json").stdout)
    assert listing["shipped_weights"] == sorted(RECIPES)
    assert set(RECIPES) <= set(listing["builtin"])


@pytest.fixture(scope="module")
def shapes_held_out(tmp_path_factory) -> Path:
    images = card("prtk-testbed-shapes")["accuracy"]["held_out_images"]
    return write_shapes_folder(tmp_path_factory.mktemp("held-out") / "shapes", images, HELD_OUT_SEED, size=64)


def _eval(run_cli, tmp_path, name, data, *options) -> dict:
    report = tmp_path / "report.json"
    result = run_cli("eval", "--model", name, "--data", data, "--limit", "1000", "--json", report, *options)
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


@pytest.mark.parametrize("name, data_fixture, minimum", [("prtk-testbed-cifar10", "cifar_test_dir", 60.0),
                                                         ("prtk-testbed-shapes", "shapes_held_out", 95.0)])
def test_testbed_reproduces_its_accuracy_and_patches_matter(run_cli, request, tmp_path, name, data_fixture, minimum):
    recorded = card(name)["accuracy"]
    assert recorded["top1"] >= minimum
    data = request.getfixturevalue(data_fixture)
    random = _eval(run_cli, tmp_path, name, data, "--scorer", "random", "--keep", "0.3")
    unpruned = random["results"]["unpruned"]["top1"]
    assert unpruned == pytest.approx(recorded["subset"]["top1"], abs=0.5)
    assert random["results"]["pruned"]["top1"] < unpruned - 5
    attention = _eval(run_cli, tmp_path, name, data, "--keep", "0.6", "--force")
    assert attention["results"]["pruned"]["top1"] > random["results"]["pruned"]["top1"]


@pytest.mark.parametrize("args, message", [
    (("prtk-testbed-shapes", "--epochs", "0"), "epochs must be at least 1, got 0"),
    (("prtk-testbed-shapes", "--train-count", "5"), "count must be at least 10"),
    (("prtk-testbed-shapes", "--train-data", "somewhere"), "generates its own data"),
    (("prtk-testbed-cifar10",), "needs --train-data DIR and --test-data DIR"),
    (("prtk-testbed-cifar10", "--train-data", "missing", "--test-data", "missing"), "data folder not found: missing"),
])
def test_bad_training_input_is_one_line(run_cli, tmp_path, args, message):
    assert_one_line_error(run_cli("train-testbed", *args, "--out", tmp_path), message)
