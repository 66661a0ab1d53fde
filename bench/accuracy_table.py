"""Zero-shot top-1 of every pruning method at several keep ratios, measured in one run.

    python bench/accuracy_table.py --pack pack.prtk --ranking test-ranking.prtk --data DIR [--limit 1000]
                                   [--keeps 0.5,0.6,0.7] [--json FILE]

Rows: unpruned, random, cls-attention, golden (the ranking of the evaluated images: an oracle), predictor
(the pack's, without tokens), predictor + tokens; columns: keep ratios; cells: top-1 %. A last row gives
the GFLOPs of the predictor + tokens tower (predictor included). The model and the pruning layer are the
pack's; every cell comes from ``prtk.evaluation.evaluate`` on the same images. For the CIFAR-10 test
bed the pack is trained on rankings of the train split and the table is measured on the test split.
"""

from __future__ import annotations

import argparse
import json

from prtk.console import print_table
from prtk.evaluation import EvalConfig, evaluate
from prtk.models import load_clip
from prtk.pack import load_pack

def methods(pack: str, ranking: str) -> list[tuple[str, dict]]:
    """(row label, EvalConfig fields) of each pruning method."""
    return [("random", {"scorer": "random"}),
            ("cls-attention", {"scorer": "cls-attention"}),
            ("golden", {"scorer": "golden", "ranking": ranking}),
            ("predictor", {"scorer": "predictor", "pack": pack, "tokens": False}),
            ("predictor + tokens", {"scorer": "predictor", "pack": pack, "tokens": True})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", required=True, help="ranker pack from `prtk train`")
    parser.add_argument("--ranking", required=True, help="golden ranking of the evaluated images (`prtk rank`)")
    parser.add_argument("--data", required=True, help="ImageFolder to evaluate on (the test split)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate an evenly spaced subset of N images")
    parser.add_argument("--keeps", default="0.5,0.6,0.7", help="comma-separated keep ratios")
    parser.add_argument("--json", default=None, help="also write the table as JSON")
    args = parser.parse_args()

    pack = load_pack(args.pack)
    clip = load_clip(pack.meta["model"])
    keeps = [float(k) for k in args.keeps.split(",")]
    table = {"model": clip.name, "layer": pack.layer, "data": args.data, "limit": args.limit, "pack": args.pack,
             "ranking": args.ranking, "top1": {}, "gflops": {}}
    for keep in keeps:
        for label, fields in methods(args.pack, args.ranking):
            report = evaluate(clip, args.data, EvalConfig(keep=keep, layer=pack.layer, limit=args.limit, **fields))
            table["top1"].setdefault("unpruned", {})[f"{keep:g}"] = report["results"]["unpruned"]["top1"]
            table["top1"].setdefault(label, {})[f"{keep:g}"] = report["results"]["pruned"]["top1"]
            if label == "predictor + tokens":
                table["gflops"][f"{keep:g}"] = report["results"]["pruned"]["gflops"]
                table["unpruned_gflops"] = report["results"]["unpruned"]["gflops"]
            table["images"] = report["data"]["images"]
    rows = [[label] + [f"{table['top1'][label][f'{k:g}']:.2f}" for k in keeps]
            for label in table["top1"]]
    rows.append([f"GFLOPs (unpruned {table['unpruned_gflops']:.4f})"] + [f"{table['gflops'][f'{k:g}']:.4f}"
                                                                         for k in keeps])
    print_table(f"{clip.name}, layer {pack.layer}, {table['images']} images of {args.data}: top-1 %",
                ["method"] + [f"keep {k:g}" for k in keeps], rows)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(table, stream, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
