"""Wall time of the unpruned vs the pruned ViT image tower on CPU, measured in one run.

    python bench/pruning_speed.py [--model ViT-B-16] [--batch 32] [--keep 0.6] [--layer 3] [--runs 5] [--json FILE]

Random weights (speed does not depend on them). Runs alternate unpruned / pruned so that machine
noise hits both alike; prints the medians and ``speedup X.XXx`` next to the cost-model bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from prtk.flops import block_cost_ratio, vision_macs
from prtk.models import load_clip
from prtk.pruning import PrunedVisionTower
from prtk.scorers import make_scorer


def seconds(forward, images) -> float:
    start = time.perf_counter()
    forward(images)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--scorer", default="cls-attention")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    clip = load_clip(args.model, random_weights=True)
    tower = PrunedVisionTower(clip.visual, args.keep, args.layer, make_scorer(args.scorer))
    size = clip.spec.image_size
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = {"unpruned": [], "pruned": []}
    with torch.inference_mode():
        clip.visual(images), tower(images)  # warm-up
        for _ in range(args.runs):
            times["unpruned"].append(seconds(clip.visual, images))
            times["pruned"].append(seconds(tower, images))
    medians = {name: statistics.median(values) for name, values in times.items()}
    speedup = medians["unpruned"] / medians["pruned"]
    bound = 1 / block_cost_ratio(clip.spec, args.keep, args.layer)
    flops_ratio = vision_macs(clip.spec) / vision_macs(clip.spec, args.keep, args.layer)
    print(f"{args.model} batch {args.batch}, layer {args.layer}, keep {args.keep} (k={tower.keep_count}), "
          f"{args.scorer}, {torch.get_num_threads()} threads, {args.runs} runs")
    for name, value in medians.items():
        print(f"  {name:9s} median {value * 1000:9.1f} ms  ({args.batch / value:6.1f} images/s)")
    print(f"speedup {speedup:.2f}x  (cost-model bound {bound:.2f}x on the blocks, {flops_ratio:.2f}x on all MACs)")
    if args.json_path:
        with open(args.json_path, "w") as stream:
            json.dump({"args": vars(args), "times_s": times, "median_s": medians, "speedup": speedup,
                       "bound": bound}, stream, indent=2)


if __name__ == "__main__":
    main()
