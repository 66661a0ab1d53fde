"""The golden ranking: fast == naive, permutations, the file, resume, shards, torchrun, golden eval."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SimulatedKill, assert_one_line_error
from prtk.core.files import output_lock
from prtk.data.tensors import Normalizer
from prtk.data.tensors import generate_shapes
from prtk.models import load_clip
from prtk.pruning.tower import PrunedVisionTower
from prtk.ranking.search import CandidateScore, GoldenRanker, RankingConfig, naive_ranking
from prtk.ranking.file import load_ranking
from prtk.data.synthetic import HELD_OUT_SEED, write_shapes_folder
from prtk.models.zeroshot import class_embeddings


def float64_clip(name: str):
    """A model in float64, so that batched and one-at-a-time passes give the same ordering."""
    clip = load_clip(name, random_weights=name == "prtk-tiny-avgpool")
    clip.model.double()
    return clip


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory):
    """40 held-out images at the shapes test bed's input size."""
    return write_shapes_folder(tmp_path_factory.mktemp("rank") / "shapes", 40, HELD_OUT_SEED, size=64)


# layer 3 of 6: block l, a middle block and a CLS-only last block; layer 5: block l is the last block;
# prtk-tiny-avgpool (average pooling): every block on every token.
@pytest.mark.parametrize("model, layer, score, step, min_keep, count", [
    ("prtk-testbed-shapes", 3, "label", 1, None, 1),
    ("prtk-testbed-shapes", 3, "label", 4, 0.5, 2),
    ("prtk-testbed-shapes", 3, "confidence", 4, 0.5, 2),
    ("prtk-testbed-shapes", 3, "similarity", 4, 0.5, 2),
    ("prtk-testbed-shapes", 5, "label", 4, 0.5, 2),
    ("prtk-tiny-avgpool", 2, "confidence", 4, 0.5, 2),
])
def test_fast_search_equals_the_naive_reference(model, layer, score, step, min_keep, count):
    clip = float64_clip(model)
    data = generate_shapes(10, HELD_OUT_SEED, 64)
    images, labels = Normalizer(clip)(data.images[:count].double() / 255), data.labels[:count]
    tower = PrunedVisionTower(clip.visual, 1.0, layer=layer)
    classifier = class_embeddings(clip.model, clip.tokenizer, data.classes)
    scorer = CandidateScore(score, classifier, 100.0)
    config = RankingConfig(layer=layer, score=score, step=step, min_keep=min_keep, max_batch=300)
    fast = GoldenRanker(tower, scorer, config).rank(images, labels)
    naive = [naive_ranking(tower, scorer, images[i], int(labels[i]), step, min_keep) for i in range(count)]
    assert fast.order.tolist() == [order for order, _ in naive]
    assert torch.allclose(fast.scores, torch.tensor([scores for _, scores in naive], dtype=torch.float64),
                          rtol=1e-9, atol=0)
    for row in fast.order:
        assert sorted(row.tolist()) == list(range(64))


def rank_args(data, out, *extra):
    return ["rank", "--model", "prtk-testbed-shapes", "--data", data, "--out", out, "--layer", "3", "--step", "8",
            "--chunk", "8", *extra]


def test_rank_cli_writes_a_self_describing_file(run_cli, shapes64, tmp_path):
    out = tmp_path / "ranking.prtk"
    result = run_cli(*rank_args(shapes64, out))
    assert result.exit_code == 0, result.output
    ranking = load_ranking(out)
    assert ranking.tensors["order"].shape == (len(ranking.images), 64)
    assert ranking.meta | {"layer": 3, "step": 8, "score": "label", "model": "prtk-testbed-shapes"} == ranking.meta
    assert all(len(image["sha256"]) == 64 for image in ranking.images)
    again = run_cli(*rank_args(shapes64, out))
    assert_one_line_error(again, "output exists")


def test_resume_after_a_kill_gives_the_same_file(shapes64, tmp_path):
    from prtk.ranking.folder_ranking import rank_folder

    clip = load_clip("prtk-testbed-shapes")
    config = RankingConfig(layer=3, step=8)
    straight = tmp_path / "straight.prtk"
    rank_folder(clip, shapes64, straight, config, chunk=8)

    def kill_after_two_chunks(completed, total):
        if completed >= 16:
            raise SimulatedKill

    resumed = tmp_path / "resumed.prtk"
    with pytest.raises(SimulatedKill):
        rank_folder(clip, shapes64, resumed, config, chunk=8, progress=kill_after_two_chunks)
    assert not resumed.exists() and len(list((tmp_path / ".resumed.prtk.partial").glob("chunk-*"))) == 2
    rank_folder(clip, shapes64, resumed, config, chunk=8)
    assert resumed.read_bytes() == straight.read_bytes()


def test_shards_merge_into_the_single_run_file(run_cli, shapes64, tmp_path):
    whole = tmp_path / "whole.prtk"
    assert run_cli(*rank_args(shapes64, whole)).exit_code == 0
    parts = [tmp_path / f"part{i}.prtk" for i in range(6)]  # 5 chunks of 8 images: the last part is empty
    for i, part in enumerate(parts):
        assert run_cli(*rank_args(shapes64, part, "--shard", f"{i}/6")).exit_code == 0
    assert load_ranking(parts[-1]).tensors["order"].dtype == torch.int32
    merged = tmp_path / "merged.prtk"
    assert run_cli("rank", "merge", merged, *parts).exit_code == 0
    assert merged.read_bytes() == whole.read_bytes()
    assert_one_line_error(run_cli("rank", "merge", tmp_path / "m2.prtk", *parts[:2]), "images are in no shard")


def test_a_second_run_on_the_same_output_is_refused(run_cli, shapes64, tmp_path):
    """Two --shard runs given one --out would share a partial folder and overwrite each other's file."""
    out, pack = tmp_path / "shared.prtk", tmp_path / "pack.prtk"
    with output_lock(out):
        assert_one_line_error(run_cli(*rank_args(shapes64, out, "--shard", "1/2")), "another process is writing",
                              str(out))
    assert run_cli(*rank_args(shapes64, out)).exit_code == 0
    assert not (tmp_path / ".shared.prtk.lock").exists()
    with output_lock(pack):
        assert_one_line_error(run_cli("train", "--model", "prtk-testbed-shapes", "--ranking", out, "--data", shapes64,
                                      "--out", pack, "--tokens", "0"), "another process is writing", str(pack))


def test_torchrun_two_processes_write_the_single_run_file(run_cli, shapes64, tmp_path):
    """Given the same --threads, two torchrun processes write the single run's bytes, although torchrun starts
    them with OMP_NUM_THREADS=1 (it sets that when the variable is unset, as here)."""
    whole = tmp_path / "whole.prtk"
    assert run_cli(*rank_args(shapes64, whole, "--threads", "2")).exit_code == 0
    out = tmp_path / "distributed.prtk"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               "-m", "prtk.cli", *map(str, rank_args(shapes64, out, "--threads", "2"))]
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert out.read_bytes() == whole.read_bytes()


def test_golden_eval_refuses_another_model_or_other_images(run_cli, shapes64, tmp_path):
    out = tmp_path / "ranking.prtk"
    assert run_cli(*rank_args(shapes64, out)).exit_code == 0
    result = run_cli("eval", "--model", "prtk-testbed-shapes", "--random-weights", "--data", shapes64,
                     "--scorer", "golden", "--ranking", out)
    assert_one_line_error(result, "ranking was made for prtk-testbed-shapes with weights")
    report = tmp_path / "golden.json"
    result = run_cli("eval", "--model", "prtk-testbed-shapes", "--data", shapes64, "--scorer", "golden",
                     "--ranking", out, "--keep", "0.6", "--json", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["pruning"]["layer"] == 3
    result = run_cli("eval", "--model", "prtk-testbed-shapes", "--data", shapes64, "--scorer", "random",
                     "--ranking", out)
    assert_one_line_error(result, "--ranking is read only by --scorer golden, got --scorer random")
    edited = tmp_path / "edited"
    shutil.copytree(shapes64, edited)
    image = sorted(edited.rglob("*.png"))[5]
    pixels = np.array(Image.open(image))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    result = run_cli("eval", "--model", "prtk-testbed-shapes", "--data", edited, "--scorer", "golden", "--ranking", out)
    assert_one_line_error(result, f"image {image.relative_to(edited)} differs from the one that was ranked")


def test_label_oracle_keeps_the_cifar10_accuracy(run_cli, cifar_test_dir, tmp_path):
    out = tmp_path / "cifar.prtk"
    result = run_cli("rank", "--model", "prtk-testbed-cifar10", "--data", cifar_test_dir, "--out", out, "--limit",
                     "200", "--layer", "3", "--step", "4", "--min-keep", "0.5")
    assert result.exit_code == 0, result.output
    reports = {}
    for scorer, extra in (("golden", ["--ranking", out]), ("random", [])):
        path = tmp_path / f"{scorer}.json"
        assert run_cli("eval", "--model", "prtk-testbed-cifar10", "--data", cifar_test_dir, "--limit", "200",
                       "--layer", "3", "--keep", "0.6", "--scorer", scorer, *extra, "--json", path).exit_code == 0
        reports[scorer] = json.loads(path.read_text())["results"]
    assert reports["golden"]["pruned"]["top1"] >= reports["golden"]["unpruned"]["top1"] - 0.5
    assert reports["golden"]["pruned"]["top1"] > reports["random"]["pruned"]["top1"] + 5
