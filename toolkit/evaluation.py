"""Zero-shot evaluation of the unpruned and the pruned image tower in one pass over an ImageFolder."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .data import ImageFolderDataset, UnreadableImageError, class_display_name, make_loader
from .errors import PrtkInputError
from .flops import block_cost_ratio, gflops, vision_macs
from .models import LoadedClip
from .pruning import PrunedVisionTower
from .scorers import make_scorer
from .zeroshot import DEFAULT_TEMPLATES, class_embeddings, topk_correct, zero_shot_logits


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
    batch_size: int = 64
    workers: int = 1
    limit: int | None = None  # evaluate an evenly spaced subset of this many images
    skip_bad: bool = False
    device: str = "cpu"
    templates: tuple[str, ...] = DEFAULT_TEMPLATES


@dataclass
class _Tally:
    correct: dict = field(default_factory=lambda: {1: 0, 5: 0})
    seconds: float = 0.0

    def result(self, images: int, macs: float) -> dict:
        return {"top1": 100.0 * self.correct[1] / images, "top5": 100.0 * self.correct[5] / images,
                "images_per_s": images / self.seconds if self.seconds else 0.0, "gflops": gflops(macs)}


def _golden_rankings(clip: LoadedClip, dataset: ImageFolderDataset, config: EvalConfig) -> tuple[int, torch.Tensor]:
    """The ranking file's layer and its rankings [len(dataset), N] in dataset order, checked against both."""
    from .ranking_file import load_ranking, rankings_for

    if config.ranking is None:
        raise PrtkInputError("the golden scorer needs --ranking FILE (made by `prtk rank`)")
    ranking = load_ranking(config.ranking)
    layer = ranking.meta["layer"]
    if config.layer is not None and config.layer != layer:
        raise PrtkInputError(f"--layer {config.layer} differs from the ranking's layer {layer}")
    paths = [dataset.relative_path(i) for i in range(len(dataset))]
    hashes = [dataset.sha256(i) for i in range(len(dataset))]
    return layer, rankings_for(ranking, clip, paths, hashes)


def _pruned_tower(clip: LoadedClip, dataset: ImageFolderDataset,
                  config: EvalConfig) -> tuple[PrunedVisionTower, torch.Tensor | None, int]:
    """The pruned tower for ``config``, the golden rankings [I, N] it reads (golden scorer only), and the
    scorer's own MACs per image (the predictor's; the other scorers' are negligible)."""
    for option, value, scorer in (("--ranking", config.ranking, "golden"), ("--pack", config.pack, "predictor")):
        if value is not None and config.scorer != scorer:
            raise PrtkInputError(f"{option} is read only by --scorer {scorer}, got --scorer {config.scorer}")
    if config.scorer == "predictor":
        from .pack import load_pack
        from .predictor import predictor_macs

        if config.pack is None:
            raise PrtkInputError("the predictor scorer needs --pack FILE (made by `prtk train`)")
        if config.fuse_dropped:
            raise PrtkInputError("--fuse-dropped does not go with --scorer predictor (its tokens were trained without)")
        pack = load_pack(config.pack)
        if config.layer is not None and config.layer != pack.layer:
            raise PrtkInputError(f"--layer {config.layer} differs from the pack's layer {pack.layer}")
        tower = pack.tower(clip, config.keep, config.tokens)
        return tower, None, predictor_macs(clip.spec, tower.scorer.predictor.config)
    if config.scorer == "golden":
        layer, golden = _golden_rankings(clip, dataset, config)
        return PrunedVisionTower(clip.visual, config.keep, layer, make_scorer("indices"),
                                 fuse_dropped=config.fuse_dropped), golden, 0
    return PrunedVisionTower(clip.visual, config.keep, config.layer, make_scorer(config.scorer, config.seed),
                             fuse_dropped=config.fuse_dropped), None, 0


def resolve_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise PrtkInputError(f"device must be cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PrtkInputError(f"device {name} requested but CUDA is not available (torch {torch.__version__})")
    return torch.device(name)


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
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Top-1/top-5, images/s and GFLOPs of the unpruned and the pruned tower; returns the report dict.

    ``progress(completed, total)`` is called after each batch with image counts (for progress bars).
    """
    device = resolve_device(config.device)
    spec = clip.spec
    dataset = ImageFolderDataset(data_root, clip.preprocess, spec.image_size, config.limit)
    tower, golden, scorer_macs = _pruned_tower(clip, dataset, config)
    clip.model.to(device)
    tower.to(device)
    classifier = class_embeddings(clip.model, clip.tokenizer, [class_display_name(c) for c in dataset.classes],
                                  config.templates)
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
    return {
        "prtk_version": __version__,
        "model": clip.name,
        "weights": clip.weights | {"sha256": clip.weights_sha256},
        "architecture": spec.as_dict(),
        "data": {"root": str(data_root), "classes": dataset.classes, "images": evaluated,
                 "skipped_bad": skipped},
        "pruning": {"layer": tower.layer, "keep": config.keep, "keep_count": tower.keep_count,
                    "scorer": config.scorer, "seed": config.seed, "fuse_dropped": config.fuse_dropped,
                    "learnable_tokens": tower.num_learnable_tokens,
                    "block_cost_ratio": block_cost_ratio(spec, config.keep, tower.layer, tower.num_learnable_tokens,
                                                         fused=config.fuse_dropped)},
        "ranking": config.ranking,
        "pack": config.pack,
        "device": str(device),
        "config": asdict(config),
        "results": {
            "unpruned": unpruned.result(evaluated, vision_macs(spec)),
            "pruned": pruned.result(evaluated, scorer_macs + vision_macs(spec, config.keep, tower.layer,
                                                                         tower.num_learnable_tokens,
                                                                         fused=config.fuse_dropped)),
        },
    }
