"""Latency of every (backend, keep ratio, batch) measured the same way, through the runner interface.

Per backend and batch, the unpruned tower and every keep ratio are timed round-robin after warm-up runs,
until each has ``min_iterations`` runs and ``min_seconds`` have passed (CUDA events on the torch stream
for torch and TensorRT on a GPU, wall time otherwise); median, p90 and
p99 latency, images/s, GFLOPs, and the speedup over the unpruned tower on the same backend and batch
beside the cost-model bound.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from prtk.core.errors import PrtkInputError
from prtk.export.levels import DEFAULT_LEVEL, optimize_level
from prtk.pruning.cost import block_cost_ratio
from prtk.models import LoadedClip
from prtk.pruning.tower import check_keeps, default_layer

from .runners import OnnxRuntimeRunner, Runner, TensorRTRunner, TorchRunner

BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Timing:
    warmup: int = 3
    min_iterations: int = 10
    min_seconds: float = 2.0


@dataclass
class BenchConfig:
    """What to measure: the export settings (pack or baseline, keeps), backends, batches, device, precision,
    and ``timing`` (warm-up runs, then at least ``min_iterations`` runs and ``min_seconds`` per case)."""

    keeps: tuple[float, ...] = (0.5, 0.6, 0.7)
    pack: str | None = None
    tokens: bool = True  # the pack's learnable tokens
    scorer: str = "cls-attention"
    layer: int | None = None
    optimize: str = DEFAULT_LEVEL  # the exported graphs' level (prtk.export.levels)
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    batches: tuple[int, ...] = (1, 8, 32)
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0
    timing: Timing = field(default_factory=Timing)

    def check(self) -> None:
        check_keeps(self.keeps)
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise PrtkInputError(f"backends must be among {', '.join(BACKENDS)}, got {','.join(self.backends)!r}")
        if not self.batches or min(self.batches) < 1:
            raise PrtkInputError(f"batch sizes must be at least 1, got {self.batches}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise PrtkInputError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.precision != "fp32" and self.device == "cpu":
            raise PrtkInputError(f"{self.precision} is for GPUs: pass --device cuda, or --precision fp32 on CPU")
        if "tensorrt" in self.backends and not optimize_level(self.optimize).portable:
            raise PrtkInputError(f"--optimize {self.optimize} graphs are for ONNX Runtime only, which TensorRT cannot "
                                 "build: bench tensorrt at O0 or O1")
        timing = self.timing
        if timing.warmup < 0 or timing.min_iterations < 1 or timing.min_seconds < 0:
            raise PrtkInputError("warm-up must be >= 0, iterations >= 1 and seconds >= 0")


@dataclass
class BenchRow:
    """One case: latency (ms) over ``iterations`` timed runs, images/s, GFLOPs per image, and the speedup over the
    unpruned tower (``keep`` None) on the same backend and batch beside the cost-model bound."""

    backend: str
    keep: float | None
    batch: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    iterations: int
    gflops: float
    speedup: float = 1.0
    bound: float = 1.0


@dataclass(frozen=True)
class BenchResult:
    """Every row of one ``run_bench``, unpruned first per backend."""

    model: str
    device: str
    precision: str
    rows: list[BenchRow]

    def as_dict(self) -> dict:
        """The ``--json`` document."""
        return {"model": self.model, "device": self.device, "precision": self.precision,
                "rows": [asdict(row) for row in self.rows]}


def time_runners(runners: dict, images: torch.Tensor, timing: Timing) -> dict:
    """Latency statistics (milliseconds) of each runner's ``infer`` on ``images``, timed round-robin (one run of
    each per round) so that machine noise hits all alike; inputs are placed before timing starts."""
    prepared = {key: runner.prepare(images) for key, runner in runners.items()}
    for key, runner in runners.items():
        for _ in range(timing.warmup):
            runner.infer(prepared[key])
        runner.synchronize()
    samples: dict = {key: [] for key in runners}
    started = time.perf_counter()
    while min(map(len, samples.values())) < timing.min_iterations or time.perf_counter() - started < timing.min_seconds:
        for key, runner in runners.items():
            samples[key].append(_time_once(runner, prepared[key]))
    stats = {}
    for key, values in samples.items():
        median = statistics.median(values)
        stats[key] = {"median_ms": median, "p90_ms": float(np.percentile(values, 90)),
                      "p99_ms": float(np.percentile(values, 99)), "images_per_s": 1000 * len(images) / median,
                      "iterations": len(values)}
    return stats


def _time_once(runner: Runner, prepared) -> float:
    """Milliseconds of one ``infer``: CUDA events on the torch stream (torch, TensorRT on a GPU), else wall time."""
    if runner.on_gpu and isinstance(runner, (TorchRunner, TensorRTRunner)):
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


def run_bench(clip: LoadedClip, config: BenchConfig,
              progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """One row per (backend, keep, batch), the unpruned tower (keep None) first on each backend."""
    from prtk.export.artifact import tower_gflops
    from prtk.export.exporter import ExportConfig, deployed_tower, export_models, load_export_pack

    config.check()
    if "tensorrt" in config.backends:
        from .tensorrt_build import require_tensorrt

        require_tensorrt()
    export = ExportConfig(keeps=config.keeps, pack=config.pack, scorer=config.scorer, layer=config.layer,
                          tokens=config.tokens, full=True, seed=config.seed, check=False, fp16=False,
                          optimize=config.optimize)
    export.check_values()
    pack = load_export_pack(clip, export)
    targets: list[float | None] = [None, *config.keeps]
    size = clip.spec.image_size
    generator = torch.Generator().manual_seed(config.seed)
    inputs = {batch: torch.randn(batch, 3, size, size, generator=generator) for batch in config.batches}
    gflops = {keep: tower_gflops(clip.spec, deployed_tower(clip, export, pack, keep).tower, pack is not None)
              for keep in targets}
    rows, total = [], len(config.backends) * len(targets) * len(config.batches)
    with tempfile.TemporaryDirectory(prefix="prtk-bench-") as folder:
        exported = {}
        if set(config.backends) & {"onnxruntime", "tensorrt"}:
            records = export_models(clip, export, folder, None)
            exported = {record.meta["pruning"]["keep"] if record.meta["pruning"] else None: record
                        for record in records}
        for backend in config.backends:
            runners = {keep: _runner(backend, clip, export, pack, keep, exported, config) for keep in targets}
            for batch, images in inputs.items():
                for keep, stats in time_runners(runners, images, config.timing).items():
                    rows.append(BenchRow(backend, keep, batch, **stats, gflops=gflops[keep]))
                if progress is not None:
                    progress(len(rows), total)
            del runners
    rows.sort(key=lambda row: (config.backends.index(row.backend), targets.index(row.keep), row.batch))
    _add_speedups(rows, clip, pack, export)
    return BenchResult(clip.name, config.device, config.precision, rows)


def _runner(backend: str, clip, export, pack, keep, exported: dict, config: BenchConfig) -> Runner:
    from prtk.export.exporter import deployed_tower

    if backend == "torch":
        return TorchRunner(deployed_tower(clip, export, pack, keep), config.device, config.precision)
    path = exported[keep].path
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(path, "cpu" if config.device == "cpu" else "cuda")
    from .tensorrt_build import EngineConfig, build_engine

    batches = sorted(config.batches)
    engine = build_engine(path, EngineConfig(config.precision, (batches[0], batches[len(batches) // 2], batches[-1])))
    return TensorRTRunner(engine, config.device if config.device != "cpu" else "cuda")


def _add_speedups(rows: list[BenchRow], clip: LoadedClip, pack, export) -> None:
    full = {(row.backend, row.batch): row.median_ms for row in rows if row.keep is None}
    layer = pack.layer if pack is not None else (export.layer or default_layer(clip.spec))
    tokens = pack.num_tokens if pack is not None and export.tokens else 0
    for row in rows:
        row.speedup = full[(row.backend, row.batch)] / row.median_ms
        row.bound = 1.0 if row.keep is None else 1 / block_cost_ratio(clip.spec, row.keep, layer, tokens)
