"""ONNX Runtime (CPU) latency of the export optimisation levels, unpruned and pruned, measured in one run.

    python bench/onnx_speed.py [--model ViT-B-16] [--batches 1,32] [--keep 0.6] [--layer 3]
                               [--levels O0,O1,O2] [--runs 7] [--json FILE]

Exports the unpruned and the keep-R graph (cls-attention, seeded random weights unless a weights option is
given: speed does not depend on the weights) at every ``--optimize`` level with ``prtk.export``, opens one
ONNX Runtime session each (optimisation level ALL, default threads), and per batch times every graph once per
round, the order rotating from round to round, so that machine noise hits all alike. Prints the median of each
graph and three kinds of paired ratios, each the median over rounds of the per-round ratio: every level against
O0 (today's graph) for the same tower; keep-R against full at every level, beside the cost-model bound; and
keep-R at every level against the fastest unpruned graph of the run (by median).
"""

from __future__ import annotations

import statistics
import tempfile

import numpy as np
import onnxruntime

from bench_cli import (add_json_arguments, add_model_arguments, check_json, load_model, parse_batches, parser_for,
                       run, write_json)
from prtk.core.errors import PrtkInputError
from prtk.export.exporter import ExportConfig, export_models
from prtk.export.levels import OPTIMIZE_LEVELS
from prtk.pruning.cost import block_cost_ratio
from prtk.pruning.tower import keep_count
from speed_report import paired, time_round_robin


def arguments():
    parser = parser_for(__doc__)
    add_model_arguments(parser, default_model="ViT-B-16")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--levels", default="O0,O1,O2", help="export levels to compare; the first is the baseline")
    parser.add_argument("--runs", type=int, default=7, help="timed rounds per batch (default 7)")
    add_json_arguments(parser)
    args = parser.parse_args()
    args.batches = parse_batches(args.batches)
    args.levels = args.levels.split(",")
    unknown = [level for level in args.levels if level not in OPTIMIZE_LEVELS]
    if unknown or min(args.batches) < 1 or args.runs < 1:
        raise PrtkInputError(f"levels must be among {', '.join(OPTIMIZE_LEVELS)}, batches and runs at least 1; "
                             f"got levels {','.join(args.levels)}, batches {args.batches}, runs {args.runs}")
    return args


def main() -> None:
    args = arguments()
    check_json(args)
    clip = load_model(args, random_by_default=True)
    bound = 1 / block_cost_ratio(clip.spec, args.keep, args.layer)
    size = clip.spec.image_size
    results = {"settings": {key: value for key, value in vars(args).items() if key not in ("json_path", "force")}
               | {"onnxruntime": onnxruntime.__version__}, "bound": bound, "batches": {}}
    with tempfile.TemporaryDirectory() as folder:
        sessions, nodes = {}, {}
        for level in args.levels:
            config = ExportConfig(keeps=(args.keep,), layer=args.layer, full=True, check=False, optimize=level)
            for record in reversed(export_models(clip, config, f"{folder}/{level}", None)):  # full first
                name = f"{level} {'full' if record.meta['pruning'] is None else f'keep {args.keep:g}'}"
                sessions[name] = onnxruntime.InferenceSession(str(record.path), providers=["CPUExecutionProvider"])
                nodes[name] = record.meta["graph"]
        print(f"{args.model} ONNX Runtime {onnxruntime.__version__} CPU, layer {args.layer}, keep {args.keep:g} "
              f"(k={keep_count(args.keep, clip.spec.num_patches)}), cls-attention, {args.runs} rounds; "
              f"cost-model bound keep/full {bound:.2f}x")
        for batch in args.batches:
            images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
            times = time_round_robin(sessions, {"images": images}, args.runs)
            medians = {name: statistics.median(values) for name, values in times.items()}
            print(f"batch {batch}")
            for name, value in medians.items():
                graph = nodes[name]
                print(f"  {name:12s} median {value * 1000:9.1f} ms  {batch / value:7.1f} images/s  "
                      f"{graph['nodes']:5d} nodes, {graph['nodes_per_block']:3d} per block")
            ratios = {}
            base = args.levels[0]
            for tower in ("full", f"keep {args.keep:g}"):
                for level in args.levels[1:]:
                    ratios[f"{level}/{base} {tower}"] = paired(times, f"{base} {tower}", f"{level} {tower}")
            fastest_full = min((f"{level} full" for level in args.levels), key=medians.get)
            for level in args.levels:
                pruned = f"{level} keep {args.keep:g}"
                ratios[f"keep/full {level}"] = paired(times, f"{level} full", pruned)
                ratios[f"keep {level}/fastest full ({fastest_full.split()[0]})"] = paired(times, fastest_full, pruned)
            for name, value in ratios.items():
                print(f"  speedup {name:31s} {value:.2f}x  (paired, median of {args.runs} rounds)")
            results["batches"][str(batch)] = {"times_s": times, "median_s": medians, "speedups": ratios}
        results["graphs"] = nodes
    write_json(args, results)


if __name__ == "__main__":
    run(main)
