"""``prune_structure``: targets -> module importance -> the smaller model -> distillation -> files.

Everything a run finishes is kept in ``OUT/.NAME.run/`` (module errors per calibration batch, the width-pruned
model, the distillation state per epoch), so the same command continues a killed run. The model's config,
weights and card are moved into ``OUT`` together at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prtk import __version__
from prtk.core.console import progress_bar
from prtk.core.errors import PrtkInputError
from prtk.core.files import (check_writable, commit_together, finish_commits, folder_writer_lock, prepare_run_folder,
                             write_bytes_atomic, write_json_atomic)
from prtk.data.folder import ImageFolderDataset, class_display_name
from prtk.models import LoadedClip, shipped_model_names
from prtk.models.zeroshot import class_embeddings, topk_correct, zero_shot_logits
from prtk.pruning.cost import gflops, vision_macs
from prtk.structure.distillation import DistillConfig, DistillTargets, distill
from prtk.structure.metric import Calibration, ModuleError, module_errors
from prtk.structure.modules import TowerModule, block_modules, magnitude, width_modules
from prtk.structure.selection import SELECTIONS, StructureShape, keep_per_block, random_scores, resolve_shape
from prtk.structure.surgery import KeptModules, write_model

METRICS = ("zero-shot", "similarity")


@dataclass(frozen=True)
class StructureConfig:
    """Targets (any of ``heads``, ``mlp``, ``depth``; ``gflops`` picks the ones not given), how modules are
    chosen (``selection``: mope | magnitude | random; MoPE's ``metric``: zero-shot accuracy drop or embedding
    similarity drop), and the distillation."""

    heads: int | None = None
    mlp: int | None = None
    depth: int | None = None
    gflops: float | None = None
    selection: str = "mope"
    metric: str = "zero-shot"
    mlp_group: int | None = None  # channels per MLP module; default: the head width
    calibration_images: int = 512
    batch_size: int = 64
    seed: int = 0
    name: str | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)

    def group(self, clip: LoadedClip) -> int:
        spec = clip.spec
        return self.mlp_group if self.mlp_group is not None else math.gcd(spec.head_width, spec.mlp_width)

    def check(self) -> None:
        if self.selection not in SELECTIONS:
            raise PrtkInputError(f"--select must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.metric not in METRICS:
            raise PrtkInputError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        for option, value in (("--calibration-images", self.calibration_images), ("--batch-size", self.batch_size),
                              ("--distill-images", self.distill.images)):
            if value < 1:
                raise PrtkInputError(f"{option} must be at least 1, got {value}")
        if self.distill.epochs < 0:
            raise PrtkInputError(f"--distill-epochs must be at least 0, got {self.distill.epochs}")
        if self.distill.epochs and self.distill.images < 2:
            raise PrtkInputError(f"--distill-images must be at least 2 (one to train on, one held out to pick the "
                                 f"best epoch), got {self.distill.images}")
        if self.mlp_group is not None and self.mlp_group < 1:
            raise PrtkInputError(f"--mlp-group must be at least 1, got {self.mlp_group}")
        if not self.distill.lr > 0:
            raise PrtkInputError(f"--lr must be above 0, got {self.distill.lr:g}")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise PrtkInputError(f"--name must be a file stem (no '/', not starting with '.'), got {self.name!r}")
        if self.name is not None and self.name in shipped_model_names():
            raise PrtkInputError(f"--name {self.name} is the name of a model that ships with prtk or open_clip: "
                                 "loading the smaller model by it would be ambiguous; choose another name")


@dataclass(frozen=True)
class StructureResult:
    """The files written and what the run measured."""

    name: str
    config_path: str
    weights_path: str
    card_path: str
    shape: StructureShape
    parent_gflops: float
    gflops: float
    calibration_top1: dict  # {"parent", "pruned", "distilled"}: zero-shot top-1 (%) on the calibration images
    distillation: list  # per epoch: train loss, held-out loss and agreement

    def as_dict(self) -> dict:
        return asdict(self)


def plan_shape(clip: LoadedClip, config: StructureConfig) -> StructureShape:
    """The pruned shape ``config`` asks of ``clip`` (bad targets refused in one line)."""
    config.check()
    return resolve_shape(clip.spec, config.heads, config.mlp, config.depth, config.gflops, config.group(clip))


def output_paths(out: Path, name: str) -> dict[str, Path]:
    """The smaller model's files (config, weights, card) in ``out``."""
    return {"config": out / f"{name}.json", "weights": out / f"{name}.safetensors", "card": out / f"{name}.card.json"}


def run_folder(out: Path, name: str) -> Path:
    """Where a run keeps what it finished (module errors, the distillation state) until it ends."""
    return out / f".{name}.run"


def prune_structure(clip: LoadedClip, data_root: str | Path, out: str | Path, config: StructureConfig, *,
                    force: bool = False) -> StructureResult:
    """Prune ``clip``'s image tower to ``config``'s targets on the images of ``data_root`` and write the smaller
    model (``NAME.json`` config, ``NAME.safetensors``, ``NAME.card.json``) into ``out``."""
    shape = plan_shape(clip, config)
    name = config.name or f"{clip.name}-{shape.tag}"
    out = Path(out)
    with folder_writer_lock(out, "prune-structure"):
        finish_commits(out)
        paths = output_paths(out, name)
        for path in paths.values():
            check_writable(path, force)
        return _prune(clip, data_root, out, config, shape, name, paths, force)


def _prune(clip: LoadedClip, data_root: str | Path, out: Path, config: StructureConfig, shape: StructureShape,
           name: str, paths: dict[str, Path], force: bool) -> StructureResult:
    spec, group = clip.spec, config.group(clip)
    dataset = ImageFolderDataset(data_root, clip.preprocess, spec.image_size)
    classifier = class_embeddings(clip.model, clip.tokenizer, [class_display_name(c) for c in dataset.classes])
    run = run_folder(out, name)
    prepare_run_folder(run, {"model": clip.name, "weights": clip.weights_sha256, "data": str(Path(data_root).resolve()),
                             "images": len(dataset), "config": asdict(config), "prtk": __version__}, discard=force)

    calibration_rows = _sample(len(dataset), config.calibration_images, config.seed)
    images, labels = _load(dataset, calibration_rows, "calibration images")
    calibration = Calibration(images, labels if config.metric == "zero-shot" else None,
                              classifier if config.metric == "zero-shot" else None)
    width, errors = width_modules(spec, group), []
    if (shape.heads, shape.mlp_width) == (spec.heads, spec.mlp_width):
        width_scores = {module: (0.0,) for module in width}  # width kept: nothing to rank
    else:
        width_scores, errors = _importance(clip, width, config, calibration, group, run / "width_errors.json",
                                           "width")
    kept_heads = {b: keep_per_block(width_scores, "head", b, shape.heads) for b in range(spec.layers)}
    kept_groups = {b: keep_per_block(width_scores, "mlp", b, shape.mlp_width // group) for b in range(spec.layers)}
    kept = KeptModules(tuple(range(spec.layers)), kept_heads, kept_groups, group)
    if shape.depth < spec.layers:
        narrow = write_model(clip, kept, StructureShape(shape.heads, shape.mlp_width, spec.layers), run,
                             f"{name}.width", {"stage": "width-pruned, before depth pruning"})
        depth_scores, depth_errors = _importance(narrow, block_modules(spec), config, calibration, group,
                                                 run / "depth_errors.json", "depth")
        errors += depth_errors
        ranked = sorted(depth_scores, key=lambda m: (depth_scores[m], m.block))
        kept = KeptModules(tuple(sorted(m.block for m in ranked[spec.layers - shape.depth:])), kept_heads,
                           kept_groups, group)
    lineage = {"parent": {"model": clip.name, "weights": clip.weights | {"sha256": clip.weights_sha256}},
               "selection": config.selection, "metric": config.metric if config.selection == "mope" else None,
               "removed": kept.removed(spec.layers, spec.heads, spec.mlp_width // group)}
    if clip.lineage is not None:
        lineage["parent_lineage"] = clip.lineage
    student = write_model(clip, kept, shape, run, name, lineage)

    top1 = {"parent": _top1(clip, images, labels, classifier, config.batch_size),
            "pruned": _top1(student, images, labels, classifier, config.batch_size)}
    history = []
    if config.distill.epochs:
        history = _distill(clip, student, dataset, classifier, config, run)
        top1["distilled"] = _top1(student, images, labels, classifier, config.batch_size)
    return _commit(clip, student, shape, name, paths, run, config, top1, history, errors, dataset, calibration_rows)


def _sample(count: int, size: int, seed: int) -> torch.Tensor:
    """A seeded subset of ``size`` of ``count`` rows, ascending."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def _load(dataset: ImageFolderDataset, rows: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images ``[n,3,H,W]`` and labels ``[n]`` of ``rows``; an unreadable file is named."""
    images, labels = [], []
    with progress_bar(f"load {what}") as update:
        for done, row in enumerate(rows.tolist()):
            pixels, label, _, error = dataset[row]
            if error:
                raise PrtkInputError(f"cannot read image {dataset.records[row].path}: {error}")
            images.append(pixels)
            labels.append(label)
            if done % 256 == 255 or done == len(rows) - 1:
                update(done + 1, len(rows))
    return torch.stack(images), torch.tensor(labels)


def _importance(clip: LoadedClip, modules: list[TowerModule], config: StructureConfig, calibration: Calibration,
                group: int, state_path: Path, what: str) -> tuple[dict[TowerModule, tuple], list[ModuleError]]:
    """Scores (higher = keep) of ``modules`` by the chosen selection, and the MoPE errors when measured."""
    if config.selection == "magnitude":
        return {m: (magnitude(clip.visual, m, group),) for m in modules}, []
    if config.selection == "random":
        return random_scores(modules, config.seed + (0 if what == "width" else 1)), []
    with progress_bar(f"MoPE of {len(modules)} {what} modules") as update:
        errors = module_errors(clip.visual, calibration, modules, group, config.batch_size, state_path,
                               {"model": clip.name, "weights": clip.weights_sha256}, update)
    return {error.module: error.rank_key for error in errors}, errors


@torch.inference_mode()
def _top1(clip: LoadedClip, images: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
          batch_size: int) -> float:
    """Zero-shot top-1 (%) of ``clip`` on preprocessed ``images``."""
    correct = sum(topk_correct(zero_shot_logits(clip.visual(images[start:start + batch_size]), classifier),
                               labels[start:start + batch_size], ks=(1,))[1]
                  for start in range(0, len(images), batch_size))
    return 100.0 * correct / len(images)


def _distill(teacher: LoadedClip, student: LoadedClip, dataset: ImageFolderDataset, classifier: torch.Tensor,
             config: StructureConfig, run: Path) -> list[dict]:
    rows = _sample(len(dataset), config.distill.images, config.seed + 1)
    images, _ = _load(dataset, rows, "distillation images")
    with torch.no_grad():
        teacher_embeddings = torch.cat([teacher.visual(images[start:start + config.batch_size])
                                        for start in range(0, len(images), config.batch_size)])
    targets = DistillTargets(images.half(), teacher_embeddings, classifier.clone(), teacher.logit_scale)
    with progress_bar(f"distil {student.name}", unit="step") as update:
        return distill(student.visual, targets, config.distill, run / "distillation.pt", update)


def _commit(parent: LoadedClip, student: LoadedClip, shape: StructureShape, name: str, paths: dict[str, Path],
            run: Path, config: StructureConfig, top1: dict, history: list, errors: list[ModuleError],
            dataset: ImageFolderDataset, calibration_rows: torch.Tensor) -> StructureResult:
    from safetensors.torch import save

    weights = save({key: value.contiguous() for key, value in student.model.state_dict().items()})
    model_config = json.loads((run / f"{name}.json").read_text())
    digest = hashlib.sha256()
    for row in calibration_rows.tolist():
        digest.update(f"{dataset.relative_path(row)}|{dataset.sha256(row)}|".encode())
    result = StructureResult(name=name, config_path=str(paths["config"]), weights_path=str(paths["weights"]),
                             card_path=str(paths["card"]), shape=shape,
                             parent_gflops=gflops(vision_macs(parent.spec)), gflops=shape.gflops(parent.spec),
                             calibration_top1=top1, distillation=history)
    card = {"model": name, "prtk_version": __version__, "lineage": model_config["prtk_lineage"],
            "shape": asdict(shape), "gflops": {"parent": result.parent_gflops, "pruned": result.gflops},
            "config": asdict(config), "calibration": {"images": len(calibration_rows), "seed": config.seed,
                                                      "root": str(dataset.root), "sha256": digest.hexdigest()},
            "calibration_top1": top1, "distillation": history, "module_errors": [e.as_dict() for e in errors],
            "weights": {"file": paths["weights"].name, "sha256": hashlib.sha256(weights).hexdigest()}}
    staged = {role: run / f"staged.{path.name}" for role, path in paths.items()}
    write_json_atomic(staged["config"], model_config)
    write_bytes_atomic(staged["weights"], weights)
    write_json_atomic(staged["card"], card)
    commit_together(name, [(staged[role], paths[role]) for role in ("config", "weights", "card")])
    shutil.rmtree(run)
    return result
