"""Zero-shot evaluation of the unpruned and the pruned image tower in one pass over an ImageFolder."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from prtk.data.folder import ImageFolderDataset, UnreadableImageError, class_display_name, make_loader
from prtk.core.devices import resolve_device
from prtk.core.errors import PrtkInputError
from prtk.pruning.cost import gflops, vision_macs
from prtk.pruning.facts import PruningFacts, tower_macs
from prtk.models import LoadedClip
from prtk.pruning.tower import PrunedVisionTower
from prtk.evaluation.report import EvalReport, TowerAccuracy
from prtk.pruning.spec import TowerSpec, build_tower
from prtk.models.zeroshot import DEFAULT_TEMPLATES, class_embeddings, topk_correct, zero_shot_logits


@dataclass
class EvalConfig:
    """How to prune and how to read the data."""

    keep: float = 0.6
    layer: int | None = None  # None: L // 4
    scorer: str = "cls-attention"  # or random, golden (needs ranking), predictor (needs pack)
    ranking: str | None = None  # ranking file for the golden scorer
    pack: str | None = None  # ranker pack for the predictor scorer
    tokens: bool = True  # with the predictor: append the pack's learnable tokens for this keep ratio
    seed: int = 0
    fuse_dropped: bool = False
    later_stages: tuple[tuple[int, float], ...] = ()  # (block, keep) stages after the first
    stage_scorer: str = "cls-attention"  # what ranks the patches at the later stages (or elip)
    batch_size: int = 64
    workers: int = 1
    limit: int | None = None  # evaluate an evenly spaced subset of this many images
    skip_bad: bool = False
    device: str = "cpu"
    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    @property
    def tower_spec(self) -> TowerSpec:
        return TowerSpec(keep=self.keep, scorer=self.scorer, layer=self.layer, tokens=self.tokens,
                         fuse_dropped=self.fuse_dropped, seed=self.seed, later_stages=self.later_stages,
                         stage_scorer=self.stage_scorer)


@dataclass
class _Tally:
    correct: dict = field(default_factory=lambda: {1: 0, 5: 0})
    seconds: float = 0.0

    def result(self, images: int, macs: float) -> TowerAccuracy:
        return TowerAccuracy(top1=100.0 * self.correct[1] / images, top5=100.0 * self.correct[5] / images,
                             images_per_s=images / self.seconds if self.seconds else 0.0, gflops=gflops(macs))


def _golden_rankings(clip: LoadedClip, dataset: ImageFolderDataset, config: EvalConfig) -> tuple[int, torch.Tensor]:
    """The ranking file's layer and its rankings [len(dataset), N] in dataset order, checked against both."""
    from prtk.ranking.file import load_ranking, rankings_for

    if config.ranking is None:
        raise PrtkInputError("the golden scorer needs --ranking FILE (made by `prtk rank`)")
    ranking = load_ranking(config.ranking)
    paths = [dataset.relative_path(i) for i in range(len(dataset))]
    hashes = [dataset.sha256(i) for i in range(len(dataset))]
    return ranking.meta["layer"], rankings_for(ranking, clip, paths, hashes)


def _pruned_tower(clip: LoadedClip, dataset: ImageFolderDataset, config: EvalConfig,
                  classifier: torch.Tensor) -> tuple[PrunedVisionTower, torch.Tensor | None, int]:
    """The pruned tower for ``config`` (``classifier`` [C,E]: the language side of an ELIP stage), the golden
    rankings [I, N] it reads (golden scorer only), and the scorer's own MACs per image (the predictor's; the
    other scorers' are negligible)."""
    if config.ranking is not None and config.scorer != "golden":
        raise PrtkInputError(f"--ranking is read only by --scorer golden, got --scorer {config.scorer}")
    spec = config.tower_spec
    spec.check_source(config.pack is not None)
    if config.scorer == "golden":
        layer, golden = _golden_rankings(clip, dataset, config)
        return build_tower(clip, spec.at_layer_of(layer, "ranking"), None, classifier), golden, 0
    if config.pack is None:
        return build_tower(clip, spec, None, classifier), None, 0
    from prtk.predictor.model import predictor_macs
    from prtk.predictor.pack import load_pack

    tower = build_tower(clip, spec, load_pack(config.pack), classifier)
    return tower, None, predictor_macs(clip.spec, tower.scorer.predictor.config)


def _timed(forward: Callable, images: torch.Tensor) -> tuple[torch.Tensor, float]:
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    start = time.perf_counter()
    output = forward(images)
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    return output, time.perf_counter() - start


@torch.inference_mode()
def evaluate(clip: LoadedClip, data_root: str | Path, config: EvalConfig,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Top-1/top-5, images/s and GFLOPs of the unpruned and the pruned tower.

    ``progress(completed, total)`` is called after each batch with image counts (for progress bars).
    """
    device = resolve_device(config.device)
    spec = clip.spec
    dataset = ImageFolderDataset(data_root, clip.preprocess, spec.image_size, config.limit)
    clip.model.to(device)
    classifier = class_embeddings(clip.model, clip.tokenizer, [class_display_name(c) for c in dataset.classes],
                                  config.templates)
    tower, golden, scorer_macs = _pruned_tower(clip, dataset, config, classifier)
    tower.to(device)
    unpruned, pruned, skipped, warmed_up, completed = _Tally(), _Tally(), [], False, 0
    for images, labels, indices, errors in make_loader(dataset, config.batch_size, config.workers):
        unreadable = [i for i, error in enumerate(errors) if error]
        for i in unreadable:
            if not config.skip_bad:
                raise UnreadableImageError(f"cannot decode image {dataset.records[int(indices[i])].path}: "
                                           f"{errors[i]}")
            skipped.append(dataset.relative_path(int(indices[i])))
        if unreadable:
            readable = torch.tensor([not error for error in errors])
            images, labels, indices = images[readable], labels[readable], indices[readable]
        if len(labels):
            images, labels = images.to(device), labels.to(device)
            pruned_forward = (tower if golden is None
                              else functools.partial(tower, rankings=golden[indices].to(device)))
            if not warmed_up:  # first calls allocate and pick kernels: keep them out of the timings
                clip.visual(images), pruned_forward(images)
                warmed_up = True
            for tally, forward in ((unpruned, clip.visual), (pruned, pruned_forward)):
                embeddings, seconds = _timed(forward, images)
                tally.seconds += seconds
                for k, hits in topk_correct(zero_shot_logits(embeddings, classifier), labels).items():
                    tally.correct[k] += hits
        completed += len(errors)
        if progress is not None:
            progress(completed, len(dataset))
    evaluated = len(dataset) - len(skipped)
    if evaluated == 0:
        raise PrtkInputError(f"no readable images in {data_root}: all {len(dataset)} failed to decode")
    return EvalReport(
        model=clip.name, weights=clip.weights | {"sha256": clip.weights_sha256}, architecture=spec.as_dict(),
        data_root=str(data_root), classes=dataset.classes, images=evaluated, skipped_bad=skipped,
        pruning=PruningFacts.of(tower, config.scorer, config.seed),
        ranking=config.ranking, pack=config.pack, device=str(device), config=asdict(config),
        unpruned=unpruned.result(evaluated, vision_macs(spec)),
        pruned=pruned.result(evaluated, scorer_macs + tower_macs(tower)))
