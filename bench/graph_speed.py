"""ONNX Runtime (CPU) speed of exported graphs of different models against the first one, measured in one run.

    python bench/graph_speed.py BASELINE.onnx GRAPH.onnx [GRAPH.onnx ...] [--batch 32] [--rounds 15]
                                [--iterations 5] [--json FILE]

For what ``prtk bench`` does not compare: graphs of *different* models, e.g. a structurally pruned model's
token-pruned graph against its parent's unpruned graph (``prtk bench`` times the artifacts of one model and
weights). Every graph must carry a ``prtk export`` sidecar (its GFLOPs give the cost-model bound) and take the
same input. One ONNX Runtime session each (optimisation level ALL, default threads); per round every graph runs
``--iterations`` times on the same seeded batch, the order rotating from round to round (``speed_report``'s
round robin, as ``onnx_speed.py`` times). Prints each graph's median seconds per batch, the median over rounds
of the per-round ratio baseline / graph, and the bound baseline GFLOPs / graph GFLOPs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import onnxruntime

from bench_cli import add_json_arguments, check_json, parser_for, run, write_json
from prtk.core.console import print_table
from prtk.core.errors import PrtkInputError
from speed_report import paired, time_round_robin


def main() -> None:
    parser = parser_for(__doc__)
    parser.add_argument("graphs", nargs="+", help="the baseline graph first, then the graphs to compare")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=5, help="runs per graph per round")
    add_json_arguments(parser)
    args = parser.parse_args()
    check_json(args)
    if len(args.graphs) < 2:
        raise PrtkInputError("give a baseline graph and at least one graph to compare")
    sidecars = []
    for graph in map(Path, args.graphs):
        if not graph.is_file() or not graph.with_suffix(".json").is_file():
            raise PrtkInputError(f"{graph} is not a graph with a prtk export sidecar beside it")
        sidecars.append(json.loads(graph.with_suffix(".json").read_text()))
    inputs = {(sidecar["input"]["name"], sidecar["input"]["shape"][2]) for sidecar in sidecars}
    if len(inputs) > 1:
        raise PrtkInputError(f"the graphs take different inputs (name, size): {sorted(inputs)}")
    (name, size), = inputs
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {graph: onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
                for graph in args.graphs}
    pixels = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    times = time_round_robin(sessions, {name: pixels}, args.rounds, args.iterations)
    baseline = args.graphs[0]
    rows = [{"graph": Path(graph).name, "model": sidecar["model"], "gflops": sidecar["gflops"],
             "median_s": statistics.median(times[graph]), "paired_speedup": paired(times, baseline, graph),
             "median_speedup": statistics.median(times[baseline]) / statistics.median(times[graph]),
             "bound": sidecars[0]["gflops"] / sidecar["gflops"]}
            for graph, sidecar in zip(args.graphs, sidecars)]
    print_table(f"ONNX Runtime CPU, batch {args.batch}, {args.rounds} rounds x {args.iterations}",
                ["graph", "GFLOPs", "median ms", "speedup (paired)", "speedup (medians)", "bound"],
                [[r["graph"], f"{r['gflops']:.4f}", f"{1000 * r['median_s']:.2f}", f"{r['paired_speedup']:.2f}x",
                  f"{r['median_speedup']:.2f}x", f"{r['bound']:.2f}x"] for r in rows])
    write_json(args, {"batch": args.batch, "rounds": args.rounds, "iterations": args.iterations, "rows": rows})


if __name__ == "__main__":
    run(main)
