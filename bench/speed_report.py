"""Shared by the speed benchmarks: medians of interleaved runs, ``speedup X.XXx`` beside the cost-model bound."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

from prtk.pruning.cost import block_cost_ratio, vision_macs
from prtk.models.vit import ViTSpec

from bench_cli import add_json_arguments, add_model_arguments, parser_for, write_json


def speed_arguments(description: str) -> argparse.ArgumentParser:
    """The options every speed benchmark takes: the model and weights (seeded random weights unless a weights
    option is given), batch, keep, layer, runs, json."""
    parser = parser_for(description)
    add_model_arguments(parser, default_model="ViT-B-16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    add_json_arguments(parser)
    return parser


def seconds(run: Callable, *args) -> float:
    """Wall time of ``run(*args)``."""
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def paired(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of ``times[numerator][i] / times[denominator][i]`` (a speedup of ``denominator``)."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))


def time_round_robin(sessions: dict, feed: dict, rounds: int, iterations: int = 1) -> dict[str, list[float]]:
    """Seconds per run of every ONNX Runtime session on ``feed``, ``iterations`` runs each per round, the order
    rotated every round so that machine noise hits all alike."""
    names = list(sessions)
    for name in names:  # warm-up: allocation and kernel choice stay out of the timings
        sessions[name].run(None, feed)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(seconds(lambda: [sessions[name].run(None, feed) for _ in range(iterations)])
                               / iterations)
    return times


def report_speedup(header: str, times: dict[str, list[float]], spec: ViTSpec, keep: float, layer: int, batch: int,
                   args: argparse.Namespace, settings: dict) -> float:
    """Print the median of each entry of ``times`` (seconds; the first is the baseline, the second the pruned
    variant) and the speedup next to the cost-model bound; write them as JSON too when asked."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline, variant = medians.values()
    speedup = baseline / variant
    bound = 1 / block_cost_ratio(spec, keep, layer)
    flops_ratio = vision_macs(spec) / vision_macs(spec, keep, layer)
    print(header)
    for name, value in medians.items():
        print(f"  {name:9s} median {value * 1000:9.1f} ms  ({batch / value:6.1f} images/s)")
    print(f"speedup {speedup:.2f}x  (cost-model bound {bound:.2f}x on the blocks, {flops_ratio:.2f}x on all MACs)")
    write_json(args, {"settings": settings, "times_s": times, "median_s": medians, "speedup": speedup,
                      "bound": bound, "flops_ratio": flops_ratio})
    return speedup
