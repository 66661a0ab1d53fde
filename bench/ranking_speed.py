"""Golden-ranking throughput: the fast batched search vs the naive reference, measured in one run.

    python bench/ranking_speed.py [--images 8] [--layer 3] [--runs 3] [--vit-images 1] [--json FILE]

1. The model (``--model`` and weights options as in ``prtk``; default the CIFAR-10 test bed), step 1
   (exact greedy), label score: images/s of ``GoldenRanker`` over ``--images`` images at once vs
   ``naive_ranking`` (one image, one candidate at a time, the whole tower per candidate) over one image.
   After one untimed warm-up of each, ``--runs`` runs alternate fast / naive so that machine noise hits both
   alike; prints the medians and ``speedup X.Xx``.
2. ViT-B/16 (random weights), step 4: images/s of the fast search over ``--vit-images`` images
   (one run; about 7 minutes per image on 2 CPU cores; 0 skips it).

Images are seeded noise (speed does not depend on the pixels). The process's allocator is tuned as
the ``prtk`` command line tunes it (``prtk.allocator``), for both searches.
"""

from __future__ import annotations

import statistics
import time

import torch

from script_args import add_json_arguments, add_model_arguments, check_json, load_model, parser_for, run, write_json
from prtk.core.allocator import reuse_freed_memory
from prtk.models import load_clip
from prtk.pruning.tower import PrunedVisionTower
from prtk.ranking.search import CandidateScore, GoldenRanker, RankingConfig, naive_ranking

CLASSES = 10


def ranker_parts(clip, layer: int):
    tower = PrunedVisionTower(clip.visual, 1.0, layer)
    return tower, CandidateScore.for_classes("label", clip, [f"class {i}" for i in range(CLASSES)])


def images_for(clip, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = clip.spec.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=generator), torch.arange(count) % CLASSES


def fast_rate(ranker: GoldenRanker, clip, count: int, seed: int) -> float:
    images, labels = images_for(clip, count, seed)
    start = time.perf_counter()
    ranker.rank(images, labels)
    return count / (time.perf_counter() - start)


def naive_rate(tower, score, clip, seed: int) -> float:
    images, labels = images_for(clip, 1, seed)
    start = time.perf_counter()
    naive_ranking(tower, score, images[0], int(labels[0]))
    return 1 / (time.perf_counter() - start)


def main() -> None:
    parser = parser_for(__doc__)
    add_model_arguments(parser, default_model="prtk-testbed-cifar10")
    parser.add_argument("--images", type=int, default=8, help="images per fast search")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--vit-images", type=int, default=1)
    add_json_arguments(parser)
    args = parser.parse_args()
    check_json(args)
    reuse_freed_memory()

    testbed = load_model(args)
    tower, score = ranker_parts(testbed, args.layer)
    ranker = GoldenRanker(tower, score, RankingConfig(layer=args.layer, step=1, max_batch=args.max_batch))
    rates = {"fast": [], "naive": []}
    with torch.inference_mode():
        fast_rate(ranker, testbed, args.images, seed=0), naive_rate(tower, score, testbed, seed=0)  # warm-up
        for run in range(1, args.runs + 1):
            rates["fast"].append(fast_rate(ranker, testbed, args.images, seed=run))
            rates["naive"].append(naive_rate(tower, score, testbed, seed=run))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    speedup = medians["fast"] / medians["naive"]
    print(f"{testbed.name}, layer {args.layer}, step 1, label score, {torch.get_num_threads()} threads, "
          f"{args.runs} runs")
    print(f"  fast  median {medians['fast']:8.3f} images/s ({args.images} images per run)")
    print(f"  naive median {medians['naive']:8.3f} images/s (1 image per run)")
    print(f"speedup {speedup:.1f}x")
    result = {"args": vars(args), "testbed_step1": {"images_per_s": rates, "median_images_per_s": medians,
                                                    "speedup": speedup}}
    if args.vit_images:
        vit = load_clip("ViT-B-16", random_weights=True)
        vit_tower, vit_score = ranker_parts(vit, args.layer)
        vit_ranker = GoldenRanker(vit_tower, vit_score, RankingConfig(layer=args.layer, step=4,
                                                                      max_batch=args.max_batch // 4))
        with torch.inference_mode():
            rate = fast_rate(vit_ranker, vit, args.vit_images, seed=0)
        print(f"ViT-B-16 (random weights), layer {args.layer}, step 4: fast {rate:.4f} images/s "
              f"({1 / rate:.0f} s per image, {args.vit_images} images)")
        result["vit_b16_step4"] = {"images_per_s": rate}
    write_json(args, result)


if __name__ == "__main__":
    run(main)
