"""Wall time of the unpruned vs the pruned ViT image tower on CPU, measured in one run.

    python bench/pruning_speed.py [--model ViT-B-16] [--batch 32] [--keep 0.6] [--layer 3] [--runs 5] [--json FILE]

Seeded random weights unless a weights option is given (speed does not depend on them). Runs alternate
unpruned / pruned so that machine noise hits both alike; prints the medians and ``speedup X.XXx`` next to the cost-model bound.
"""

from __future__ import annotations

import torch

from bench_cli import check_json, load_model, run
from prtk.pruning.spec import BASELINE_SCORERS, TowerSpec, build_tower
from speed_report import report_speedup, seconds, speed_arguments


def main() -> None:
    parser = speed_arguments(__doc__)
    parser.add_argument("--scorer", default="cls-attention", choices=[s for s in BASELINE_SCORERS if s != "elip"])
    args = parser.parse_args()
    check_json(args)

    clip = load_model(args, random_by_default=True)
    tower = build_tower(clip, TowerSpec(keep=args.keep, scorer=args.scorer, layer=args.layer))
    size = clip.spec.image_size
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = {"unpruned": [], "pruned": []}
    with torch.inference_mode():
        clip.visual(images), tower(images)  # warm-up
        for _ in range(args.runs):
            times["unpruned"].append(seconds(clip.visual, images))
            times["pruned"].append(seconds(tower, images))
    report_speedup(f"{args.model} batch {args.batch}, layer {args.layer}, keep {args.keep} (k={tower.keep_count}), "
                   f"{args.scorer}, {torch.get_num_threads()} threads, {args.runs} runs", times, clip.spec, args.keep,
                   args.layer, args.batch, args, vars(args))


if __name__ == "__main__":
    run(main)
