"""Latency of every (backend, precision variant, keep ratio, batch) measured the same way, through the runner
interface: the frontier a deployment engineer chooses from.

What is timed are exported artifacts as they were written (``bench_artifacts``): each ONNX graph on every backend
its sidecar lists among the chosen ones (ONNX Runtime, OpenVINO), each TensorRT engine on TensorRT, and for each
fp32 graph the PyTorch module it was exported from. ``run_bench`` exports a model's graphs first (into a
temporary folder, engines built once with one timing cache) and times those. A contender is (backend, variant,
keep): the variant is the graph's precision or quantization mode (``fp32``, ``fp16``, ``int8-dynamic``,
``int8-static``), an engine's its TensorRT precision (``int8-static`` for a Q/DQ graph's).

Per batch, every contender is timed round-robin in one loop after warm-up runs (``time_runners``: a backend's
contenders run together, each backend's turn opened by an untimed run, the orders rotated every round), until
each has ``min_iterations`` runs and ``min_seconds`` have passed (CUDA events on the torch stream for torch on a
GPU, wall time otherwise: ONNX Runtime, OpenVINO and Polygraphy's TensorRT runner return when done). Per row:
median, p90 and p99 latency, images/s, GFLOPs (the sidecar's), and two speedups, each as a ratio of medians and
as the median of per-round ratios (paired: the two runs of a round met the same machine load): over the unpruned
tower of the same backend and variant, beside the cost-model bound, and over the fastest unpruned deployment of
the run (any backend, any variant).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from prtk.core.errors import PrtkInputError
from prtk.export.artifact import ArtifactFile
from prtk.export.levels import DEFAULT_LEVEL, optimize_level
from prtk.export.onnxruntime_session import onnxruntime_optimization
from prtk.export.quantize import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, QuantizationConfig
from prtk.models import LoadedClip
from prtk.pruning.tower import check_keeps

from .runners import OnnxRuntimeRunner, OpenVinoRunner, Runner, TorchRunner
from .validation import ONNX_BACKENDS, runs_on

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
    """What to measure: the export settings of ``run_bench`` (pack or baseline, keeps, precision variants with the
    calibration of int8-static), backends, batches, device, precision of torch and of the engines ``run_bench``
    builds for the fp32 variant, and ``timing`` (warm-up runs, then at least ``min_iterations`` runs and
    ``min_seconds`` per case). ``bench_artifacts`` reads only ``pack`` (the torch modules' pack) and the timing
    settings (``check_timing``)."""

    keeps: tuple[float, ...] = (0.5, 0.6, 0.7)
    pack: str | None = None
    tokens: bool = True  # the pack's learnable tokens
    scorer: str | None = None  # without a pack: cls-attention (None) or fixed-random
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
        """Refuse what cannot be exported or timed (``check_timing``) as asked."""
        self.check_timing()
        check_keeps(self.keeps)
        if self.pack is not None and self.scorer is not None:
            raise PrtkInputError(f"--scorer {self.scorer} is for benches without --pack: the pack's predictor scores "
                                 "the patches")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise PrtkInputError(f"variants must be among {', '.join(VARIANTS)}, got {','.join(self.variants)!r}")
        _refuse_repeats("--variants", self.variants)
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
        runtimes = optimize_level(self.optimize).runtimes
        beyond = [backend for backend in self.backends if backend != "torch" and backend not in runtimes]
        if beyond:
            raise PrtkInputError(f"--optimize {self.optimize} graphs run on {', '.join(runtimes)} only, not on "
                                 f"{', '.join(beyond)}: bench those at O0 or O1")

    def check_timing(self) -> None:
        """Refuse backends, batches, device, precision or timing that cannot be measured (all that artifacts
        need)."""
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise PrtkInputError(f"backends must be among {', '.join(BACKENDS)}, got {','.join(self.backends)!r}")
        _refuse_repeats("--backend", self.backends)
        _refuse_repeats("--batch", self.batches)
        if "openvino" in self.backends and self.device != "cpu":
            raise PrtkInputError(f"OpenVINO runs here on the CPU: bench it with --device cpu, not {self.device}")
        if not self.batches or min(self.batches) < 1:
            raise PrtkInputError(f"batch sizes must be at least 1, got {self.batches}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise PrtkInputError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.precision != "fp32" and self.device == "cpu":
            raise PrtkInputError(f"{self.precision} is for GPUs: pass --device cuda, or --precision fp32 on CPU")
        timing = self.timing
        if timing.warmup < 0 or timing.min_iterations < 1 or not 0 <= timing.min_seconds < math.inf:
            raise PrtkInputError(f"warm-up must be >= 0, iterations >= 1 and seconds a finite number >= 0, got "
                                 f"{timing.warmup}, {timing.min_iterations} and {timing.min_seconds:g}")


def _refuse_repeats(option: str, values: Sequence) -> None:
    """Refuse a list option that names one value twice (it would be timed twice, as two contenders)."""
    repeated = next((value for index, value in enumerate(values) if value in values[:index]), None)
    if repeated is not None:
        raise PrtkInputError(f"{option} names {repeated} twice")


@dataclass
class BenchRow:
    """One contender at one batch: the file timed (``artifact``; for torch the graph whose PyTorch module ran),
    latency (ms) over ``iterations`` timed runs, images/s, GFLOPs per image; the speedup over the unpruned tower
    (``keep`` None) of the same backend and variant (``speedup`` a ratio of medians, ``paired_speedup`` the median of
    per-round ratios) beside the cost-model ``bound``; and over the fastest unpruned deployment of the run at this
    batch (``vs_fastest_unpruned``, ``paired_vs_fastest_unpruned``); ``times_ms`` every timed run, one per round in
    round order, for pairing with any other row of the batch."""

    backend: str
    variant: str
    keep: float | None
    artifact: str
    batch: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    iterations: int
    gflops: float
    bound: float
    speedup: float = 1.0
    paired_speedup: float = 1.0
    vs_fastest_unpruned: float = 1.0
    paired_vs_fastest_unpruned: float = 1.0
    times_ms: list[float] = field(default_factory=list)

    @property
    def contender(self) -> tuple[str, str, float | None]:
        return self.backend, self.variant, self.keep


@dataclass(frozen=True)
class BenchResult:
    """Every row of one bench (per backend and variant, unpruned first), and per batch the fastest unpruned
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


@dataclass(frozen=True)
class Contender:
    """One thing timed: ``artifact`` on ``backend`` (torch: the PyTorch module an fp32 graph was exported from)."""

    backend: str
    variant: str
    keep: float | None
    artifact: ArtifactFile

    @property
    def key(self) -> tuple[str, str, float | None]:
        return self.backend, self.variant, self.keep

    @property
    def bound(self) -> float:
        """The cost model's speedup over the unpruned tower (1 for the unpruned tower)."""
        pruning = self.artifact.sidecar["pruning"]
        return 1.0 if pruning is None else 1 / pruning["block_cost_ratio"]


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


def collect_artifacts(targets: Sequence[str | Path]) -> list[ArtifactFile]:
    """Every ``.onnx`` and ``.engine`` among ``targets`` (files, or folders as written by ``prtk export`` and
    ``prtk build-engine``), each read with its sidecar; refused unless all come from one model, weights and pack."""
    paths: list[Path] = []
    for target in map(Path, targets):
        if target.is_dir():
            found = sorted(p for p in target.iterdir() if p.suffix in (".onnx", ".engine"))
            if not found:
                raise PrtkInputError(f"no .onnx or .engine file in {target}")
        elif target.is_file():
            found = [target]
        else:
            raise PrtkInputError(f"artifact not found: {target}")
        for path in found:
            twice = next((seen for seen in paths if seen.resolve() == path.resolve()), None)
            if twice is not None:
                raise PrtkInputError(f"{path} is given twice" + (f" (in {target})" if target.is_dir() else "")
                                     + ": name each artifact or folder once")
            paths.append(path)
    artifacts = [ArtifactFile.read(path) for path in paths]
    origins = {_origin(artifact) for artifact in artifacts}
    if len(origins) > 1:
        first, *_ = artifacts
        other = next(a for a in artifacts if _origin(a) != _origin(first))
        raise PrtkInputError(f"{first.path.name} and {other.path.name} come from different models, weights or packs: "
                             "bench one model's artifacts at a time")
    return artifacts


def _origin(artifact: ArtifactFile) -> tuple:
    sidecar = artifact.sidecar
    pack = sidecar.get("pack")
    return sidecar["model"], sidecar["weights"]["sha256"], pack["sha256"] if pack else None


def artifact_variant(artifact: ArtifactFile) -> str:
    """``int8-dynamic`` / ``int8-static`` for a quantized graph (and an engine built from one), else the graph's
    precision or the engine's TensorRT precision."""
    quantization = artifact.sidecar.get("quantization")
    return quantization["mode"] if quantization else artifact.precision


def plan_contenders(artifacts: list[ArtifactFile], backends: Sequence[str],
                    variants: Sequence[str] | None = None) -> list[Contender]:
    """The contenders of ``backends`` over ``artifacts`` (ONNX Runtime and OpenVINO only on graphs of ``variants``
    when given), per backend the unpruned tower first and then the keeps ascending; refused in one line when a
    backend has nothing to run, a (backend, variant) has no unpruned tower to compare with, or two artifacts are
    the same contender."""
    contenders: list[Contender] = []
    for backend in backends:
        chosen = [a for a in artifacts if _runs_on(a, backend)
                  and (variants is None or backend not in ONNX_BACKENDS or artifact_variant(a) in variants)]
        if not chosen:
            raise PrtkInputError(f"no artifact runs on {backend}: {_runs_on_hint(backend)}")
        found = [Contender(backend, "fp32" if backend == "torch" else artifact_variant(a),
                           (a.sidecar["pruning"] or {}).get("keep"), a) for a in chosen]
        for contender in found:
            twin = next((c for c in contenders + found if c.key == contender.key and c is not contender), None)
            if twin is not None:
                tower = "unpruned" if contender.keep is None else f"at keep {contender.keep:g}"
                raise PrtkInputError(f"{twin.artifact.path.name} and {contender.artifact.path.name} are both {backend} "
                                     f"{contender.variant} {tower}: bench them separately")
        for found_variant in dict.fromkeys(c.variant for c in found):
            if not any(c.variant == found_variant and c.keep is None for c in found):
                raise PrtkInputError(f"no unpruned {found_variant} tower among the artifacts for {backend} to compare "
                                     "with: export with --full (and build its engine)")
        order = list(dict.fromkeys(c.variant for c in found))
        contenders += sorted(found, key=lambda c: (order.index(c.variant), c.keep is not None, c.keep or 0.0))
    return contenders


def _runs_on(artifact: ArtifactFile, backend: str) -> bool:
    if backend == "tensorrt":
        return artifact.path.suffix == ".engine"
    if artifact.path.suffix == ".engine":
        return False
    if backend == "torch":
        return artifact.precision == "fp32"
    return runs_on(artifact, backend)


def _runs_on_hint(backend: str) -> str:
    return {"tensorrt": "build engines with `prtk build-engine DIR`",
            "torch": "torch times the PyTorch module of an fp32 graph, and there is none",
            }.get(backend, "every graph is for other runtimes (see each sidecar's runtimes)")


def bench_artifacts(targets: Sequence[str | Path], config: BenchConfig, clip: LoadedClip | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    variants: Sequence[str] | None = None) -> BenchResult:
    """Time the artifacts at ``targets`` (``collect_artifacts``) on ``config.backends`` (``plan_contenders``); torch
    runs each fp32 graph's PyTorch module, rebuilt over ``clip`` (default: the model its sidecar names) and
    ``config.pack``."""
    config.check_timing()
    artifacts = collect_artifacts(targets)
    contenders = plan_contenders(artifacts, config.backends, variants)
    if clip is None and "torch" in config.backends:
        clip = artifacts[0].reference_model()
    runners = {c.key: _runner(c, clip, config) for c in contenders}
    size = artifacts[0].sidecar["input"]["shape"][2]
    generator = torch.Generator().manual_seed(config.seed)
    inputs = {batch: torch.randn(batch, 3, size, size, generator=generator) for batch in config.batches}
    rows = []
    for done, (batch, images) in enumerate(inputs.items()):
        samples = time_runners(runners, images, config.timing)
        rows += [BenchRow(*c.key, c.artifact.path.name, batch, **latency_stats(samples[c.key], batch),
                          gflops=c.artifact.sidecar["gflops"], bound=c.bound, times_ms=samples[c.key])
                 for c in contenders]
        if progress is not None:
            progress(done + 1, len(inputs))
    del runners
    order = [c.key for c in contenders]
    rows.sort(key=lambda row: (order.index(row.contender), row.batch))
    fastest = _add_speedups(rows)
    return BenchResult(artifacts[0].sidecar["model"], config.device, config.precision, rows, fastest)


def run_bench(clip: LoadedClip, config: BenchConfig,
              progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Export ``clip``'s graphs as ``config`` says (every variant, unpruned and each keep, unchecked) into a
    temporary folder, build their engines there when TensorRT is a backend, and ``bench_artifacts`` them."""
    from prtk.export.exporter import export_models

    config.check()
    if "tensorrt" in config.backends:
        from .tensorrt_adapter import require_tensorrt

        require_tensorrt()
    timed = dict.fromkeys((*config.variants, *(("fp32",) if "torch" in config.backends else ())))
    exports = {variant: config.export_config(variant) for variant in timed}  # fp32 also for torch's modules
    for export in exports.values():
        export.check_values()
    with tempfile.TemporaryDirectory(prefix="prtk-bench-") as folder:
        targets = []
        for variant, export in exports.items():
            graphs = [record.path for record in export_models(clip, export, folder, None)]
            if any(variant in BACKEND_VARIANTS[b] for b in config.backends if b != "tensorrt"):
                targets += graphs
            if "tensorrt" in config.backends and variant in BACKEND_VARIANTS["tensorrt"]:
                targets += _build_engines(graphs, variant, config, Path(folder))
        return bench_artifacts(targets, config, clip, progress, config.variants)


def _build_engines(sources: list[Path], variant: str, config: BenchConfig, folder: Path) -> list[Path]:
    """The engines of ``sources`` (``variant``'s graphs): int8 for int8-static, else at ``config.precision``; one
    timing cache in ``folder`` for every build."""
    from .tensorrt_build import EngineConfig, build_engines

    batches = sorted(config.batches)
    engine = EngineConfig("int8" if variant == "int8-static" else config.precision,
                          (batches[0], batches[len(batches) // 2], batches[-1]),
                          timing_cache=str(folder / "timing.cache"))
    return list(build_engines(sources, engine))


def _runner(contender: Contender, clip: LoadedClip | None, config: BenchConfig) -> Runner:
    artifact = contender.artifact
    if contender.backend == "torch":
        return TorchRunner(artifact.reference(clip, config.pack), config.device, config.precision)
    if contender.backend == "onnxruntime":
        return OnnxRuntimeRunner(artifact.path, "cpu" if config.device == "cpu" else "cuda",
                                 onnxruntime_optimization(artifact.precision))
    if contender.backend == "openvino":
        return OpenVinoRunner(artifact.path)
    from .tensorrt_adapter import TensorRTRunner

    return TensorRTRunner(artifact.path, config.device if config.device != "cpu" else "cuda")


def _add_speedups(rows: list[BenchRow]) -> dict[int, str]:
    """Fill in every row's speedups; returns the fastest unpruned deployment per batch."""
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
    return {batch: f"{row.backend} {row.variant}" for batch, row in sorted(fastest.items())}
