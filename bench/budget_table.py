"""Zero-shot top-1 of one-stage and multi-stage pruning at matched GFLOPs budgets, measured in one run.

    python bench/budget_table.py --data DIR [--pack pack.prtk] [--budgets 0.7,0.6,0.5] [--blocks 1,3,4]
                                 [--limit N] [--json FILE] [model and weights options]

Columns: budgets, as fractions of the unpruned tower's GFLOPs (the cost model's, scorers included). Rows: the
unpruned tower; one stage of random, cls-attention, predictor (the pack's, no tokens) and predictor + tokens;
three stages of cls-attention (EViT: CLS attention at every stage, dropped patches fused into one token) and of
ELIP (language-guided at every stage, dropped patches fused); and the pack's predictor + tokens as the first stage
with cls-attention or ELIP at the later two. Each row's keep ratios are chosen by the cost model to land nearest
the budget — one stage: k patches; three stages: the same share kept at each stage; predictor + tokens: one of
the pack's trained keep ratios (its tokens exist only there), and with later stages their share — and every
cell gives the top-1 and the GFLOPs it reached. Stages prune at the input of ``--blocks`` (default: the pack's
layer, or L // 4, then two blocks spread over the rest: 1,3,4 for 6 blocks, 3,6,9 for 12). Every cell comes from
``prtk.evaluation.evaluate`` on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

from script_args import add_json_arguments, add_model_arguments, check_json, load_model, parser_for, run, write_json
from prtk.core.console import print_table
from prtk.core.errors import PrtkInputError
from prtk.evaluation.accuracy import EvalConfig, evaluate
from prtk.predictor.model import PredictorConfig, predictor_macs
from prtk.predictor.pack import load_pack
from prtk.pruning.cost import gflops, vision_macs
from prtk.pruning.tower import default_layer

SHARES = [share / 100 for share in range(100, 4, -1)]  # the per-stage keep ratios searched


@dataclass(frozen=True)
class Row:
    """One method: its scorers, whether it fuses the dropped patches, and whether it reads the pack."""

    label: str
    scorer: str
    stage_scorer: str | None  # None: one stage
    fuse: bool = False
    tokens: bool = False


ROWS = (Row("random", "random", None), Row("cls-attention", "cls-attention", None),
        Row("predictor", "predictor", None), Row("predictor + tokens", "predictor", None, tokens=True),
        Row("3-stage cls-attention (EViT)", "cls-attention", "cls-attention", fuse=True),
        Row("3-stage ELIP", "elip", "elip", fuse=True),
        Row("predictor + tokens, then cls-attention", "predictor", "cls-attention", tokens=True),
        Row("predictor + tokens, then ELIP", "predictor", "elip", tokens=True))  # its tokens were trained unfused


def default_blocks(layers: int, first: int) -> tuple[int, int, int]:
    """The first stage's block, then two more spread over the blocks after it."""
    return first, first + round((layers - first) / 3), first + round(2 * (layers - first) / 3)


def schedule(row: Row, budget_gflops: float, clip, pack, pack_path: str | None, blocks: tuple[int, ...]) -> dict:
    """The ``EvalConfig`` fields of ``row`` nearest ``budget_gflops`` by the cost model."""
    spec, first, later = clip.spec, blocks[0], blocks[1:]
    predictor = row.scorer == "predictor"
    extra = gflops(predictor_macs(spec, PredictorConfig(**pack.meta["predictor"]))) if predictor else 0.0
    tokens = pack.num_tokens if row.tokens else 0

    def cost(keep: float, shares: tuple[float, ...]) -> float:
        stages = tuple(zip(later, shares))
        return extra + gflops(vision_macs(spec, keep, first, tokens, row.fuse, stages))

    if row.tokens:
        candidates = [(keep, ()) if row.stage_scorer is None else (keep, (share, share))
                      for keep in sorted(pack.keeps, reverse=True) for share in SHARES]
    elif row.stage_scorer is None:
        candidates = [(count / spec.num_patches, ()) for count in range(1, spec.num_patches + 1)]
    else:
        candidates = [(share, (share, share)) for share in SHARES]
    keep, shares = min(candidates, key=lambda c: abs(cost(*c) - budget_gflops))
    fields = {"keep": keep, "layer": None if predictor else first, "scorer": row.scorer, "fuse_dropped": row.fuse,
              "tokens": row.tokens, "pack": pack_path if predictor else None}
    if row.stage_scorer is not None:
        fields |= {"later_stages": tuple(zip(later, shares)), "stage_scorer": row.stage_scorer}
    return fields


def main() -> None:
    parser = parser_for(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="ImageFolder to evaluate on (the test split)")
    parser.add_argument("--pack", default=None, help="ranker pack from `prtk train` (its rows are left out without)")
    parser.add_argument("--budgets", default="0.7,0.6,0.5", help="GFLOPs budgets, fractions of the unpruned tower's")
    parser.add_argument("--blocks", default=None, help="the three stages' blocks, e.g. 3,6,9")
    parser.add_argument("--limit", type=int, default=None, help="evaluate an evenly spaced subset of N images")
    add_json_arguments(parser)
    args = parser.parse_args()
    try:
        budgets = [float(part) for part in args.budgets.split(",")]
        blocks = tuple(int(part) for part in args.blocks.split(",")) if args.blocks else None
    except ValueError:
        raise PrtkInputError("--budgets takes fractions (0.7,0.6,0.5) and --blocks three block numbers") from None
    if not all(0 < budget < 1 for budget in budgets):
        raise PrtkInputError(f"budgets must be fractions in (0, 1), got {args.budgets}")
    if blocks is not None and len(blocks) != 3:
        raise PrtkInputError(f"--blocks takes three blocks, got {args.blocks}")
    check_json(args)
    pack = load_pack(args.pack) if args.pack else None
    if args.model is None and args.model_config is None and pack is not None:
        args.model = pack.meta["model"]
    clip = load_model(args)
    if pack is not None:
        pack.check_model(clip)
    blocks = blocks or default_blocks(clip.spec.layers, pack.layer if pack else default_layer(clip.spec))
    full = gflops(vision_macs(clip.spec))
    rows = [row for row in ROWS if pack is not None or row.scorer != "predictor"]
    table = {"model": clip.name, "data": args.data, "limit": args.limit, "pack": args.pack, "blocks": list(blocks),
             "unpruned_gflops": full, "budgets": budgets, "rows": {}}
    for row in rows:
        for budget in budgets:
            fields = schedule(row, budget * full, clip, pack, args.pack, blocks)
            report = evaluate(clip, args.data, EvalConfig(limit=args.limit, workers=0, **fields))
            table["unpruned_top1"], table["images"] = report.unpruned.top1, report.images
            table["rows"].setdefault(row.label, {})[f"{budget:g}"] = {
                "top1": report.pruned.top1, "gflops": report.pruned.gflops, "keep": fields["keep"],
                "later_stages": [list(stage) for stage in fields.get("later_stages", ())]}
    lines = [["unpruned", *(f"{table['unpruned_top1']:.2f} ({full:.4f})" for _ in budgets)]]
    lines += [[label, *(f"{cells[f'{b:g}']['top1']:.2f} ({cells[f'{b:g}']['gflops']:.4f})" for b in budgets)]
              for label, cells in table["rows"].items()]
    print_table(f"{clip.name}, stages at blocks {','.join(map(str, blocks))}, {table['images']} images of "
                f"{args.data}: top-1 % (GFLOPs)", ["method", *(f"{b:g} x GFLOPs" for b in budgets)], lines)
    write_json(args, table)


if __name__ == "__main__":
    run(main)
