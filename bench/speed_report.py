"""Shared by the speed benchmarks: medians of interleaved runs, ``speedup X.XXx`` beside the cost-model bound."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

from prtk.flops import block_cost_ratio, vision_macs
from prtk.vit import ViTSpec


def speed_arguments(description: str) -> argparse.ArgumentParser:
    """The options every speed benchmark takes: model, batch, keep, layer, runs, json."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", dest="json_path", default=None)
    return parser


def seconds(run: Callable, *args) -> float:
    """Wall time of ``run(*args)``."""
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def report_speedup(header: str, times: dict[str, list[float]], spec: ViTSpec, keep: float, layer: int, batch: int,
                   json_path: str | None, settings: dict) -> float:
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
    if json_path:
        with open(json_path, "w") as stream:
            json.dump({"settings": settings, "times_s": times, "median_s": medians, "speedup": speedup,
                       "bound": bound, "flops_ratio": flops_ratio}, stream, indent=2)
    return speedup
