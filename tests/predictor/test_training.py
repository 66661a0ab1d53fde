"""The predictor, its losses and metrics, learnable tokens, `prtk train`, the pack, and `--scorer predictor`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error
from prtk.pruning.spec import TowerSpec, build_tower
from prtk.models import load_clip
from prtk.predictor.pack import load_pack
from prtk.predictor.losses import keep_set_kl, list_mle
from prtk.predictor.metrics import kendall_tau, top_k_overlap
from prtk.predictor.model import PredictorConfig, TokenRankPredictor, predictor_cost
from prtk.pruning.tower import PrunedVisionTower
from prtk.predictor.training import TokenHead, TrainConfig, ranked_images, train_pack
from prtk.ranking.file import load_ranking
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder
from prtk.models.zeroshot import class_embeddings

MODEL = "prtk-testbed-shapes"


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    """60 shapes images at the test bed's input size and their golden ranking at layer 3: (data dir, ranking)."""
    from click.testing import CliRunner

    from prtk.cli import cli

    root = tmp_path_factory.mktemp("train")
    data = write_shapes_folder(root / "shapes", 60, HELD_OUT_SEED, size=64)
    ranking = root / "ranking.prtk"
    result = CliRunner().invoke(cli, ["rank", "--model", MODEL, "--data", str(data), "--out", str(ranking),
                                      "--layer", "3", "--step", "8", "--chunk", "20"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data, ranking


def train_args(data, ranking, out, *extra):
    return ["train", "--model", MODEL, "--ranking", ranking, "--data", data, "--out", out, "--keep", "0.5,0.6",
            "--tokens", "2", "--predictor-epochs", "3", "--token-epochs", "2", "--batch-size", "16", *extra]


def test_metrics_on_known_orders():
    order = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    perfect = torch.empty(3, 10).scatter_(1, order, torch.arange(10, 0, -1).float().expand(3, -1))
    assert torch.equal(top_k_overlap(perfect, order, 0.6), torch.ones(3))
    assert torch.allclose(kendall_tau(perfect, order), torch.ones(3))
    assert torch.allclose(kendall_tau(-perfect, order), -torch.ones(3))
    assert torch.equal(top_k_overlap(-perfect, order, 0.5), torch.zeros(3))
    assert list_mle(perfect * 100, order) < list_mle(-perfect * 100, order)
    assert keep_set_kl(perfect * 100, order, (0.5,)) < keep_set_kl(-perfect * 100, order, (0.5,))


@pytest.mark.parametrize("model", [MODEL, "prtk-testbed-cifar10"])
def test_predictor_costs_under_one_percent_of_the_tower(model):
    clip = load_clip(model)
    cost = predictor_cost(TokenRankPredictor(clip.spec, PredictorConfig.for_spec(clip.spec)), clip.visual, clip.spec)
    assert 0 < cost["params_ratio"] <= 0.01 and 0 < cost["macs_ratio"] <= 0.01, cost


@pytest.mark.parametrize("loss", ["kl", "listmle"])
def test_predictor_loss_decreases_on_a_fixed_batch(ranked, loss):
    data, ranking = ranked
    clip = load_clip(MODEL)
    tower = PrunedVisionTower(clip.visual, 1.0, 3)
    batch = ranked_images(clip, load_ranking(ranking), data, tower, torch.device("cpu"))
    torch.manual_seed(0)
    predictor = TokenRankPredictor(clip.spec, PredictorConfig.for_spec(clip.spec))
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=3e-3)

    def step() -> float:
        scores = predictor(batch.tokens[:16])
        orders = batch.orders[:16]
        value = keep_set_kl(scores, orders, (0.5, 0.6)) if loss == "kl" else list_mle(scores, orders)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        return value.item()

    losses = [step() for _ in range(40)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_token_loss_decreases_on_a_fixed_batch(ranked):
    data, ranking = ranked
    clip = load_clip(MODEL)
    ranking_file = load_ranking(ranking)
    batch = ranked_images(clip, ranking_file, data, PrunedVisionTower(clip.visual, 1.0, 3), torch.device("cpu"))
    clip.model.requires_grad_(False)
    tower = PrunedVisionTower(clip.visual, 0.2, 3, num_learnable_tokens=4)
    kept = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:tower.keep_count].sort().values
    selected = tower.select(batch.tokens[:16], kept.expand(16, -1))
    classifier = class_embeddings(clip.model, clip.tokenizer, ranking_file.meta["classes"]).clone()
    head = TokenHead(tower, classifier, 100.0)
    optimizer = torch.optim.AdamW([tower.learnable_tokens], lr=3e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(head(selected), batch.labels[:16])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_train_writes_a_pack_that_round_trips_and_evaluates(run_cli, ranked, tmp_path):
    data, ranking = ranked
    out = tmp_path / "pack.prtk"
    result = run_cli(*train_args(data, ranking, out, "--json", tmp_path / "pack.json"))
    assert result.exit_code == 0, result.output
    pack = load_pack(out)
    assert pack.layer == 3 and pack.keeps == [0.5, 0.6] and pack.num_tokens == 2
    assert set(pack.tokens) == {0.5, 0.6} and pack.tokens[0.6].shape == (2, 128)
    assert set(pack.meta["metrics"]["predictor"]["top_k_overlap"]) == {"0.5", "0.6"}
    assert pack.meta["training_data"]["images"] == 60 and len(pack.meta["training_data"]["sha256"]) == 64
    again = tmp_path / "again.prtk"
    assert run_cli(*train_args(data, ranking, again)).exit_code == 0
    assert again.read_bytes() == out.read_bytes()  # same inputs, same pack
    clip = load_clip(MODEL)
    tower = build_tower(clip, TowerSpec(0.6, "predictor"), pack)
    assert torch.equal(tower.learnable_tokens, pack.tokens[0.6])
    assert torch.equal(tower.scorer.predictor.state_dict()["score.weight"], pack.predictor["score.weight"])
    for extra in ([], ["--no-tokens"]):
        result = run_cli("eval", "--model", MODEL, "--data", data, "--scorer", "predictor", "--pack", out,
                         "--keep", "0.6", "--json", "-", *extra)
        assert result.exit_code == 0, result.output
    assert_one_line_error(run_cli(*train_args(data, ranking, out)), "output exists")


def test_pack_is_refused_for_another_model_or_a_missing_keep(run_cli, ranked, tmp_path):
    data, ranking = ranked
    out = tmp_path / "pack.prtk"
    assert run_cli(*train_args(data, ranking, out, "--tokens", "1")).exit_code == 0
    evaluate = ["eval", "--data", data, "--scorer", "predictor", "--pack", out]
    assert_one_line_error(run_cli(*evaluate, "--model", MODEL, "--random-weights"), "pack was made for",
                          "(--random-weights --seed 0); it was made with the shipped weights (no weights option)")
    assert_one_line_error(run_cli(*evaluate, "--model", "prtk-testbed-cifar10"), "pack was made for")
    assert_one_line_error(run_cli(*evaluate, "--model", MODEL, "--keep", "0.7"), "pack has tokens for keep 0.5, 0.6")
    assert run_cli(*evaluate, "--model", MODEL, "--keep", "0.7", "--no-tokens").exit_code == 0
    assert_one_line_error(run_cli(*evaluate, "--model", MODEL, "--layer", "2"), "differs from the pack's layer 3")
    assert_one_line_error(run_cli("eval", "--model", MODEL, "--data", data, "--pack", out),
                          "--pack is read only by --scorer predictor")
    assert_one_line_error(run_cli("eval", "--model", MODEL, "--data", data, "--scorer", "predictor", "--pack", ranking),
                          "is not a prtk ranker pack")
    assert_one_line_error(run_cli("train", "--model", MODEL, "--random-weights", "--ranking", ranking, "--data", data,
                                  "--out", tmp_path / "other.prtk"), "ranking was made for",
                          "it was made with the shipped weights")
    assert_one_line_error(run_cli(*train_args(data, ranking, ranking, "--force")), "is the input --ranking")
    assert_one_line_error(run_cli(*train_args(data, ranking, tmp_path / "k.prtk", "--keep", "0.5,1.5")),
                          "keep ratio must be in (0, 1], got 1.5")


class SimulatedKill(Exception):
    pass


def test_training_resumes_after_a_kill(ranked, tmp_path):
    data, ranking = ranked
    config = TrainConfig(keeps=(0.6,), num_tokens=2, predictor_epochs=3, token_epochs=2, batch_size=16)
    straight = tmp_path / "straight.prtk"
    train_pack(load_clip(MODEL), ranking, data, straight, config)

    def kill_in_the_token_stage(done, total):
        if done == total - 2:
            raise SimulatedKill

    resumed = tmp_path / "resumed.prtk"
    with pytest.raises(SimulatedKill):
        train_pack(load_clip(MODEL), ranking, data, resumed, config, progress=kill_in_the_token_stage)
    assert not resumed.exists() and (tmp_path / ".resumed.prtk.partial" / "predictor.pt").exists()
    train_pack(load_clip(MODEL), ranking, data, resumed, config)
    assert resumed.read_bytes() == straight.read_bytes()


def test_torchrun_two_processes_train_with_ddp(ranked, tmp_path):
    data, ranking = ranked
    single = tmp_path / "single.prtk"
    train_pack(load_clip(MODEL), ranking, data, single,
               TrainConfig(keeps=(0.5, 0.6), num_tokens=2, predictor_epochs=3, token_epochs=2, batch_size=16))
    out = tmp_path / "ddp.prtk"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518",
               "-m", "prtk.cli", *map(str, train_args(data, ranking, out))]
    finished = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
                              timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    ddp, reference = load_pack(out), load_pack(single)
    # Each process takes half of every batch and DDP averages the gradients: the single-process run up to
    # rounding. Scores are compared up to a per-image constant, which softmax ignores, so weights that only
    # shift all scores get no gradient and Adam turns their rounding noise into steps of lr.
    clip = load_clip(MODEL)
    tokens = ranked_images(clip, load_ranking(ranking), data, PrunedVisionTower(clip.visual, 1.0, 3),
                           torch.device("cpu")).tokens
    centred = [(s - s.mean(dim=1, keepdim=True)) for s in (p.build_predictor(clip)(tokens) for p in (ddp, reference))]
    assert torch.allclose(*centred, atol=1e-5), (centred[0] - centred[1]).abs().max()
    assert torch.allclose(ddp.tokens[0.6], reference.tokens[0.6], atol=1e-4)
