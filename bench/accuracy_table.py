"""Zero-shot top-1 of every pruning method at several keep ratios, measured in one run.

    python bench/accuracy_table.py --pack pack.prtk --ranking test-ranking.prtk --data DIR [--limit 1000]
                                   [--keep 0.5,0.6,0.7] [--int8 int8-static --calib-data TRAIN_DIR]
                                   [--json FILE] [model and weights options]

Rows: unpruned, random, cls-attention, golden (the ranking of the evaluated images: an oracle), predictor
(the pack's, without tokens), predictor + tokens; columns: keep ratios, in fp32 (PyTorch) and, with
``--int8``, in int8 (the exported int8 graph of the same tower on ONNX Runtime, through ``prtk validate``, for
the rows a static graph holds: unpruned, cls-attention, predictor, predictor + tokens); cells: top-1 %. A last
row gives the GFLOPs of the predictor + tokens tower (predictor included). The model is chosen as in every ``prtk``
command (``--model``, ``--pretrained``, ``--checkpoint``, ``--model-config``, ``--random-weights``; by
default the pack's model with its shipped weights) and must be the one the pack was trained for; the
pruning layer is the pack's; every cell comes from ``prtk.evaluation.evaluate`` on the same images. For the
CIFAR-10 test bed the pack is trained on rankings of the train split and the table is measured on the
test split.
"""

from __future__ import annotations

import tempfile

from script_args import add_json_arguments, add_model_arguments, check_json, load_model, parser_for, run, write_json
from prtk.cli.base import parse_keeps
from prtk.core.console import print_table
from prtk.engines.validation import validate
from prtk.export.criteria import Thresholds
from prtk.evaluation.accuracy import EvalConfig, evaluate
from prtk.export.artifact import Artifact
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models
from prtk.export.quantize import QUANTIZE_MODES, QuantizationConfig
from prtk.predictor.pack import load_pack
from prtk.pruning.tower import check_keeps


def methods(pack: str, ranking: str) -> list[tuple[str, dict]]:
    """(row label, EvalConfig fields) of each pruning method."""
    return [("random", {"scorer": "random"}),
            ("cls-attention", {"scorer": "cls-attention"}),
            ("golden", {"scorer": "golden", "ranking": ranking}),
            ("predictor", {"scorer": "predictor", "pack": pack, "tokens": False}),
            ("predictor + tokens", {"scorer": "predictor", "pack": pack, "tokens": True})]


def int8_exports(pack: str, layer: int) -> dict[str, dict]:
    """(row label -> ExportConfig fields) of the rows whose tower a static graph holds, pruning at ``layer``."""
    return {"cls-attention": {"scorer": "cls-attention", "layer": layer}, "predictor": {"pack": pack, "tokens": False},
            "predictor + tokens": {"pack": pack, "tokens": True}}


def int8_top1(clip, args, label: str, keep: float, fields: dict, folder: str) -> tuple[float, float]:
    """Top-1 % of the ``args.int8`` graph of row ``label`` at ``keep`` over ``args.data``, and its agreement %
    with the float reference (``prtk validate``)."""
    unpruned = label == "unpruned"
    config = ExportConfig(keeps=(keep,), full=unpruned, run_checks=False, quantize=args.int8,
                          calib_data=args.calib_data, calib_images=args.calib_images,
                          **({"pack": args.pack} if unpruned else fields))
    records = export_models(clip, config, folder, None, force=True)
    record = records[-1] if unpruned else records[0]
    artifact = Artifact.read(record.path)
    pack = config.pack if artifact.pack_sha256 is not None else None
    report = validate(clip, artifact, args.data, Thresholds.for_precision("int8"), pack, limit=args.limit)
    return report.top1["artifact"], report.agreement


def main() -> None:
    parser = parser_for(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--pack", required=True, help="ranker pack from `prtk train`")
    parser.add_argument("--ranking", required=True, help="golden ranking of the evaluated images (`prtk rank`)")
    parser.add_argument("--data", required=True, help="ImageFolder to evaluate on (the test split)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate an evenly spaced subset of N images")
    parser.add_argument("--keep", dest="keeps", default="0.5,0.6,0.7", help="comma-separated keep ratios")
    parser.add_argument("--int8", choices=QUANTIZE_MODES, default=None,
                        help="also measure the int8 graphs of this kind (columns 'keep R int8')")
    parser.add_argument("--calib-data", default=None, help="with --int8 int8-static: the calibration ImageFolder")
    parser.add_argument("--calib-images", type=int, default=256, help="calibration images (default 256)")
    add_json_arguments(parser)
    args = parser.parse_args()
    keeps = parse_keeps(args.keeps)
    check_keeps(keeps)
    check_json(args)
    if args.int8 is not None:
        QuantizationConfig(args.int8, args.calib_data, args.calib_images).check()

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
    columns = [(f"{k:g}", "top1") for k in keeps]
    if args.int8 is not None:
        table["int8"] = {"mode": args.int8, "top1": {}, "agreement": {}}
        with tempfile.TemporaryDirectory(prefix="accuracy-int8-") as folder:
            full = int8_top1(clip, args, "unpruned", keeps[0], {}, folder)
            for label, fields in {"unpruned": {}, **int8_exports(args.pack, pack.layer)}.items():
                for keep in keeps:
                    top1, agreement = full if label == "unpruned" else int8_top1(clip, args, label, keep, fields,
                                                                                 folder)
                    table["int8"]["top1"].setdefault(label, {})[f"{keep:g}"] = top1
                    table["int8"]["agreement"].setdefault(label, {})[f"{keep:g}"] = agreement
        columns = [column for k in keeps for column in ((f"{k:g}", "top1"), (f"{k:g}", "int8"))]

    def cell(label: str, keep: str, kind: str) -> str:
        if kind == "top1":
            return f"{table['top1'][label][keep]:.2f}"
        int8 = table["int8"]
        return f"{int8['top1'][label][keep]:.2f} ({int8['agreement'][label][keep]:.1f})" \
            if label in int8["top1"] else "-"

    rows = [[label] + [cell(label, keep, kind) for keep, kind in columns] for label in table["top1"]]
    rows.append([f"GFLOPs (unpruned {table['unpruned_gflops']:.4f})"]
                + [f"{table['gflops'][keep]:.4f}" if kind == "top1" else "" for keep, kind in columns])
    headers = [f"keep {keep} fp32" if args.int8 and kind == "top1" else f"keep {keep}" if kind == "top1"
               else f"keep {keep} {args.int8} (agreement %)" for keep, kind in columns]
    print_table(f"{clip.name}, layer {pack.layer}, {table['images']} images of {args.data}: top-1 %",
                ["method"] + headers, rows)
    write_json(args, table)


if __name__ == "__main__":
    run(main)
