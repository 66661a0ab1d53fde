"""Latency of every (artifact, backend, batch) measured the same way, through the runner interface: the frontier a
deployment engineer chooses from.

What is timed are exported artifacts as they were written (``bench_artifacts``): each ONNX graph on every backend
its description lists among the chosen ones (ONNX Runtime, OpenVINO), each TensorRT engine on TensorRT, and for each
fp32 graph the PyTorch module it was exported from (``prtk.engines.bench_plan``). The artifacts may come from
different models (a structurally pruned model against its parent, a staged graph against a one-stage one, O0
against O2); ``run_bench`` exports one model's graphs first (into a temporary folder, engines built once with one
timing cache) and times those.

Per batch, every contender is timed round-robin in one loop (``prtk.engines.timing``). Per row: median, p90 and p99
latency, images/s, GFLOPs (the description's), and speedups, each as a ratio of medians and as the median of
per-round ratios (paired: the two runs of a round met the same machine load): over the unpruned tower of the same
model, backend and variant, beside the cost-model bound; over the ``baseline`` artifact on the same backend, beside
the GFLOPs ratio; and over the fastest unpruned deployment of the run (any backend, any variant). A paired speedup
more than 10% above its bound is flagged (``beyond_bound``): machine noise, not pruning, made that much.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from prtk.core.console import beyond_bound
from prtk.core.errors import PrtkInputError
from prtk.export.artifact import Artifact
from prtk.export.options import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, DEFAULT_LEVEL,
                                 optimize_level)
from prtk.export.quantize import QuantizationConfig
from prtk.models import LoadedClip
from prtk.pruning.tower import check_keeps

from .bench_plan import Contender, artifact_labels, collect_artifacts, plan_contenders
from .runner_interface import Runner
from .runners import BACKENDS, runner_for
from .timing import Timing, latency_stats, paired_ratio, time_runners

VARIANTS = ("fp32", "int8-dynamic", "int8-static")
BACKEND_VARIANTS = {"torch": ("fp32",), "onnxruntime": VARIANTS, "openvino": VARIANTS,
                    "tensorrt": ("fp32", "int8-static")}  # TensorRT's fp32 variant is built at --precision


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
    optimize: str = DEFAULT_LEVEL  # the exported graphs' level (prtk.export.options)
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
        from prtk.export.config import ExportConfig

        quantize = None if variant == "fp32" else variant
        return ExportConfig(keeps=self.keeps, pack=self.pack, scorer=self.scorer, layer=self.layer, tokens=self.tokens,
                            full=True, seed=self.seed, run_checks=False, optimize=self.optimize, quantize=quantize,
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
    """One contender at one batch: the file timed (``artifact``; for torch the graph whose PyTorch module ran), its
    ``model``, pruning ``schedule`` (``full``, ``0.6``, staged ``0.7@3 > 0.7@5``) and graph level ``optimize``;
    latency (ms) over ``iterations`` timed runs, images/s, GFLOPs per image; the speedup over the unpruned tower of
    the same model, level, backend and variant (``speedup`` a ratio of medians, ``paired_speedup`` the median of
    per-round ratios; None without one) beside the cost-model ``bound``; over the baseline on the same backend
    (``vs_baseline``, ``paired_vs_baseline``, beside ``baseline_bound``, its GFLOPs over the row's where both are of
    one variant and level, else None, as precision and level change the time per FLOP; None without a baseline
    there); over the fastest unpruned deployment of the run at this batch (``vs_fastest_unpruned``,
    ``paired_vs_fastest_unpruned``); ``beyond_bound``: a paired speedup more than 10% above its bound (noise);
    ``times_ms`` every timed run, one per round in round order, for pairing with any other row of the batch."""

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
    model: str = ""
    schedule: str = "full"
    optimize: str = DEFAULT_LEVEL
    speedup: float | None = 1.0
    paired_speedup: float | None = 1.0
    vs_baseline: float | None = None
    paired_vs_baseline: float | None = None
    baseline_bound: float | None = None
    vs_fastest_unpruned: float = 1.0
    paired_vs_fastest_unpruned: float = 1.0
    beyond_bound: bool = False
    times_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class BenchResult:
    """Every row of one bench (per backend, model and variant, unpruned first), the ``baseline`` file (if any), and
    per batch the fastest unpruned deployment (``"backend variant"``) that ``vs_fastest_unpruned`` divides by."""

    model: str
    device: str
    precision: str
    rows: list[BenchRow]
    fastest_unpruned: dict[int, str]
    baseline: str | None = None

    def as_dict(self) -> dict:
        """The ``--json`` document."""
        return {"model": self.model, "device": self.device, "precision": self.precision, "baseline": self.baseline,
                "fastest_unpruned": {str(batch): name for batch, name in self.fastest_unpruned.items()},
                "rows": [asdict(row) for row in self.rows]}


def bench_artifacts(targets: Sequence[str | Path], config: BenchConfig, clip: LoadedClip | None = None,
                    progress: Callable[[int, int], None] | None = None, variants: Sequence[str] | None = None,
                    baseline: str | Path | None = None) -> BenchResult:
    """Time the artifacts at ``targets`` (and the ``baseline`` file, which speedups are also given over) on
    ``config.backends``; torch runs each fp32 graph's PyTorch module, rebuilt over ``clip`` where it is the
    artifact's model (else the model its description names) and ``config.pack`` where it was exported from one."""
    config.check_timing()
    artifacts = collect_artifacts([*([baseline] if baseline is not None else []), *targets])
    reference = artifacts[0] if baseline is not None else None
    sizes = {artifact.image_size for artifact in artifacts}
    if len(sizes) > 1:
        raise PrtkInputError(f"the artifacts take images of different sizes ({', '.join(map(str, sorted(sizes)))} px): "
                             "bench artifacts of one input size at a time")
    contenders = plan_contenders(artifacts, config.backends, variants, reference)
    runners = _runners(contenders, clip, config)
    size, = sizes
    generator = torch.Generator().manual_seed(config.seed)
    inputs = {batch: torch.randn(batch, 3, size, size, generator=generator) for batch in config.batches}
    rows: dict[tuple, BenchRow] = {}  # (contender key, batch) -> row
    labels = artifact_labels(artifacts)
    for done, (batch, images) in enumerate(inputs.items()):
        samples = time_runners(runners, images, config.timing)
        rows |= {(c.key, batch): _row(c, batch, samples[c.key], labels[c.artifact.path]) for c in contenders}
        if progress is not None:
            progress(done + 1, len(inputs))
    del runners
    fastest = _add_speedups(rows, contenders, reference)
    ordered = [rows[(c.key, batch)] for c in contenders for batch in config.batches]
    models = ", ".join(dict.fromkeys(artifact.model for artifact in artifacts))
    return BenchResult(models, config.device, config.precision, ordered, fastest,
                       None if reference is None else labels[reference.path])


def _row(contender: Contender, batch: int, samples: list[float], label: str) -> BenchRow:
    artifact = contender.artifact
    return BenchRow(contender.backend, contender.variant, artifact.keep, label, batch,
                    **latency_stats(samples, batch), gflops=artifact.gflops, bound=artifact.bound,
                    model=artifact.model, schedule=artifact.schedule, optimize=artifact.optimize, times_ms=samples)


def _runners(contenders: list[Contender], clip: LoadedClip | None, config: BenchConfig) -> dict:
    """A runner per contender; torch's reference models loaded once per model."""
    models: dict[tuple, LoadedClip] = {}
    runners: dict[tuple, Runner] = {}
    for contender in contenders:
        artifact = contender.artifact
        model = None
        if contender.backend == "torch":
            if artifact.origin not in models:
                models[artifact.origin] = (clip if clip is not None and clip.name == artifact.model
                                           else artifact.load_reference_model())
            model = models[artifact.origin]
        runners[contender.key] = runner_for(artifact, contender.backend, config.device, config.precision, model,
                                            config.pack if artifact.pack_sha256 is not None else None)
    return runners


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
        export.check()
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


def _add_speedups(rows: dict[tuple, BenchRow], contenders: list[Contender], baseline: Artifact | None
                  ) -> dict[int, str]:
    """Fill in the speedups and flags of ``rows`` (``{(contender key, batch): row}``); returns the fastest unpruned
    deployment per batch (``backend variant``, and its level where the run has several)."""
    fastest = {}
    for batch in sorted({batch for _, batch in rows}):
        unpruned = [row for (_, at), row in rows.items() if at == batch and row.keep is None]
        fastest[batch] = min(unpruned, key=lambda row: row.median_ms) if unpruned else None
    for contender in contenders:
        twin = next((other for other in contenders if other.is_twin_of(contender) and other.keep is None), None)
        for batch in fastest:
            row = rows[(contender.key, batch)]
            row.speedup, row.paired_speedup = _ratios(None if twin is None else rows[(twin.key, batch)], row)
            base = None if baseline is None else rows.get(((contender.backend, baseline.path), batch))
            row.vs_baseline, row.paired_vs_baseline = _ratios(base, row)
            comparable = base is not None and (base.variant, base.optimize) == (row.variant, row.optimize)
            row.baseline_bound = base.gflops / row.gflops if comparable else None
            row.vs_fastest_unpruned, row.paired_vs_fastest_unpruned = _ratios(fastest[batch], row)
            row.beyond_bound = (beyond_bound(row.paired_speedup, row.bound)
                                or beyond_bound(row.paired_vs_baseline, row.baseline_bound))
    levels = len({row.optimize for row in rows.values()}) > 1
    return {batch: f"{row.backend} {row.variant}" + (f" {row.optimize}" if levels else "")
            for batch, row in fastest.items() if row is not None}


def _ratios(reference: BenchRow | None, row: BenchRow) -> tuple[float | None, float | None]:
    """``reference``'s median over ``row``'s, and the median of their per-round ratios (None, None without one)."""
    if reference is None:
        return None, None
    return reference.median_ms / row.median_ms, paired_ratio(reference.times_ms, row.times_ms)
