"""Latency of every (backend, precision variant, keep ratio, batch) measured the same way, through the runner
interface: the frontier a deployment engineer chooses from.

Per batch, every contender — each backend, each precision variant it runs (``BACKEND_VARIANTS``), the unpruned
tower and every keep ratio — is timed round-robin in one loop after warm-up runs (``time_runners``: a backend's
contenders run together, each backend's turn opened by an untimed run, the orders rotated every round), until
each has ``min_iterations`` runs and ``min_seconds`` have passed (CUDA events on the torch stream for torch
and TensorRT on a GPU, wall time otherwise). Per row: median, p90 and p99 latency, images/s, GFLOPs, and two
speedups, each as a ratio of medians and as the median of per-round ratios (paired: the two runs of a round met
the same machine load): over the unpruned tower of the same backend and variant, beside the cost-model bound, and
over the fastest unpruned deployment of the run (any backend, any variant).
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
from prtk.export.quantize import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, QuantizationConfig
from prtk.pruning.cost import block_cost_ratio
from prtk.models import LoadedClip
from prtk.pruning.tower import check_keeps, default_layer

from .runners import OnnxRuntimeRunner, OpenVinoRunner, Runner, TensorRTRunner, TorchRunner

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
VARIANTS = ("fp32", "int8-dynamic", "int8-static")
BACKEND_VARIANTS = {"torch": ("fp32",), "onnxruntime": VARIANTS, "openvino": VARIANTS,
                    "tensorrt": ("fp32", "int8-static")}  # TensorRT's fp32 variant is built at --precision


@dataclass(frozen=True)
class Timing:
    warmup: int = 3
    min_iterations: int = 10
    min_seconds: float = 2.0


@dataclass
class BenchConfig:
    """What to measure: the export settings (pack or baseline, keeps), backends, precision variants (with the
    calibration of int8-static), batches, device, precision of torch and TensorRT's float variant, and ``timing``
    (warm-up runs, then at least ``min_iterations`` runs and ``min_seconds`` per case)."""

    keeps: tuple[float, ...] = (0.5, 0.6, 0.7)
    pack: str | None = None
    tokens: bool = True  # the pack's learnable tokens
    scorer: str = "cls-attention"
    layer: int | None = None
    optimize: str = DEFAULT_LEVEL  # the exported graphs' level (prtk.export.levels)
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    variants: tuple[str, ...] = ("fp32",)  # VARIANTS; each timed on the backends that run it
    calib_data: str | None = None  # int8-static
    calib_images: int = DEFAULT_CALIBRATION_IMAGES
    calib_method: str = DEFAULT_CALIBRATION_METHOD
    before_pruning: str | None = None  # int8 variants: the blocks before the pruning layer (None: the mode's)
    batches: tuple[int, ...] = (1, 8, 32)
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0
    timing: Timing = field(default_factory=Timing)

    def export_config(self, variant: str):
        """The ``ExportConfig`` of ``variant``'s graphs: the unpruned tower and every keep ratio, unchecked."""
        from prtk.export.exporter import ExportConfig

        quantize = None if variant == "fp32" else variant
        return ExportConfig(keeps=self.keeps, pack=self.pack, scorer=self.scorer, layer=self.layer, tokens=self.tokens,
                            full=True, seed=self.seed, check=False, optimize=self.optimize, quantize=quantize,
                            calib_data=self.calib_data if variant == "int8-static" else None,
                            calib_images=self.calib_images, calib_method=self.calib_method,
                            before_pruning=None if variant == "fp32" else self.before_pruning)

    def check(self) -> None:
        check_keeps(self.keeps)
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise PrtkInputError(f"backends must be among {', '.join(BACKENDS)}, got {','.join(self.backends)!r}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise PrtkInputError(f"variants must be among {', '.join(VARIANTS)}, got {','.join(self.variants)!r}")
        for variant in self.variants:
            if not any(variant in BACKEND_VARIANTS[backend] for backend in self.backends):
                raise PrtkInputError(f"no backend among {', '.join(self.backends)} runs {variant} (it runs on "
                                     f"{', '.join(b for b in BACKENDS if variant in BACKEND_VARIANTS[b])})")
            if variant != "fp32":
                QuantizationConfig(variant, self.calib_data if variant == "int8-static" else None,
                                   self.calib_images, self.calib_method, self.seed).check()
        if self.before_pruning is not None and self.variants == ("fp32",):
            raise PrtkInputError("--before-pruning is for the int8 variants: add them to --variants")
        if self.calib_data is not None and "int8-static" not in self.variants:
            raise PrtkInputError("--calib-data is for the int8-static variant: add it to --variants or drop "
                                 "--calib-data")
        if "openvino" in self.backends and self.device != "cpu":
            raise PrtkInputError(f"OpenVINO runs here on the CPU: bench it with --device cpu, not {self.device}")
        if not self.batches or min(self.batches) < 1:
            raise PrtkInputError(f"batch sizes must be at least 1, got {self.batches}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise PrtkInputError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.precision != "fp32" and self.device == "cpu":
            raise PrtkInputError(f"{self.precision} is for GPUs: pass --device cuda, or --precision fp32 on CPU")
        runtimes = optimize_level(self.optimize).runtimes
        beyond = [backend for backend in self.backends if backend != "torch" and backend not in runtimes]
        if beyond:
            raise PrtkInputError(f"--optimize {self.optimize} graphs run on {', '.join(runtimes)} only, not on "
                                 f"{', '.join(beyond)}: bench those at O0 or O1")
        timing = self.timing
        if timing.warmup < 0 or timing.min_iterations < 1 or timing.min_seconds < 0:
            raise PrtkInputError("warm-up must be >= 0, iterations >= 1 and seconds >= 0")


@dataclass
class BenchRow:
    """One contender at one batch: latency (ms) over ``iterations`` timed runs, images/s, GFLOPs per image; the
    speedup over the unpruned tower (``keep`` None) of the same backend and variant (``speedup`` a ratio of
    medians, ``paired_speedup`` the median of per-round ratios) beside the cost-model ``bound``; and over the
    fastest unpruned deployment of the run at this batch (``vs_fastest_unpruned``, ``paired_vs_fastest_unpruned``);
    ``times_ms`` every timed run, one per round in round order, for pairing with any other row of the batch."""

    backend: str
    variant: str
    keep: float | None
    batch: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    iterations: int
    gflops: float
    speedup: float = 1.0
    paired_speedup: float = 1.0
    bound: float = 1.0
    vs_fastest_unpruned: float = 1.0
    paired_vs_fastest_unpruned: float = 1.0
    times_ms: list[float] = field(default_factory=list)

    @property
    def contender(self) -> tuple[str, str, float | None]:
        return self.backend, self.variant, self.keep


@dataclass(frozen=True)
class BenchResult:
    """Every row of one ``run_bench`` (per backend and variant, unpruned first), and per batch the fastest unpruned
    deployment (``"backend variant"``) that ``vs_fastest_unpruned`` divides by."""

    model: str
    device: str
    precision: str
    rows: list[BenchRow]
    fastest_unpruned: dict[int, str]

    def as_dict(self) -> dict:
        """The ``--json`` document."""
        return {"model": self.model, "device": self.device, "precision": self.precision,
                "fastest_unpruned": {str(batch): name for batch, name in self.fastest_unpruned.items()},
                "rows": [asdict(row) for row in self.rows]}


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
    """One row per (backend, variant, keep, batch), the unpruned tower (keep None) first per backend and variant."""
    from prtk.export.artifact import tower_gflops
    from prtk.export.exporter import deployed_tower, load_export_pack

    config.check()
    if "tensorrt" in config.backends:
        from .tensorrt_build import require_tensorrt

        require_tensorrt()
    exports = {variant: config.export_config(variant) for variant in config.variants}
    for export in exports.values():
        export.check_values()
    float_export = config.export_config("fp32")
    pack = load_export_pack(clip, float_export)
    targets: list[float | None] = [None, *config.keeps]
    contenders = [(backend, variant, keep) for backend in config.backends for variant in config.variants
                  if variant in BACKEND_VARIANTS[backend] for keep in targets]
    size = clip.spec.image_size
    generator = torch.Generator().manual_seed(config.seed)
    inputs = {batch: torch.randn(batch, 3, size, size, generator=generator) for batch in config.batches}
    gflops = {keep: tower_gflops(clip.spec, deployed_tower(clip, float_export, pack, keep).tower, pack is not None)
              for keep in targets}
    rows = []
    with tempfile.TemporaryDirectory(prefix="prtk-bench-") as folder:
        graphs = _export_graphs(clip, config, exports, contenders, folder)
        runners = {contender: _runner(contender, clip, float_export, pack, graphs, config) for contender in contenders}
        for done, (batch, images) in enumerate(inputs.items()):
            samples = time_runners(runners, images, config.timing)
            rows += [BenchRow(*contender, batch, **latency_stats(times, batch), gflops=gflops[contender[2]],
                              times_ms=times) for contender, times in samples.items()]
            if progress is not None:
                progress(done + 1, len(inputs))
        del runners
    rows.sort(key=lambda row: (contenders.index(row.contender), row.batch))
    fastest = _add_speedups(rows, clip, pack, float_export)
    return BenchResult(clip.name, config.device, config.precision, rows, fastest)


def _export_graphs(clip: LoadedClip, config: BenchConfig, exports: dict, contenders: list, folder: str) -> dict:
    """The ONNX graph of every (variant, keep) that a runtime backend times, exported unchecked into ``folder``."""
    from prtk.export.exporter import export_models

    variants = {variant for backend, variant, _ in contenders if backend != "torch"}
    graphs = {}
    for variant in sorted(variants, key=config.variants.index):
        for record in export_models(clip, exports[variant], folder, None):
            pruning = record.meta["pruning"]
            graphs[(variant, pruning["keep"] if pruning else None)] = record.path
    return graphs


def _runner(contender: tuple, clip, export, pack, graphs: dict, config: BenchConfig) -> Runner:
    from prtk.export.exporter import deployed_tower
    from prtk.export.onnxruntime_session import onnxruntime_optimization

    backend, variant, keep = contender
    if backend == "torch":
        return TorchRunner(deployed_tower(clip, export, pack, keep), config.device, config.precision)
    path = graphs[(variant, keep)]
    if backend == "onnxruntime":
        precision = "fp32" if variant == "fp32" else "int8"
        return OnnxRuntimeRunner(path, "cpu" if config.device == "cpu" else "cuda",
                                 onnxruntime_optimization(precision))
    if backend == "openvino":
        return OpenVinoRunner(path)
    from .tensorrt_build import EngineConfig, build_engine

    batches = sorted(config.batches)
    precision = config.precision if variant == "fp32" else "int8"
    engine = build_engine(path, EngineConfig(precision, (batches[0], batches[len(batches) // 2], batches[-1])))
    return TensorRTRunner(engine, config.device if config.device != "cpu" else "cuda")


def _add_speedups(rows: list[BenchRow], clip: LoadedClip, pack, export) -> dict[int, str]:
    """Fill in every row's speedups and bound; returns the fastest unpruned deployment per batch."""
    layer = pack.layer if pack is not None else (export.layer or default_layer(clip.spec))
    tokens = pack.num_tokens if pack is not None and export.tokens else 0
    fastest = {}
    for batch in {row.batch for row in rows}:
        unpruned = [row for row in rows if row.batch == batch and row.keep is None]
        fastest[batch] = min(unpruned, key=lambda row: row.median_ms)
    for row in rows:
        own = next(r for r in rows if r.batch == row.batch and r.contender == (row.backend, row.variant, None))
        best = fastest[row.batch]
        row.speedup = own.median_ms / row.median_ms
        row.paired_speedup = paired_ratio(own.times_ms, row.times_ms)
        row.vs_fastest_unpruned = best.median_ms / row.median_ms
        row.paired_vs_fastest_unpruned = paired_ratio(best.times_ms, row.times_ms)
        row.bound = 1.0 if row.keep is None else 1 / block_cost_ratio(clip.spec, row.keep, layer, tokens)
    return {batch: f"{row.backend} {row.variant}" for batch, row in sorted(fastest.items())}
