"""The one timing loop of prtk's benchmarks: runners timed round-robin (``time_runners``), latency statistics and the
paired ratio of two contenders timed in the same rounds."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from .runner_interface import Runner
from .runners import TorchRunner


@dataclass(frozen=True)
class Timing:
    """``warmup`` untimed runs per contender, then rounds until each has ``min_iterations`` timed runs and
    ``min_seconds`` have passed."""

    warmup: int = 3
    min_iterations: int = 10
    min_seconds: float = 2.0


def time_runners(runners: dict, images: torch.Tensor, timing: Timing) -> dict[object, list[float]]:
    """Per runner, the milliseconds of each timed ``infer`` on ``images``, round by round: one run of each runner
    per round, so that machine noise hits all alike and entry ``i`` of every list belongs to round ``i``. A round
    runs the runners of one backend together, the backends' order and the order within each rotated every round;
    each backend's turn starts with an untimed run, which absorbs the previous runtime's threads still spinning
    (ONNX Runtime's and OpenMP's spin after a call and slowed the next call of another runtime 3x on small
    models). Inputs are placed before timing starts."""
    prepared = {key: runner.prepare(images) for key, runner in runners.items()}
    for key, runner in runners.items():
        for _ in range(timing.warmup):
            runner.infer(prepared[key])
        runner.synchronize()
    groups: dict[str, list] = {}
    for key, runner in runners.items():
        groups.setdefault(runner.name, []).append(key)
    samples: dict = {key: [] for key in runners}
    started = time.perf_counter()
    rounds = 0
    while min(map(len, samples.values())) < timing.min_iterations or time.perf_counter() - started < timing.min_seconds:
        for keys in _rotated(list(groups.values()), rounds):
            keys = _rotated(keys, rounds)
            _time_once(runners[keys[0]], prepared[keys[0]])
            for key in keys:
                samples[key].append(_time_once(runners[key], prepared[key]))
        rounds += 1
    return samples


def _rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def latency_stats(samples: list[float], batch: int) -> dict:
    """Median, p90, p99 (ms), images/s and the count of ``samples`` (ms per run of ``batch`` images)."""
    median = statistics.median(samples)
    return {"median_ms": median, "p90_ms": float(np.percentile(samples, 90)),
            "p99_ms": float(np.percentile(samples, 99)), "images_per_s": 1000 * batch / median,
            "iterations": len(samples)}


def paired_ratio(reference: list[float], contender: list[float]) -> float:
    """Median over rounds of reference time / contender time (> 1: the contender is faster)."""
    return statistics.median(r / c for r, c in zip(reference, contender, strict=True))


def _time_once(runner: Runner, prepared) -> float:
    """Milliseconds of one ``infer``: CUDA events on the torch stream for torch on a GPU, else wall time."""
    if runner.on_gpu and isinstance(runner, TorchRunner):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        runner.infer(prepared)
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)
    tick = time.perf_counter()
    runner.infer(prepared)
    runner.synchronize()
    return 1000 * (time.perf_counter() - tick)
