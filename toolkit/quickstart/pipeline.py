"""``run_quickstart``: the whole pipeline on a test bed, on a CPU, in minutes, ending in a report with pictures.

rank a subset (similarity score) -> train the predictor and tokens -> export keep ratios (+ the full tower), in
fp32 and int8-static (calibrated on the ranked images) -> build TensorRT engines where TensorRT and a GPU are
present (one timing cache) -> validate every export and engine -> zero-shot accuracy per method -> benchmark those
same files on torch, ONNX Runtime (fp32 and int8) and TensorRT where built -> summary (Markdown, JSON) and three
PNG plots.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from prtk import __version__
from prtk.pruning.spec import TowerSpec, build_tower
from prtk.core.console import speedup_text
from prtk.core.files import write_bytes_atomic, write_json_atomic
from prtk.core.errors import PrtkInputError
from prtk.export.artifact import Artifact
from prtk.models import LoadedClip
from prtk.predictor.pack import RankerPack
from prtk.pruning.tower import check_keeps
from prtk.data.synthetic import HELD_OUT_SEED

RANKING_SEED = 2  # generated shapes images for ranking: neither the test bed's training split nor the held-out one
INT8_VARIANT = "int8-static"  # the quickstart's int8 graphs: calibrated on the ranked images, TensorRT-portable


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of each stage; the defaults finish in a few minutes on 2 CPU cores."""

    keeps: tuple[float, ...] = (0.5, 0.6, 0.7)
    rank_images: int = 256
    eval_images: int = 500
    step: int = 8
    num_tokens: int = 8
    predictor_epochs: int = 30
    token_epochs: int = 8
    batches: tuple[int, ...] = (1, 32)
    seed: int = 0

    def check(self) -> None:
        check_keeps(self.keeps)
        if self.rank_images < 20 or self.eval_images < 10:
            raise PrtkInputError(f"quickstart needs at least 20 ranked and 10 evaluation images, got "
                                 f"{self.rank_images} and {self.eval_images}")


Say = Callable[[str], None]


def run_quickstart(clip: LoadedClip, out_dir: str | Path, config: QuickstartConfig, data_root: str | Path | None = None,
                   force: bool = False, say: Say = print, progress=None) -> dict:
    """Run every stage into ``out_dir`` and return the summary. ``data_root`` (an ImageFolder) is used for
    ranking and evaluation alike; without it shapes images are generated (built-in shapes test bed only).
    ``progress(description, unit)`` gives a context manager yielding ``update(done, total)``."""
    from prtk.export.checks import load_check_images

    config.check()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise PrtkInputError(f"output folder {out} is not empty (pass --force to start over)")
        stranger = next((entry for entry in sorted(out.iterdir()) if not _quickstart_entry(entry.name)), None)
        if stranger is not None:
            raise PrtkInputError(f"{out} holds {stranger.name}, which a quickstart does not write: --force empties "
                                 "only an earlier quickstart's folder; choose a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.perf_counter()
    rank_dir, eval_dir = _data(clip, out, config, data_root, say)
    pack_path, pack = _rank_and_train(clip, out, config, rank_dir, say, progress)
    sample, _ = load_check_images(clip.preprocess, clip.spec.image_size, eval_dir, 8)  # [8,3,H,W]
    records = _export(clip, out, config, pack_path, rank_dir, sample, say, progress)
    engines = _engines(records, say)
    artifacts = [record.path for record in records] + engines
    validations = _validate(clip, artifacts, pack_path, eval_dir, config, say, progress)
    accuracy, unpruned = _accuracy(clip, pack_path, pack, eval_dir, config, say, progress)
    bench = _bench(clip, artifacts, pack_path, config, progress)
    summary = _summary(clip, config, records, validations, accuracy, unpruned, bench, engines, pack_path, pack)
    _plots(clip, out, config, summary, pack, sample)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "summary.json", summary)
    write_bytes_atomic(out / "summary.md", summary_markdown(summary).encode())
    return summary


QUICKSTART_ENTRIES = ("data", "onnx", "validation", "ranking.prtk", "pack.prtk", "summary.json", "summary.md",
                      "accuracy_vs_keep.png", "speedup_vs_keep.png", "kept_patches.png")


def _quickstart_entry(name: str) -> bool:
    """A name that a quickstart writes in its folder (its outputs, and the partial, lock and temporary files of
    its ranking, pack and summaries)."""
    return name in QUICKSTART_ENTRIES or any(name.startswith(f".{entry}.") for entry in QUICKSTART_ENTRIES)


def _data(clip: LoadedClip, out: Path, config: QuickstartConfig, data_root, say: Say) -> tuple[Path, Path]:
    if data_root is not None:
        return Path(data_root), Path(data_root)
    if clip.name != "prtk-testbed-shapes":
        raise PrtkInputError(f"pass --data DIR for {clip.name}: generated images fit only prtk-testbed-shapes")
    from prtk.data.synthetic import write_shapes_folder

    size = clip.spec.image_size
    rank_dir = write_shapes_folder(out / "data" / "rank", config.rank_images, RANKING_SEED, size)
    eval_dir = write_shapes_folder(out / "data" / "held-out", config.eval_images, HELD_OUT_SEED, size)
    say(f"data: generated {config.rank_images} shapes images to rank and {config.eval_images} held-out ones")
    return rank_dir, eval_dir


def _rank_and_train(clip, out: Path, config: QuickstartConfig, rank_dir: Path, say: Say,
                    progress) -> tuple[Path, RankerPack]:
    from prtk.ranking.folder_ranking import rank_folder
    from prtk.predictor.training import TrainConfig, train_pack
    from prtk.ranking.search import RankingConfig

    ranking = out / "ranking.prtk"
    with progress("1/6 rank", "img") as update:
        rank_folder(clip, rank_dir, ranking, RankingConfig(score="similarity", step=config.step,
                                                           min_keep=min(config.keeps)),
                    limit=config.rank_images, progress=update)
    pack = out / "pack.prtk"
    train = TrainConfig(keeps=config.keeps, num_tokens=config.num_tokens, predictor_epochs=config.predictor_epochs,
                        token_epochs=config.token_epochs, batch_size=64, seed=config.seed)
    with progress("2/6 train", "step") as update:
        trained = train_pack(clip, ranking, rank_dir, pack, train, progress=update)
    overlap = trained.meta["metrics"]["predictor"]["top_k_overlap"]
    say("train: held-out top-k overlap " + ", ".join(f"{k} {v:.3f}" for k, v in overlap.items()))
    return pack, trained


def _export(clip, out: Path, config: QuickstartConfig, pack: Path, rank_dir: Path, images: torch.Tensor, say: Say,
            progress):
    from prtk.export.config import ExportConfig
    from prtk.export.exporter import export_models

    exports = [ExportConfig(keeps=config.keeps, pack=str(pack), full=True),
               ExportConfig(keeps=config.keeps, pack=str(pack), full=True, quantize=INT8_VARIANT,
                            calib_data=str(rank_dir), seed=config.seed)]
    records, total = [], len(exports) * (len(config.keeps) + 1)
    with progress("3/6 export", "graph") as update:
        for export in exports:
            before = len(records)
            records += export_models(clip, export, out / "onnx", images,
                                     progress=lambda done, _, before=before: update(before + done, total))
    failed = [f"{r.path.name}: {c.name}" for r in records for c in r.checks if not c.passed]
    say(f"export: {len(records)} graphs, checks " + ("all pass" if not failed else "FAILED: " + ", ".join(failed)))
    return records


def _engines(records, say: Say) -> list[Path]:
    """TensorRT engines of every export (fp16; int8 from the int8-static graphs), one timing cache for all."""
    from prtk.engines.tensorrt_adapter import require_tensorrt
    from prtk.engines.tensorrt_build import EngineConfig, build_engines

    try:
        require_tensorrt()
    except PrtkInputError as reason:
        say(f"engines: skipped ({reason})")
        return []
    cache = str(records[0].path.parent / "timing.cache")
    built = []
    for precision in ("fp16", "int8"):
        sources = [r.path for r in records if (r.artifact.quantization_mode is not None) == (precision == "int8")]
        built += build_engines(sources, EngineConfig(precision, timing_cache=cache))
    say(f"engines: built {', '.join(path.name for path in built)}")
    return built


def _validate(clip, artifacts: list[Path], pack: Path, eval_dir: Path, config: QuickstartConfig, say: Say,
              progress) -> dict:
    """Every export and engine against its references; keyed by (``_artifact_label``, keep)."""
    from prtk.engines.validation import validate
    from prtk.engines.validation_report import write_report
    from prtk.export.criteria import Thresholds

    folder = artifacts[0].parent.parent / "validation"
    results = {}
    with progress("4/6 validate", "file") as update:
        for done, path in enumerate(artifacts):
            artifact = Artifact.read(path)
            report = validate(clip, artifact, eval_dir, Thresholds.for_precision(artifact.precision),
                              str(pack), limit=config.eval_images)
            write_report(report, folder / f"{path.stem}.md", folder / f"{path.stem}.json")
            results[(_artifact_label(artifact), artifact.keep)] = report
            update(done + 1, len(artifacts))
    say("validate: " + ", ".join(f"{v} {'full' if k is None else k}: {'pass' if r.passed else 'FAIL'}"
                                 for (v, k), r in results.items()))
    return results


def _artifact_label(artifact: Artifact) -> str:
    """An ONNX graph's variant (``fp32``, ``int8-static``), ``tensorrt <variant>`` for an engine."""
    return f"tensorrt {artifact.variant}" if artifact.is_engine else artifact.variant


def _accuracy(clip, pack: Path, trained: RankerPack, eval_dir: Path, config: QuickstartConfig, say: Say, progress):
    from prtk.evaluation.accuracy import EvalConfig, evaluate

    layer = trained.layer
    methods = {"random": {"scorer": "random"}, "cls-attention": {"scorer": "cls-attention"},
               "predictor": {"scorer": "predictor", "pack": str(pack), "tokens": False},
               f"predictor + {config.num_tokens} tokens": {"scorer": "predictor", "pack": str(pack)}}
    accuracy: dict[str, dict[float, float]] = {name: {} for name in methods}
    unpruned = 0.0
    with progress("5/6 accuracy", "run") as update:
        for done, (name, keep) in enumerate((n, k) for n in methods for k in config.keeps):
            options = methods[name]
            run = EvalConfig(keep=keep, layer=None if "pack" in options else layer, seed=config.seed,
                             limit=config.eval_images, workers=0, **options)
            report = evaluate(clip, eval_dir, run)
            accuracy[name][keep] = report.pruned.top1
            unpruned = report.unpruned.top1
            update(done + 1, len(methods) * len(config.keeps))
    return accuracy, unpruned


def _bench(clip, artifacts: list[Path], pack: Path, config: QuickstartConfig, progress):
    """The exported graphs and engines as validated: torch and ONNX Runtime on the CPU, TensorRT where engines were
    built."""
    from prtk.engines.benchmark import BenchConfig, Timing, bench_artifacts

    engines = any(path.suffix == ".engine" for path in artifacts)
    bench = BenchConfig(pack=str(pack), backends=("torch", "onnxruntime", *(("tensorrt",) if engines else ())),
                        batches=config.batches, seed=config.seed, timing=Timing(2, 10, 1.0))
    with progress("6/6 bench", "batch") as update:
        return bench_artifacts(artifacts, bench, clip, progress=update)


def _summary(clip, config, records, validations, accuracy, unpruned, bench, engines, pack: Path,
             trained: RankerPack) -> dict:
    largest, rows = max(config.batches), bench.rows
    speedup, vs_fastest, bound = {}, {}, {}
    for row in rows:
        if row.batch == largest and row.keep is not None:
            label = row.backend if row.variant == "fp32" else f"{row.backend} {row.variant}"
            speedup.setdefault(label, {})[row.keep] = row.speedup
            vs_fastest.setdefault(label, {})[row.keep] = row.paired_vs_fastest_unpruned
            bound[row.keep] = row.bound
    int8 = {k: report for (variant, k), report in validations.items() if variant == INT8_VARIANT}
    return {
        "prtk_version": __version__,
        "model": clip.name,
        "config": asdict(config),
        "pack": {"path": str(pack), "metrics": trained.meta["metrics"]["predictor"]},
        "unpruned_top1": unpruned,
        "accuracy": {name: {f"{k:g}": v for k, v in points.items()} for name, points in accuracy.items()}
        | {f"predictor + {config.num_tokens} tokens, {INT8_VARIANT} ONNX": {f"{k:g}": int8[k].top1["artifact"]
                                                                          for k in config.keeps}},
        "exports": [{"file": r.path.name, "keep": r.artifact.keep, "gflops": r.artifact.gflops,
                     "checks_passed": r.passed} for r in records],
        "engines": [path.name for path in engines],
        "validation": {label: {("full" if k is None else f"{k:g}"): {
            "passed": report.passed, "agreement": report.agreement, "top1": report.top1, "cosine": report.cosine}
            for (v, k), report in validations.items() if v == label}
            for label in dict.fromkeys(label for label, _ in validations)},
        "speedup_batch": largest,
        "speedup": {backend: {f"{k:g}": v for k, v in points.items()} for backend, points in speedup.items()},
        "fastest_unpruned": bench.fastest_unpruned[largest],
        "vs_fastest_unpruned": {backend: {f"{k:g}": v for k, v in points.items()}
                                for backend, points in vs_fastest.items()},
        "bound": {f"{k:g}": v for k, v in bound.items()},
        "bench": [asdict(row) for row in rows],
    }


def _plots(clip: LoadedClip, out: Path, config: QuickstartConfig, summary: dict, pack: RankerPack,
           images: torch.Tensor) -> None:
    from prtk.quickstart.plots import plot_accuracy, plot_kept_patches, plot_speedup

    as_float = {name: {float(k): v for k, v in points.items()} for name, points in summary["accuracy"].items()}
    plot_accuracy(as_float, summary["unpruned_top1"], out / "accuracy_vs_keep.png")
    plot_speedup({b: {float(k): v for k, v in p.items()} for b, p in summary["speedup"].items()},
                 {float(k): v for k, v in summary["bound"].items()}, summary["speedup_batch"],
                 out / "speedup_vs_keep.png")
    keep = sorted(config.keeps)[len(config.keeps) // 2]
    with torch.inference_mode():
        _, kept = build_tower(clip, TowerSpec(keep, "predictor"), pack)(images, return_indices=True)
    preprocess = clip.preprocess_config
    plot_kept_patches(images, kept, preprocess["mean"], preprocess["std"], clip.spec.patch_size,
                      [f"image {i}" for i in range(len(images))], out / "kept_patches.png")


def summary_markdown(summary: dict) -> str:
    """The quickstart's table and pictures as Markdown."""
    keeps = [f"{k:g}" for k in summary["config"]["keeps"]]
    lines = [f"# prtk quickstart: {summary['model']}", "",
             f"Unpruned zero-shot top-1: {summary['unpruned_top1']:.2f}%; the whole pipeline took "
             f"{summary['seconds']:.0f} s.", "",
             "| top-1 % | " + " | ".join(f"keep {k}" for k in keeps) + " |",
             "|---|" + "---|" * len(keeps)]
    for name, points in summary["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(f"{points[k]:.2f}" for k in keeps) + " |")
    gflops = {f"{e['keep']:g}": e["gflops"] for e in summary["exports"] if e["keep"] is not None}
    full = next(e["gflops"] for e in summary["exports"] if e["keep"] is None)
    lines.append(f"| GFLOPs (unpruned {full:.3f}) | " + " | ".join(f"{gflops[k]:.3f}" for k in keeps) + " |")
    for backend, points in summary["speedup"].items():
        lines.append(f"| {backend} speedup, batch {summary['speedup_batch']} | "
                     + " | ".join(speedup_text(points[k], summary["bound"][k]) for k in keeps) + " |")
    lines.append("| cost-model bound | " + " | ".join(f"{summary['bound'][k]:.2f}x" for k in keeps) + " |")
    for backend, points in summary["vs_fastest_unpruned"].items():
        if backend != "torch":
            lines.append(f"| {backend} vs fastest unpruned ({summary['fastest_unpruned']}, paired), batch "
                         f"{summary['speedup_batch']} | "
                         + " | ".join(f"{points[k]:.2f}x" for k in keeps) + " |")
    for variant, reports in summary["validation"].items():
        lines.append(f"| validate {variant} (agreement %) | " + " | ".join(
            f"{'pass' if reports[k]['passed'] else 'FAIL'} ({reports[k]['agreement']:.2f})" for k in keeps) + " |")
    lines += ["", f"TensorRT engines: {', '.join(summary['engines']) or 'skipped (no TensorRT or no GPU here)'}.", "",
              "![accuracy vs keep ratio](accuracy_vs_keep.png)", "", "![speedup vs keep ratio](speedup_vs_keep.png)",
              "", "![kept patches](kept_patches.png)", ""]
    return "\n".join(lines)
