"""Zero-shot top-1 of every pruning method at several keep ratios, measured in one run.

    python bench/accuracy_table.py --pack pack.prtk --ranking test-ranking.prtk --data DIR [--limit 1000]
                                   [--keep 0.5,0.6,0.7] [--json FILE] [model and weights options]

Rows: unpruned, random, cls-attention, golden (the ranking of the evaluated images: an oracle), predictor
(the pack's, without tokens), predictor + tokens; columns: keep ratios; cells: top-1 %. A last row gives
the GFLOPs of the predictor + tokens tower (predictor included). The model is chosen as in every ``prtk``
command (``--model``, ``--pretrained``, ``--checkpoint``, ``--model-config``, ``--random-weights``; by
default the pack's model with its shipped weights) and must be the one the pack was trained for; the
pruning layer is the pack's; every cell comes from ``prtk.evaluation.evaluate`` on the same images. For the
CIFAR-10 test bed the pack is trained on rankings of the train split and the table is measured on the
test split.
"""

from __future__ import annotations

from bench_cli import add_json_arguments, add_model_arguments, check_json, load_model, parser_for, run, write_json
from prtk.cli.base import parse_keeps
from prtk.core.console import print_table
from prtk.evaluation.accuracy import EvalConfig, evaluate
from prtk.predictor.pack import load_pack
from prtk.pruning.tower import check_keeps


def methods(pack: str, ranking: str) -> list[tuple[str, dict]]:
    """(row label, EvalConfig fields) of each pruning method."""
    return [("random", {"scorer": "random"}),
            ("cls-attention", {"scorer": "cls-attention"}),
            ("golden", {"scorer": "golden", "ranking": ranking}),
            ("predictor", {"scorer": "predictor", "pack": pack, "tokens": False}),
            ("predictor + tokens", {"scorer": "predictor", "pack": pack, "tokens": True})]


def main() -> None:
    parser = parser_for(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--pack", required=True, help="ranker pack from `prtk train`")
    parser.add_argument("--ranking", required=True, help="golden ranking of the evaluated images (`prtk rank`)")
    parser.add_argument("--data", required=True, help="ImageFolder to evaluate on (the test split)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate an evenly spaced subset of N images")
    parser.add_argument("--keep", dest="keeps", default="0.5,0.6,0.7", help="comma-separated keep ratios")
    add_json_arguments(parser)
    args = parser.parse_args()
    keeps = parse_keeps(args.keeps)
    check_keeps(keeps)
    check_json(args)

    pack = load_pack(args.pack)
    if args.model is None and args.model_config is None:
        args.model = pack.meta["model"]
    clip = load_model(args)
    pack.check_model(clip)
    table = {"model": clip.name, "layer": pack.layer, "data": args.data, "limit": args.limit, "pack": args.pack,
             "ranking": args.ranking, "top1": {}, "gflops": {}}
    for keep in keeps:
        for label, fields in methods(args.pack, args.ranking):
            report = evaluate(clip, args.data, EvalConfig(keep=keep, layer=pack.layer, limit=args.limit, **fields))
            table["top1"].setdefault("unpruned", {})[f"{keep:g}"] = report.unpruned.top1
            table["top1"].setdefault(label, {})[f"{keep:g}"] = report.pruned.top1
            if label == "predictor + tokens":
                table["gflops"][f"{keep:g}"] = report.pruned.gflops
                table["unpruned_gflops"] = report.unpruned.gflops
            table["images"] = report.images
    rows = [[label] + [f"{table['top1'][label][f'{k:g}']:.2f}" for k in keeps]
            for label in table["top1"]]
    rows.append([f"GFLOPs (unpruned {table['unpruned_gflops']:.4f})"] + [f"{table['gflops'][f'{k:g}']:.4f}"
                                                                         for k in keeps])
    print_table(f"{clip.name}, layer {pack.layer}, {table['images']} images of {args.data}: top-1 %",
                ["method"] + [f"keep {k:g}" for k in keeps], rows)
    write_json(args, table)


if __name__ == "__main__":
    run(main)
