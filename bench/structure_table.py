"""Structured pruning (MoPE-CLIP) on a test bed: top-1 and GFLOPs of width-only, depth-only and width + depth
pruning, each alone and with token pruning at keep 0.6, and MoPE against magnitude and random module selection at
the same shapes (so at equal GFLOPs), before and after distillation.

    python bench/structure_table.py --train DIR --test DIR --out DIR [--shapes h3m192d6,h4m256d4,h3m192d5]
                                    [--selections mope,magnitude,random] [--distill-epochs 3]
                                    [--distill-images 10000] [--calibration-images 512] [--keep 0.6]
                                    [--limit N] [--json FILE] [model and weights options]

Each cell is ``prtk.structure.prune_structure`` on ``--train`` (calibration subset and distillation images), then
``prtk.evaluation.evaluate`` of the written model on ``--test`` (the unpruned tower of the pruned model, and the
same with cls-attention token pruning at ``--keep`` at block L // 4). Models are kept in ``--out`` (a finished
one is reused, so a killed run continues); "before" rows are the same selection with no distillation.
"""

from __future__ import annotations

import re
from pathlib import Path

from script_args import add_json_arguments, add_model_arguments, check_json, load_model, parser_for, run, write_json
from prtk.core.console import print_table
from prtk.core.errors import PrtkInputError
from prtk.evaluation.accuracy import EvalConfig, evaluate
from prtk.models import load_clip
from prtk.pruning.cost import gflops, vision_macs
from prtk.structure import StructureConfig, prune_structure
from prtk.structure.distillation import DistillConfig
from prtk.structure.job import output_paths

SHAPE = re.compile(r"h(\d+)m(\d+)d(\d+)")


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        match = SHAPE.fullmatch(item.strip())
        if not match:
            raise PrtkInputError(f"--shapes takes h<heads>m<mlp>d<depth>[,...], got {item!r}")
        shapes.append(tuple(int(group) for group in match.groups()))
    return shapes


def main() -> None:
    parser = parser_for(__doc__)
    add_model_arguments(parser, default_model="prtk-testbed-cifar10")
    parser.add_argument("--train", required=True, help="ImageFolder for calibration and distillation")
    parser.add_argument("--test", required=True, help="ImageFolder the table is measured on")
    parser.add_argument("--out", required=True, help="folder for the pruned models")
    parser.add_argument("--shapes", default="h3m192d6,h4m256d4,h3m192d5")
    parser.add_argument("--selections", default="mope,magnitude,random")
    parser.add_argument("--distill-epochs", type=int, default=3)
    parser.add_argument("--distill-images", type=int, default=10000)
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--limit", type=int, default=None, help="evaluate an evenly spaced subset of N test images")
    add_json_arguments(parser)
    args = parser.parse_args()
    check_json(args)
    shapes, selections = parse_shapes(args.shapes), args.selections.split(",")
    parent = load_model(args)
    base = evaluate(parent, args.test, EvalConfig(keep=args.keep, limit=args.limit))
    rows = [{"model": parent.name, "selection": "-", "distilled": "-", "gflops": base.unpruned.gflops,
             "top1": base.unpruned.top1, "token_gflops": base.pruned.gflops, "token_top1": base.pruned.top1}]
    for heads, mlp, depth in shapes:
        for selection in selections:
            for epochs in (0, args.distill_epochs):
                name = f"{parent.name}-h{heads}m{mlp}d{depth}-{selection}-e{epochs}"
                paths = output_paths(Path(args.out), name)
                if not paths["card"].exists():
                    config = StructureConfig(heads=heads, mlp=mlp, depth=depth, selection=selection, name=name,
                                             calibration_images=args.calibration_images,
                                             distill=DistillConfig(epochs=epochs, images=args.distill_images))
                    prune_structure(parent, args.train, args.out, config)
                model = load_clip(name, config=paths["config"], checkpoint=paths["weights"])
                report = evaluate(model, args.test, EvalConfig(keep=args.keep, limit=args.limit))
                rows.append({"model": f"h{heads} m{mlp} d{depth}", "selection": selection,
                             "distilled": "yes" if epochs else "no", "gflops": gflops(vision_macs(model.spec)),
                             "top1": report.unpruned.top1, "token_gflops": report.pruned.gflops,
                             "token_top1": report.pruned.top1})
                print(rows[-1], flush=True)
    print_table(f"structured pruning on {args.test} ({base.images} images), token pruning: cls-attention at keep "
                f"{args.keep}", ["shape", "selection", "distilled", "GFLOPs", "top-1 %", f"+keep {args.keep} GFLOPs",
                                 f"+keep {args.keep} top-1 %"],
                [[r["model"], r["selection"], r["distilled"], f"{r['gflops']:.4f}", f"{r['top1']:.2f}",
                  f"{r['token_gflops']:.4f}", f"{r['token_top1']:.2f}"] for r in rows])
    write_json(args, {"images": base.images, "keep": args.keep, "rows": rows})


if __name__ == "__main__":
    run(main)
