"""``validate``: prove a deployed artifact (.onnx or .engine with its sidecar) gives its reference's answers.

Over an ImageFolder, the artifact (through its runner) and the PyTorch references — the unpruned tower and
the tower pruned with the same pack, scorer and keep ratio — embed every image; zero-shot predictions use
the model's own text tower over the folder's class names. Reported: top-1 of each, the artifact's delta
against both, prediction agreement with the pruned reference, embedding cosine (min, mean), max abs
difference, max relative error, kept-index overlap, and a per-class breakdown; pass/fail against thresholds
for the precision the graph's weights have. Before any of it, the sidecar is checked against the graph
(``prtk.export.description``): an edited or broken sidecar, or a corrupt graph, is bad input.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from prtk import __version__
from prtk.artifacts import file_sha256
from prtk.errors import PrtkInputError
from prtk.models import LoadedClip, check_made_for

from .runners import OnnxRuntimeRunner, Runner, TensorRTRunner, onnxruntime_optimization


@dataclass(frozen=True)
class Thresholds:
    """Pass when agreement >= ``min_agreement`` %, min cosine >= ``min_cosine``, |top-1 delta against the
    pruned reference| <= ``max_accuracy_delta`` points, the largest element difference of the embeddings
    <= ``max_abs_diff`` and the largest per-image ||artifact - reference|| / ||reference|| <=
    ``max_relative_error``. The last two catch damaged weights that leave the cosine high."""

    min_agreement: float
    min_cosine: float
    max_abs_diff: float
    max_relative_error: float
    max_accuracy_delta: float = 0.1

    @classmethod
    def for_precision(cls, precision: str, **overrides) -> Thresholds:
        base = cls(99.9, 0.9999, 1e-4, 1e-4) if precision == "fp32" else cls(99.5, 0.999, 1e-2, 1e-2)
        return cls(**(asdict(base) | {key: value for key, value in overrides.items() if value is not None}))


@dataclass(frozen=True)
class Artifact:
    """A deployed file, its sidecar (checked against the file) and the precision it computes in.

    For an ONNX graph the precision is the graph's own (its weights' dtype); an engine's is its sidecar's,
    as TensorRT cannot be read here.
    """

    path: Path
    sidecar: dict
    precision: str

    @classmethod
    def read(cls, path: str | Path) -> Artifact:
        from prtk.artifacts import finish_commits
        from prtk.export.description import check_graph_matches, check_sidecar_schema, graph_facts, load_graph

        path = Path(path)
        finish_commits(path.parent)
        if not path.is_file():
            raise PrtkInputError(f"artifact not found: {path}")
        if path.suffix not in (".onnx", ".engine"):
            raise PrtkInputError(f"artifact must be an .onnx or .engine file, got {path.name}")
        sidecar_path = path.with_suffix(".json")
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise PrtkInputError(f"{path.name} has no readable sidecar {sidecar_path.name} "
                                 "(made by `prtk export`)") from None
        if not isinstance(sidecar, dict) or sidecar.get("format") != "prtk-onnx/1":
            raise PrtkInputError(f"{sidecar_path} is not a prtk export sidecar")
        check_sidecar_schema(sidecar, sidecar_path)
        if path.suffix == ".engine":
            return cls(path, sidecar, sidecar["tensorrt"]["precision"] if "tensorrt" in sidecar
                       else sidecar["precision"])
        facts = graph_facts(load_graph(path))
        check_graph_matches(sidecar, facts, path, sidecar_path)
        return cls(path, sidecar, facts.precision)

    @property
    def inputs(self) -> dict[str, Path]:
        """The files the artifact consists of (``{role: path}``), which no output may replace."""
        files = {"ARTIFACT": self.path, "sidecar": self.path.with_suffix(".json")}
        return files | {"weights file": self.path.with_name(name) for name in self.sidecar.get("files", [])[1:]}

    def runner(self) -> Runner:
        if self.path.suffix == ".engine":
            return TensorRTRunner(self.path)
        return OnnxRuntimeRunner(self.path, optimization=onnxruntime_optimization(self.precision))

    def load_options(self) -> dict:
        """``load_clip`` keyword arguments for the weights the artifact was exported from."""
        weights = self.sidecar["weights"]
        source = weights["source"]
        if source == "hub":
            return {"pretrained": weights["pretrained"]}
        if source == "checkpoint":
            return {"checkpoint": weights["path"]}
        if source == "random":
            return {"random_weights": True, "seed": weights["seed"]}
        return {}

    def check_reference(self, clip: LoadedClip, pack_path: str | None) -> None:
        """Refuse a reference that is not the one the artifact was made from: model, weights, input, pack."""
        sidecar = self.sidecar
        check_made_for(self.path.name, sidecar["model"], sidecar["weights"]["sha256"], sidecar["weights"], clip)
        size = sidecar["input"]["shape"][2]
        if size != clip.spec.image_size:
            raise PrtkInputError(f"{self.path.name} takes {size}px images, {clip.name} {clip.spec.image_size}px")
        pack = sidecar.get("pack")
        if pack is None and pack_path is not None:
            raise PrtkInputError(f"{self.path.name} was exported without a pack; drop --pack")
        if pack is not None:
            if pack_path is None:
                raise PrtkInputError(f"{self.path.name} was exported from a pack: pass it with --pack FILE")
            if not Path(pack_path).is_file():
                raise PrtkInputError(f"pack not found: {pack_path}")
            if file_sha256(Path(pack_path)) != pack["sha256"]:
                raise PrtkInputError(f"{pack_path} is not the pack {self.path.name} was exported from "
                                     f"(sha256 {pack['sha256'][:12]})")


def validate(clip: LoadedClip, artifact: Artifact, data_root: str | Path, thresholds: Thresholds,
             pack_path: str | None = None, limit: int | None = None, batch_size: int = 64,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the artifact and its references over ``data_root``; returns the report (``report["passed"]``)."""
    from prtk.data import ImageFolderDataset, class_display_name, make_loader
    from prtk.export.checks import kept_index_overlap
    from prtk.export.exporter import deployed_tower, load_export_pack
    from prtk.zeroshot import class_embeddings, zero_shot_logits

    artifact.check_reference(clip, pack_path)
    config = _export_config(artifact.sidecar, pack_path)
    pruning = artifact.sidecar["pruning"]
    reference = deployed_tower(clip, config, load_export_pack(clip, config), None if pruning is None
                               else pruning["keep"])
    runner = artifact.runner()
    dataset = ImageFolderDataset(data_root, clip.preprocess, clip.spec.image_size, limit)
    classifier = class_embeddings(clip.model, clip.tokenizer, [class_display_name(c) for c in dataset.classes])
    columns: dict[str, list] = {name: [] for name in ("label", "unpruned", "pruned", "artifact", "cosine",
                                                       "max_abs", "relative", "kept_overlap")}
    done = 0
    for images, labels, indices, errors in make_loader(dataset, batch_size, 0):
        bad = next((i for i, error in enumerate(errors) if error), None)
        if bad is not None:
            raise PrtkInputError(f"cannot decode image {dataset.records[int(indices[bad])].path}: {errors[bad]}")
        with torch.inference_mode():
            unpruned = clip.visual(images)
            expected = dict(zip(reference.output_names, reference(images), strict=True))
        got = runner(images)
        embedding = torch.from_numpy(got["embedding"]).float()
        columns["label"] += labels.tolist()
        for name, value in (("unpruned", unpruned), ("pruned", expected["embedding"]), ("artifact", embedding)):
            columns[name] += zero_shot_logits(value, classifier).argmax(1).tolist()
        columns["cosine"] += F.cosine_similarity(embedding, expected["embedding"].float(), dim=1).tolist()
        difference = (embedding - expected["embedding"]).double()
        columns["max_abs"] += difference.abs().amax(1).tolist()
        columns["relative"] += (difference.norm(dim=1) / expected["embedding"].double().norm(dim=1)
                                .clamp_min(1e-30)).tolist()
        if "kept_indices" in got and "kept_indices" in expected:
            columns["kept_overlap"] += kept_index_overlap(got["kept_indices"], expected["kept_indices"].numpy())
        done += len(labels)
        if progress is not None:
            progress(done, len(dataset))
    return _report(artifact, clip, dataset, columns, thresholds, str(data_root))


def _export_config(sidecar: dict, pack_path: str | None):
    from prtk.export.exporter import ExportConfig

    pruning, export = sidecar["pruning"], sidecar["export"]
    keeps = (pruning["keep"],) if pruning else (1.0,)
    baseline = pruning is not None and pruning["scorer"] != "predictor"
    return ExportConfig(keeps=keeps, pack=pack_path, scorer=pruning["scorer"] if baseline else "cls-attention",
                        layer=pruning["layer"] if baseline else None, tokens=export["tokens"],
                        normalize=export["normalize"], kept_indices=True,
                        seed=pruning["seed"] if baseline and pruning["seed"] is not None else 0)


def _report(artifact: Artifact, clip: LoadedClip, dataset, columns: dict, thresholds: Thresholds,
            data_root: str) -> dict:
    labels = np.array(columns["label"])
    predictions = {name: np.array(columns[name]) for name in ("unpruned", "pruned", "artifact")}
    top1 = {name: 100.0 * float((values == labels).mean()) for name, values in predictions.items()}
    agreement = 100.0 * float((predictions["artifact"] == predictions["pruned"]).mean())
    cosine = np.array(columns["cosine"])
    overlap = np.array(columns["kept_overlap"]) if columns["kept_overlap"] else None
    delta_pruned = top1["artifact"] - top1["pruned"]
    max_abs, max_relative = float(max(columns["max_abs"])), float(max(columns["relative"]))
    criteria = {
        "agreement": {"value": agreement, "threshold": thresholds.min_agreement,
                      "passed": agreement >= thresholds.min_agreement},
        "min_cosine": {"value": float(cosine.min()), "threshold": thresholds.min_cosine,
                       "passed": float(cosine.min()) >= thresholds.min_cosine},
        "accuracy_delta_vs_pruned": {"value": delta_pruned, "threshold": thresholds.max_accuracy_delta,
                                     "passed": abs(delta_pruned) <= thresholds.max_accuracy_delta + 1e-9},
        "max_abs_diff": {"value": max_abs, "threshold": thresholds.max_abs_diff,
                         "passed": max_abs <= thresholds.max_abs_diff},
        "max_relative_error": {"value": max_relative, "threshold": thresholds.max_relative_error,
                               "passed": max_relative <= thresholds.max_relative_error},
    }
    per_class = {}
    for index, name in enumerate(dataset.classes):
        chosen = labels == index
        per_class[name] = {"images": int(chosen.sum()),
                           **{f"top1_{key}": 100.0 * float((values[chosen] == index).mean()) if chosen.any() else 0.0
                              for key, values in predictions.items()},
                           "agreement": 100.0 * float((predictions["artifact"][chosen]
                                                       == predictions["pruned"][chosen]).mean()) if chosen.any()
                           else 0.0}
    return {
        "prtk_version": __version__,
        "artifact": str(artifact.path),
        "precision": artifact.precision,
        "model": clip.name,
        "weights_sha256": clip.weights_sha256,
        "pruning": artifact.sidecar["pruning"],
        "data": {"root": data_root, "images": int(len(labels)), "classes": dataset.classes},
        "top1": top1,
        "delta_vs_unpruned": top1["artifact"] - top1["unpruned"],
        "delta_vs_pruned": delta_pruned,
        "agreement": agreement,
        "cosine": {"min": float(cosine.min()), "mean": float(cosine.mean())},
        "max_abs_diff": max_abs,
        "max_relative_error": max_relative,
        "kept_overlap": None if overlap is None else {"mean": float(overlap.mean()), "min": float(overlap.min()),
                                                      "identical": 100.0 * float((overlap == 1.0).mean())},
        "thresholds": asdict(thresholds),
        "criteria": criteria,
        "passed": all(criterion["passed"] for criterion in criteria.values()),
        "failed": [name for name, criterion in criteria.items() if not criterion["passed"]],
        "per_class": per_class,
    }


def markdown_report(report: dict) -> str:
    """The report as Markdown: a verdict, the accuracy table, the agreement figures and the criteria."""
    top1, kept = report["top1"], report["kept_overlap"]
    verdict = "PASS" if report["passed"] else f"FAIL ({', '.join(report['failed'])})"
    lines = [f"# prtk validate: {Path(report['artifact']).name} — {verdict}", "",
             f"{report['model']} ({report['precision']}), {report['data']['images']} images from "
             f"`{report['data']['root']}`.", "",
             "| model | top-1 % |", "|---|---|",
             f"| unpruned (PyTorch) | {top1['unpruned']:.2f} |", f"| pruned (PyTorch) | {top1['pruned']:.2f} |",
             f"| artifact | {top1['artifact']:.2f} |", "",
             f"- delta vs unpruned: {report['delta_vs_unpruned']:+.2f} points; vs pruned: "
             f"{report['delta_vs_pruned']:+.2f} points",
             f"- prediction agreement with the pruned reference: {report['agreement']:.2f}%",
             f"- embedding cosine: min {report['cosine']['min']:.6f}, mean {report['cosine']['mean']:.6f}; "
             f"max abs difference {report['max_abs_diff']:.2e}, max relative error "
             f"{report['max_relative_error']:.2e}"]
    if kept is not None:
        lines.append(f"- kept indices: mean overlap {kept['mean']:.4f}, min {kept['min']:.4f}, identical on "
                     f"{kept['identical']:.2f}% of images")
    lines += ["", "| criterion | value | threshold | result |", "|---|---|---|---|"]
    for name, criterion in report["criteria"].items():
        lines.append(f"| {name} | {criterion['value']:.6g} | {criterion['threshold']:g} | "
                     f"{'pass' if criterion['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"
