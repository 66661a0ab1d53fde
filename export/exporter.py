"""``export_models``: one static-shape ONNX graph per keep ratio (and the unpruned reference), checked.

Per keep ratio: build the pruned tower (a pack's predictor and tokens, or a baseline scorer), wrap it as
``DeployedTower``, trace it, fold it, describe it (``metadata_props`` and a ``.json`` sidecar), write it to a
staging folder, run the checks on it, then move graph and sidecar into place together
(``prtk.core.files.commit_together``). Nothing in a graph depends on the time or the machine: equal inputs, equal
bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import torch

from prtk import __version__
from prtk.core.files import (check_distinct_outputs, check_not_an_input, check_writable, commit_together,
                             finish_commits, folder_writer_lock, temporary_files_in, write_json_atomic)
from prtk.core.errors import PrtkInputError
from prtk.models import LoadedClip
from prtk.pruning.spec import build_tower
from prtk.pruning.tower import PrunedVisionTower

from .artifact import Artifact, describe, with_checks, zero_shot_classifier
from .checks import CheckResult, check_onnx, check_runtime, check_tensorrt_readiness
from .config import ExportConfig, export_name
from .criteria import Tolerance
from .deployed import INPUT_NAME, DeployedTower
from .lean_blocks import export_blocks
from .onnx_graph import annotate, annotate_saved, fold_constants, graph_structure, save_model, tidy, trace
from .onnxruntime_ops import CUSTOM_OPSETS
from .quantize import CalibrationImages, ControlImages, load_calibration_images, quantize_graph

@dataclass
class ExportRecord:
    """One exported graph: its file(s), the ``Artifact`` it is and its check results."""

    files: list[Path]
    artifact: Artifact
    checks: list[CheckResult]

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def as_dict(self) -> dict:
        """The sidecar with the graph's path, as ``--json`` writes it."""
        return self.artifact.description() | {"path": str(self.path)}


def export_models(clip: LoadedClip, config: ExportConfig, out_dir: str | Path, check_images: torch.Tensor | None,
                  force: bool = False, progress: Callable[[int, int], None] | None = None) -> list[ExportRecord]:
    """Export ``config.keeps`` (and the full tower with ``config.full``) to ``out_dir``; ``check_images``
    ``[n,3,H,W]`` (preprocessed) feed the ONNX Runtime check. Existing files are replaced only with ``force``; a
    second process exporting into ``out_dir`` meanwhile is refused (``folder_writer_lock``)."""
    config.check()
    out_dir = Path(out_dir)
    with folder_writer_lock(out_dir, "export"):
        targets = check_export_outputs(clip.name, config, out_dir, force)
        pack = load_export_pack(clip, config)
        classifier = zero_shot_classifier(clip, config.classes)
        modules = [deployed_tower(clip, config, pack, keep, classifier) for keep in targets]  # refuse before writing
        calibration, control = _calibration(clip, config)
        _remove_abandoned_staging(out_dir)
        records = []
        for done, (keep, module) in enumerate(zip(targets, modules, strict=True)):
            records.append(_export_one(clip, config, module, pack, keep, out_dir, check_images, calibration, control))
            if progress is not None:
                progress(done + 1, len(targets))
    return records


def _calibration(clip: LoadedClip, config: ExportConfig) -> tuple[CalibrationImages | None, ControlImages | None]:
    """The calibration images of an int8-static export, and the accuracy control's images where it has one."""
    quantization = config.quantization
    if quantization is None or not quantization.calibrated:
        return None, None
    return load_calibration_images(quantization, clip.preprocess, clip.spec.image_size,
                                   lambda names: zero_shot_classifier(clip, tuple(names)).numpy(), clip.logit_scale)


def export_outputs(model: str, config: ExportConfig, out_dir: str | Path) -> dict[float | None, dict[str, Path]]:
    """Per keep ratio (None: the unpruned tower), every path its export writes, by role: the graph, its weights
    file, its sidecar, its staging folder and its commit journal."""
    out_dir = Path(out_dir)
    outputs = {}
    for keep in [*config.keeps, *([None] if config.full else [])]:
        stem = export_name(model, keep, config.variant, config.later_stages)
        outputs[keep] = {"the graph": out_dir / f"{stem}.onnx", "the weights file": out_dir / f"{stem}.onnx.data",
                         "the sidecar": out_dir / f"{stem}.json", "the staging folder": out_dir / f".{stem}.staging",
                         "the commit journal": out_dir / f".{stem}.commit.json"}
    return outputs


def check_export_outputs(model: str, config: ExportConfig, out_dir: str | Path, force: bool,
                         inputs: dict[str, str | None] | None = None,
                         others: dict[str, str | None] | None = None) -> list[float | None]:
    """The keep ratios to export (None: the unpruned tower), after refusing outputs that cannot be written: an
    existing file without ``force``, a file that is one of ``inputs`` (``{option: path}``), or one that is
    also another output of the command (``others``: ``{option: path}``, e.g. ``--json``), ``--force`` or not.
    Finishes interrupted commits first. (``check_keeps`` has refused ratios that share a file name.)"""
    out_dir = Path(out_dir)
    finish_commits(out_dir)
    outputs = export_outputs(model, config, out_dir)
    check_distinct_outputs([*(others or {}).items(), *(item for paths in outputs.values() for item in paths.items())])
    for paths in outputs.values():
        for role in ("the graph", "the weights file", "the sidecar"):
            check_not_an_input(paths[role], inputs or {})
        for role in ("the graph", "the sidecar"):
            check_writable(paths[role], force)
    return list(outputs)


def _remove_abandoned_staging(out_dir: Path) -> None:
    """Remove what killed exports left in ``out_dir`` (staging folders no journal refers to: ``finish_commits``
    has completed every journal). Called under the folder's writer lock, so no other export is using them."""
    for staging in out_dir.glob(".*.staging"):
        if staging.is_dir():
            shutil.rmtree(staging)


def deployed_tower(clip: LoadedClip, config: ExportConfig, pack, keep: float | None,
                   classifier: torch.Tensor | None = None) -> DeployedTower:
    """The module exported for ``keep`` (None: the unpruned tower), as ``config`` and ``pack`` describe it."""
    tower = clip.visual if keep is None else build_tower(clip, config.tower_spec(keep), pack, classifier)
    return DeployedTower(tower, config.normalize, classifier, clip.logit_scale, config.kept_indices).eval()


def load_export_pack(clip: LoadedClip, config: ExportConfig):
    """``config.pack`` read and checked against ``clip`` (None without a pack)."""
    if config.pack is None:
        return None
    from prtk.predictor.pack import load_pack

    pack = load_pack(config.pack)
    pack.check_model(clip)
    return pack


def _export_one(clip: LoadedClip, config: ExportConfig, module: DeployedTower, pack, keep: float | None,
                out_dir: Path, check_images: torch.Tensor | None, calibration: CalibrationImages | None = None,
                control: ControlImages | None = None) -> ExportRecord:
    stem = export_name(clip.name, keep, config.variant, config.later_stages)
    staging = out_dir / f".{stem}.staging"
    staging.mkdir(parents=True)
    with temporary_files_in(staging):  # the tracer's and the quantizer's files: removed with the staging folder
        model, quantization = _graph(clip, config, module, calibration, control)
    meta = describe(clip, config, module, pack, keep, graph_structure(model), quantization)
    readiness = check_tensorrt_readiness(model) if config.run_checks and "tensorrt" in config.runtimes else None
    annotate(model, {"prtk": json.dumps(with_checks(meta, []), sort_keys=True)}, __version__)
    staged = save_model(model, staging / f"{stem}.onnx", config.external_threshold)
    checks = []
    if config.run_checks:
        checks.append(check_onnx(staged[0]))
        if check_images is not None:
            checks.append(check_runtime(staged[0], module, check_images, Tolerance.for_precision(config.precision)))
        if readiness is not None:
            checks.append(readiness)
    meta = with_checks(meta, checks)  # the runtimes whose checks passed, and the checks: in the graph too
    if checks:
        annotate_saved(staged[0], {"prtk": json.dumps(meta, sort_keys=True)}, __version__)
    sidecar = meta | {"files": [file.name for file in staged]}
    write_json_atomic(staging / f"{stem}.json", sidecar)
    path = out_dir / f"{stem}.onnx"
    files = [out_dir / file.name for file in staged]
    commit_together(stem, [(file, out_dir / file.name) for file in [*staged, staging / f"{stem}.json"]])
    if len(files) == 1:
        path.with_name(path.name + ".data").unlink(missing_ok=True)  # an earlier export's weights
    shutil.rmtree(staging)
    return ExportRecord(files=files, artifact=Artifact.from_description(path, sidecar), checks=checks)


def _graph(clip: LoadedClip, config: ExportConfig, module: DeployedTower, calibration: CalibrationImages | None,
           control: ControlImages | None) -> tuple[onnx.ModelProto, dict | None]:
    """``module`` traced at ``config.optimize``, folded and tidied, in fp16 or quantized as ``config`` says; and
    the quantization's description (None in float)."""
    spec = clip.spec
    example = torch.zeros(2, 3, spec.image_size, spec.image_size)
    custom_opsets = None if config.level.portable else CUSTOM_OPSETS
    with export_blocks(clip.visual, config.optimize):
        traced = trace(module, example, INPUT_NAME, module.output_names, config.graph_opset, custom_opsets)
    model = tidy(fold_constants(traced))
    if config.fp16:
        from .fp16 import convert_to_fp16

        model = convert_to_fp16(model)
    if config.quantization is None:
        return model, None
    tower = module.tower
    if not isinstance(tower, PrunedVisionTower):
        return quantize_graph(model, config.quantization, calibration, 0, control)
    last_layer = max([tower.layer, *(block for block, _ in tower.later_stages)])
    float_prefix = config.quantization.blocks_before_pruning(bool(tower.later_stages)) == "float"
    return quantize_graph(model, config.quantization, calibration, last_layer if float_prefix else 0, control)


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names for ``--classes``: UTF-8 text, one per line, blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise PrtkInputError(f"classes file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PrtkInputError(f"classes file {path} is not UTF-8 text (byte {error.start}): give one class name per "
                             "line") from None
    if "\x00" in text:
        raise PrtkInputError(f"classes file {path} holds NUL bytes, not text: give one class name per line")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) < 2:
        raise PrtkInputError(f"classes file {path} needs at least 2 class names (one per line), found {len(names)}")
    return names
