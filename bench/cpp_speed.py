"""The C++ program (prtk-embed on OpenVINO) against prtk's Python OpenVINO runner on the same graphs, and the pruned
graph against the unpruned one through the C++ program, per batch size, measured in one run.

    python bench/cpp_speed.py [--program PATH] [--model prtk-testbed-cifar10] [--keep 0.6] [--batches 1,32]
                              [--rounds 7] [--iterations 200] [--json FILE]

Exports the unpruned and the keep-R graph (cls-attention; a built-in test bed's shipped weights, seeded random
weights for an open_clip architecture) and writes as many PNG images as the largest batch. Each round times every
contender max(5, --iterations / batch) times in a row, the order rotating from round to round: the C++ program's
own timing of inference on one preprocessed batch (`prtk-embed --bench`: model loading and image decoding stay
out, as for the Python runner; the program compiles the graph with the batch size fixed), and prtk's Python runner
(`OpenVinoRunner`: the same settings, the graph's dynamic batch) on the same preprocessed tensors, both up to the
outputs as host arrays. Prints the median of each and the paired ratios (the
median over rounds of each round's ratio of medians): Python / C++ for each graph, and full / keep through the C++
program.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from script_args import (add_json_arguments, add_model_arguments, check_json, load_model, parse_batches, parser_for,
                       run, write_json)
from prtk.core.errors import PrtkInputError
from prtk.engines.cpp_program import CppProgram
from prtk.engines.runners import OpenVinoRunner
from prtk.engines.timing import paired_ratio
from prtk.export.artifact import Artifact
from prtk.export.config import ExportConfig
from prtk.export.exporter import export_models


def arguments():
    parser = parser_for(__doc__)
    add_model_arguments(parser, default_model="prtk-testbed-cifar10")
    parser.add_argument("--program", default=None, help="prtk-embed (default: the one `prtk cpp build` built)")
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per batch (default 7)")
    parser.add_argument("--iterations", type=int, default=200,
                        help="runs per contender per round at batch 1, divided by the batch size (at least 5; "
                             "default 200)")
    add_json_arguments(parser)
    args = parser.parse_args()
    args.batches = parse_batches(args.batches)
    if min(args.batches) < 1 or args.rounds < 1 or args.iterations < 1:
        raise PrtkInputError(f"batches, rounds and iterations must be at least 1, got {args.batches}, "
                             f"{args.rounds}, {args.iterations}")
    return args


def python_median_ms(runner: OpenVinoRunner, images: torch.Tensor, iterations: int) -> float:
    """The Python runner's median time (ms) of ``iterations`` runs on preprocessed ``images``, outputs fetched."""
    prepared = runner.prepare(images)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        runner.fetch(runner.infer(prepared))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    args = arguments()
    check_json(args)
    program = CppProgram.find(args.program)
    clip = load_model(args, random_by_default=args.model is not None and not args.model.startswith("prtk-testbed"))
    with tempfile.TemporaryDirectory() as folder:
        records = export_models(clip, ExportConfig(keeps=(args.keep,), full=True, run_checks=False), Path(folder), None)
        graphs = {("full" if record.artifact.pruning is None else "keep"): record.path for record in records}
        bound = next(record.artifact.bound for record in records if record.artifact.pruning)
        results = {"program": program.description, "model": clip.name, "keep": args.keep, "bound": bound,
                   "batches": {}}
        transform = Artifact.read(graphs["keep"]).preprocessing().transform()
        runners = {tower: OpenVinoRunner(path) for tower, path in graphs.items()}
        rng = np.random.default_rng(0)
        files = []
        for index in range(max(args.batches)):
            files.append(Path(folder) / f"{index:03d}.png")
            Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8), "RGB").save(files[-1])
        print(f"{clip.name}, keep {args.keep:g} (cost-model bound {bound:.2f}x), {args.rounds} rounds; "
              f"{program.description}")
        for batch in args.batches:
            images = torch.stack([transform(Image.open(path).convert("RGB")) for path in files[:batch]])
            contenders = {f"{side} {tower}": (side, tower) for tower in ("keep", "full") for side in ("C++", "Python")}
            for runner in runners.values():  # warm-up
                python_median_ms(runner, images, 2)
            times: dict[str, list[float]] = {name: [] for name in contenders}
            names, runs = list(contenders), max(5, args.iterations // batch)
            for round_index in range(args.rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    side, tower = contenders[name]
                    times[name].append(
                        statistics.median(program.bench(graphs[tower], files[:batch], batch, runs))
                        if side == "C++" else python_median_ms(runners[tower], images, runs))
            medians = {name: statistics.median(values) for name, values in times.items()}
            ratios = {f"Python/C++ {tower}": paired_ratio(times[f"Python {tower}"], times[f"C++ {tower}"])
                      for tower in ("keep", "full")}
            ratios["C++ full/keep"] = paired_ratio(times["C++ full"], times["C++ keep"])
            print(f"batch {batch} ({runs} runs per contender per round)")
            for name, value in medians.items():
                print(f"  {name:12s} median {value:8.3f} ms  {1000 * batch / value:8.1f} images/s")
            for name, value in ratios.items():
                print(f"  {name:16s} {value:.3f}x  (paired, median of {args.rounds} rounds)")
            results["batches"][str(batch)] = {"times_ms": times, "median_ms": medians, "ratios": ratios}
    write_json(args, results)


if __name__ == "__main__":
    run(main)
