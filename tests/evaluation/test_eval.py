"""`prtk eval` end to end on real files: generated shapes and the CIFAR-10 test split."""

import json

import pytest
import torch

from prtk.data.folder import ImageFolderDataset
from prtk.evaluation.accuracy import EvalConfig, evaluate
from prtk.models import load_clip
from prtk.data.synthetic import CLASSES, shape_image


def test_shapes_are_deterministic_and_balanced(shapes_dir):
    first, label = shape_image(13, seed=1, size=32)
    again, _ = shape_image(13, seed=1, size=32)
    assert label == 13 % 10 and first.tobytes() == again.tobytes()
    assert first.tobytes() != shape_image(13, seed=2, size=32)[0].tobytes()
    assert sorted(p.name for p in shapes_dir.iterdir()) == sorted(CLASSES)
    assert all(len(list((shapes_dir / c).iterdir())) == 4 for c in CLASSES)


def test_eval_cli_writes_report(run_cli, shapes_dir, tmp_path):
    report_path = tmp_path / "report.json"
    result = run_cli("eval", "--model", "prtk-tiny", "--random-weights", "--data", shapes_dir, "--keep", "0.5",
                     "--scorer", "random", "--json", report_path, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "unpruned" in result.stdout and "random" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["pruning"] == report["pruning"] | {"layer": 1, "keep": 0.5, "keep_count": 32, "scorer": "random"}
    assert report["data"]["images"] == 40 and report["data"]["classes"] == sorted(CLASSES)
    unpruned, pruned = report["results"]["unpruned"], report["results"]["pruned"]
    assert pruned["gflops"] < unpruned["gflops"]
    for result in (unpruned, pruned):
        assert 0 <= result["top1"] <= result["top5"] <= 100 and result["images_per_s"] > 0
    assert len(report["weights"]["sha256"]) == 64


def test_keep_one_gives_the_unpruned_accuracy(shapes_dir):
    clip = load_clip("prtk-tiny-avgpool", random_weights=True, seed=2)
    report = evaluate(clip, shapes_dir, EvalConfig(keep=1.0, layer=2, workers=0, batch_size=16))
    unpruned, pruned = report.unpruned, report.pruned
    assert (unpruned.top1, unpruned.top5) == (pruned.top1, pruned.top5)


def test_top1_is_counted_against_an_independent_computation(shapes_dir):
    clip = load_clip("prtk-tiny", random_weights=True, seed=4)
    report = evaluate(clip, shapes_dir, EvalConfig(keep=0.6, workers=0, batch_size=7))
    dataset = ImageFolderDataset(shapes_dir, clip.preprocess, 32)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([record.label for record in dataset.records])
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in dataset.classes]
    with torch.inference_mode():
        image = torch.nn.functional.normalize(clip.model.encode_image(images), dim=-1)
        from prtk.models.zeroshot import class_embeddings

        text = class_embeddings(clip.model, clip.tokenizer, [c.replace("_", " ") for c in dataset.classes])
        single = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer(prompts)), dim=-1)
    assert text.shape == single.shape
    expected = 100.0 * ((image @ text.T).argmax(1) == labels).float().mean().item()
    assert report.unpruned.top1 == pytest.approx(expected)


def test_eval_on_cifar10_test_split(run_cli, cifar_test_dir, tmp_path):
    report_path = tmp_path / "cifar.json"
    result = run_cli("eval", "--model", "prtk-tiny", "--random-weights", "--data", cifar_test_dir, "--limit", "1000",
                     "--keep", "0.6", "--layer", "2", "--scorer", "cls-attention", "--json", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["data"]["images"] == 1000 and len(report["data"]["classes"]) == 10
    assert report["pruning"]["keep_count"] == 38 and report["pruning"]["layer"] == 2
