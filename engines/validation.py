"""``validate``: prove a deployed artifact (.onnx or .engine with its sidecar) gives its reference's answers.

Over an ImageFolder, the artifact (through its runner) and the PyTorch references — the unpruned tower and
the tower pruned with the same pack, scorer and keep ratio — embed every image; zero-shot predictions use
the model's own text tower over the folder's class names. Reported: top-1 of each, the artifact's delta
against both, prediction agreement with the pruned reference, embedding cosine (min, mean), max abs
difference (Polygraphy's comparator over every batch, ``prtk.export.tensor_comparison``), max relative error,
kept-index overlap, and a per-class breakdown; pass/fail against thresholds for the precision the graph's
weights have. The tensor comparison can be saved as Polygraphy run results, with a data-loader script that
feeds ``polygraphy run`` the same batches, and the report names the ``polygraphy run`` command that repeats it.
Before any of it, the sidecar is checked against the graph (``prtk.export.artifact``): an edited or broken
sidecar, or a corrupt graph, is bad input.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from prtk import __version__
from prtk.core.errors import PrtkInputError
from prtk.core.files import commit_together, write_bytes_atomic, write_json_atomic
from prtk.export.artifact import ArtifactFile
from prtk.export.onnxruntime_session import onnxruntime_optimization
from prtk.export.tensor_comparison import RunRecorder, TensorComparison, tolerance_flags
from prtk.models import LoadedClip

from .cpp_program import CppProgram
from .runners import OnnxRuntimeRunner, OpenVinoRunner, Runner

ONNX_BACKENDS = ("onnxruntime", "openvino")
PROGRAM_BACKENDS = {"cpp-openvino": "openvino"}  # the compiled prtk-embed program -> the runtime it runs the graph on
BACKENDS = ONNX_BACKENDS + tuple(PROGRAM_BACKENDS)


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
        """The defaults for ``precision``, with the ``overrides`` that are not None (each checked against
        ``THRESHOLD_RANGES``)."""
        half = cls(99.5, 0.999, 1e-2, 1e-2)
        base = {"fp32": cls(99.9, 0.9999, 1e-4, 1e-4), "fp16": half, "bf16": half, "int8": INT8_THRESHOLDS}[precision]
        given = {key: value for key, value in overrides.items() if value is not None}
        for key, value in given.items():
            low, high = THRESHOLD_RANGES[key]
            if not low <= value <= high:  # also refuses NaN
                raise PrtkInputError(f"--{key.replace('_', '-')} must be in [{low:g}, {high:g}], got {value:g}")
        return cls(**(asdict(base) | given))


THRESHOLD_RANGES = {"min_agreement": (0.0, 100.0), "min_cosine": (-1.0, 1.0), "max_abs_diff": (0.0, math.inf),
                    "max_relative_error": (0.0, math.inf), "max_accuracy_delta": (0.0, 100.0)}


INT8_THRESHOLDS = Thresholds(99.0, 0.98, 0.1, 0.2, 0.5)  # worst-image criteria loose: int8 moves single images


@dataclass(frozen=True)
class Criterion:
    """One pass/fail test: ``value`` against ``threshold``."""

    value: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class ValidationReport:
    """An artifact against its references over ``data`` (root, images, classes): top-1 (%) of the unpruned and
    pruned references and the artifact, the artifact's deltas (points), agreement with the pruned reference
    (%), embedding cosine (min, mean), largest element and per-image relative difference, kept-index overlap
    (mean, min, identical %; None without kept indices), Polygraphy's tensor comparison and the ``polygraphy run``
    command that repeats it (on ``RESULTS.json`` placeholders unless the results were saved), the criteria, and
    per class."""

    artifact: str
    backend: str
    program: CppProgram | None  # the C++ program that ran the artifact (cpp-openvino), with its build
    precision: str
    model: str
    weights_sha256: str
    pruning: dict | None  # the sidecar's
    data: dict
    top1: dict[str, float]
    delta_vs_unpruned: float
    delta_vs_pruned: float
    agreement: float
    cosine: dict[str, float]
    max_abs_diff: float
    max_relative_error: float
    kept_overlap: dict[str, float] | None
    tensor_comparison: TensorComparison
    results: str | None  # the saved Polygraphy run results
    polygraphy_command: str
    thresholds: Thresholds
    criteria: dict[str, Criterion]
    per_class: dict[str, dict]

    @property
    def passed(self) -> bool:
        return all(criterion.passed for criterion in self.criteria.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, criterion in self.criteria.items() if not criterion.passed]

    def as_dict(self) -> dict:
        """The ``.validation.json`` document."""
        document = {"prtk_version": __version__} | asdict(self)
        return document | {"passed": self.passed, "failed": self.failed}


def validate(clip: LoadedClip, artifact: ArtifactFile, data_root: str | Path, thresholds: Thresholds,
             pack_path: str | None = None, limit: int | None = None, batch_size: int = 64,
             progress: Callable[[int, int], None] | None = None, backend: str = "onnxruntime",
             results_path: str | Path | None = None, program: CppProgram | None = None) -> ValidationReport:
    """Run the artifact (an ONNX graph on ``backend``: ``BACKENDS``; an engine on TensorRT) and its references over
    ``data_root``; ``report.passed`` is the verdict. A ``PROGRAM_BACKENDS`` backend is the compiled ``program``, which
    decodes and preprocesses the image files itself. With ``results_path``, the tensor comparison's run results are
    written there (Polygraphy's JSON) and its data loader beside them (``inputs_script_path``)."""
    from prtk.data.folder import ImageFolderDataset, class_display_name, make_loader
    from prtk.export.checks import kept_index_overlap
    from prtk.models.zeroshot import class_embeddings, zero_shot_logits

    reference = artifact.reference(clip, pack_path)  # refuses a description its reference contradicts
    dataset = ImageFolderDataset(data_root, clip.preprocess, clip.spec.image_size, limit)
    if backend in PROGRAM_BACKENDS:
        check_backend(artifact, backend)
        if program is None:
            raise PrtkInputError(f"backend {backend} needs the compiled program (prtk cpp build)")
        run = ProgramOutputs(program, artifact.path, [record.path for record in dataset.records], batch_size)
        runner_name = "prtk-embed"
    else:
        runner = artifact_runner(artifact, backend)
        run, runner_name = (lambda images, indices: runner(images)), runner.name
    classifier = class_embeddings(clip.model, clip.tokenizer, [class_display_name(c) for c in dataset.classes])
    columns: dict[str, list] = {name: [] for name in ("label", "unpruned", "pruned", "artifact", "cosine",
                                                       "relative", "kept_overlap")}
    recorder = RunRecorder(runner_name)
    done = 0
    for images, labels, indices, errors in make_loader(dataset, batch_size, 0):
        bad = next((i for i, error in enumerate(errors) if error), None)
        if bad is not None:
            raise PrtkInputError(f"cannot decode image {dataset.records[int(indices[bad])].path}: {errors[bad]}")
        with torch.inference_mode():
            unpruned = clip.visual(images)
            expected = dict(zip(reference.output_names, reference(images), strict=True))
        got = run(images, indices.tolist())
        recorder.add({name: value.numpy() for name, value in expected.items()}, got)
        embedding = torch.from_numpy(got["embedding"]).float()
        columns["label"] += labels.tolist()
        for name, value in (("unpruned", unpruned), ("pruned", expected["embedding"]), ("artifact", embedding)):
            columns[name] += zero_shot_logits(value, classifier).argmax(1).tolist()
        columns["cosine"] += F.cosine_similarity(embedding, expected["embedding"].float(), dim=1).tolist()
        difference = (embedding - expected["embedding"]).double()
        columns["relative"] += (difference.norm(dim=1) / expected["embedding"].double().norm(dim=1)
                                .clamp_min(1e-30)).tolist()
        if "kept_indices" in got and "kept_indices" in expected:
            columns["kept_overlap"] += kept_index_overlap(got["kept_indices"], expected["kept_indices"].numpy())
        done += len(labels)
        if progress is not None:
            progress(done, len(dataset))
    comparison = recorder.compare({"embedding": thresholds.max_abs_diff,
                                   "logits": thresholds.max_abs_diff * reference.logit_scale})
    if results_path is not None:
        _save_results(recorder, Path(results_path), inputs_script(artifact.path, data_root, limit, batch_size))
    command = polygraphy_command(artifact, comparison, results_path)
    return _report(artifact, backend if backend in PROGRAM_BACKENDS else runner_name, program, clip, dataset,
                   columns, comparison, None if results_path is None else str(results_path), command, thresholds,
                   str(data_root))


class ProgramOutputs:
    """The compiled program's outputs for a dataset's image files, run ``chunk`` images at a time as validation asks
    for them (``__call__(images, indices)``: the rows of dataset ``indices``; ``images``, the Python side's tensors,
    are not used: the program reads the files)."""

    def __init__(self, program: CppProgram, artifact: Path, paths: list[Path], batch_size: int, chunk: int = 2048):
        self.program, self.artifact, self.paths = program, artifact, paths
        self.batch_size, self.chunk = batch_size, chunk
        self._start: int | None = None
        self._outputs: dict[str, np.ndarray] = {}

    def __call__(self, images: torch.Tensor, indices: list[int]) -> dict[str, np.ndarray]:
        rows: dict[str, list[np.ndarray]] = {}
        for index in indices:
            start = index - index % self.chunk
            if start != self._start:
                self._outputs = self.program.embed(self.artifact, self.paths[start:start + self.chunk],
                                                   self.batch_size)
                self._start = start
            for name, values in self._outputs.items():
                rows.setdefault(name, []).append(values[index - start])
        return {name: np.stack(values) for name, values in rows.items()}


def _save_results(recorder: RunRecorder, results_path: Path, script: str) -> None:
    """The run results and their data-loader script, staged and moved into place together."""
    script_path = inputs_script_path(results_path)
    staged = [path.with_name(f".{path.name}.partial") for path in (results_path, script_path)]
    recorder.save(staged[0])
    write_bytes_atomic(staged[1], script.encode())
    commit_together(results_path.stem, list(zip(staged, (results_path, script_path), strict=True)))


def inputs_script_path(results_path: str | Path) -> Path:
    """The data-loader script written beside the run results: ``r.json`` -> ``r_inputs.py`` (Polygraphy imports it
    as a module named by its stem, which must not hold a dot)."""
    path = Path(results_path)
    return path.with_name(f"{path.stem.replace('.', '_')}_inputs.py")


def inputs_script(artifact_path: Path, data_root: str | Path, limit: int | None, batch_size: int) -> str:
    """A ``polygraphy run --data-loader-script`` that yields the batches ``validate`` ran, in its order."""
    return (f'"""Written by `prtk validate`: the batches it validated {artifact_path.name} on, for `polygraphy run '
            f'--data-loader-script`."""\n\nfrom prtk.engines.validation import validation_feeds\n\n\n'
            f"def load_data():\n    yield from validation_feeds({str(Path(artifact_path).resolve())!r}, "
            f"{str(Path(data_root).resolve())!r}, limit={limit!r}, batch_size={batch_size})\n")


def validation_feeds(artifact_path: str, data_root: str, limit: int | None, batch_size: int):
    """The graph's input feeds ``{input name: [B,3,H,W] float32}`` of ``validate``'s batches: the same images, in the
    same order, preprocessed as the artifact's description says (which ``validate`` proved to be its model's own
    transform), so no model is loaded: also one from ``--model-config`` / ``--checkpoint`` files."""
    from prtk.data.folder import ImageFolderDataset, make_loader

    artifact = ArtifactFile.read(artifact_path)
    preprocessing = artifact.preprocessing()
    dataset = ImageFolderDataset(data_root, preprocessing.transform(), preprocessing.size, limit)
    for images, *_ in make_loader(dataset, batch_size, 0):
        yield {artifact.sidecar["input"]["name"]: images.numpy()}


def polygraphy_command(artifact: ArtifactFile, comparison: TensorComparison, results_path: str | Path | None) -> str:
    """The ``polygraphy run`` command that reruns the artifact on the saved batches and compares it with the saved
    reference at the same tolerances: an engine on Polygraphy's TensorRT runner, a graph on its ONNX Runtime runner
    (also one validated on OpenVINO, for which Polygraphy has no runner)."""
    results = str(results_path) if results_path is not None else "RESULTS.json"
    runner = "--trt --model-type engine" if artifact.path.suffix == ".engine" else "--onnxrt"
    return " ".join(["polygraphy run", shlex.quote(str(artifact.path)), runner, "--data-loader-script",
                     shlex.quote(str(inputs_script_path(results))), "--load-outputs", shlex.quote(results),
                     tolerance_flags(comparison)])


def runs_on(artifact: ArtifactFile, backend: str) -> bool:
    """Whether ``backend`` (``BACKENDS``) runs the graph ``artifact``: its description lists the runtime (the runtimes
    of its level and quantization whose export checks passed; the C++ program's runtime for ``PROGRAM_BACKENDS``)."""
    return PROGRAM_BACKENDS.get(backend, backend) in artifact.sidecar["runtimes"]


def check_backend(artifact: ArtifactFile, backend: str) -> None:
    """Refuse a backend that cannot run ``artifact``: not an ONNX runtime, or one its sidecar does not list (an
    engine runs on TensorRT, and only there)."""
    if artifact.path.suffix == ".engine":
        if backend in PROGRAM_BACKENDS:
            raise PrtkInputError(f"{artifact.path.name} is a TensorRT engine; {backend} runs .onnx graphs")
        return
    if backend not in BACKENDS:
        raise PrtkInputError(f"an ONNX graph is validated on one of {', '.join(BACKENDS)}, got {backend!r}")
    if not runs_on(artifact, backend):
        raise PrtkInputError(f"{artifact.path.name} runs on {', '.join(artifact.sidecar['runtimes']) or 'no runtime'} "
                             f"only (its description's runtimes), not on {backend}")


def artifact_runner(artifact: ArtifactFile, backend: str = "onnxruntime") -> Runner:
    """The runner of a deployed file: a TensorRT engine, or an ONNX graph on ``backend`` (ONNX Runtime at its
    precision's optimisation level, or OpenVINO)."""
    check_backend(artifact, backend)
    if backend in PROGRAM_BACKENDS:
        raise PrtkInputError(f"backend {backend} runs image files through the compiled program, not tensors")
    if artifact.path.suffix == ".engine":
        from .tensorrt_adapter import TensorRTRunner

        return TensorRTRunner(artifact.path)
    if backend == "openvino":
        return OpenVinoRunner(artifact.path)
    return OnnxRuntimeRunner(artifact.path, optimization=onnxruntime_optimization(artifact.precision))


def _report(artifact: ArtifactFile, backend: str, program: CppProgram | None, clip: LoadedClip, dataset, columns: dict,
            comparison: TensorComparison, results: str | None, command: str, thresholds: Thresholds,
            data_root: str) -> ValidationReport:
    labels = np.array(columns["label"])
    predictions = {name: np.array(columns[name]) for name in ("unpruned", "pruned", "artifact")}
    top1 = {name: 100.0 * float((values == labels).mean()) for name, values in predictions.items()}
    agreement = 100.0 * float((predictions["artifact"] == predictions["pruned"]).mean())
    cosine = np.array(columns["cosine"])
    overlap = np.array(columns["kept_overlap"]) if columns["kept_overlap"] else None
    delta_pruned = top1["artifact"] - top1["pruned"]
    embedding = comparison.outputs["embedding"]
    max_relative = float(max(columns["relative"]))
    criteria = {
        "agreement": Criterion(agreement, thresholds.min_agreement, agreement >= thresholds.min_agreement),
        "min_cosine": Criterion(float(cosine.min()), thresholds.min_cosine,
                                float(cosine.min()) >= thresholds.min_cosine),
        "accuracy_delta_vs_pruned": Criterion(delta_pruned, thresholds.max_accuracy_delta,
                                              abs(delta_pruned) <= thresholds.max_accuracy_delta + 1e-9),
        "max_abs_diff": Criterion(embedding.max_abs_diff, thresholds.max_abs_diff, embedding.passed),
        "max_relative_error": Criterion(max_relative, thresholds.max_relative_error,
                                        max_relative <= thresholds.max_relative_error),
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
    return ValidationReport(
        artifact=str(artifact.path), backend=backend, program=program, precision=artifact.precision, model=clip.name,
        weights_sha256=clip.weights_sha256, pruning=artifact.sidecar["pruning"],
        data={"root": data_root, "images": int(len(labels)), "classes": dataset.classes}, top1=top1,
        delta_vs_unpruned=top1["artifact"] - top1["unpruned"], delta_vs_pruned=delta_pruned, agreement=agreement,
        cosine={"min": float(cosine.min()), "mean": float(cosine.mean())}, max_abs_diff=embedding.max_abs_diff,
        max_relative_error=max_relative,
        kept_overlap=None if overlap is None else {"mean": float(overlap.mean()), "min": float(overlap.min()),
                                                   "identical": 100.0 * float((overlap == 1.0).mean())},
        tensor_comparison=comparison, results=results, polygraphy_command=command, thresholds=thresholds,
        criteria=criteria, per_class=per_class)


def write_report(report: ValidationReport, markdown_path: str | Path, json_path: str | Path) -> str:
    """Write the report as Markdown and as JSON (each atomically); returns the Markdown."""
    text = markdown_report(report)
    write_bytes_atomic(markdown_path, text.encode())
    write_json_atomic(json_path, report.as_dict())
    return text


def markdown_report(report: ValidationReport) -> str:
    """The report as Markdown: a verdict, the accuracy table, the agreement figures and the criteria."""
    top1, kept = report.top1, report.kept_overlap
    verdict = "PASS" if report.passed else f"FAIL ({', '.join(report.failed)})"
    lines = [f"# prtk validate: {Path(report.artifact).name} — {verdict}", "",
             f"{report.model} ({report.precision}, on {report.backend}), {report.data['images']} images from "
             f"`{report.data['root']}`."
             + (f" The images were decoded, preprocessed and run by the C++ program `{report.program.path}` "
                f"({report.program.compiler}; {report.program.runtime})." if report.program else ""), "",
             "| model | top-1 % |", "|---|---|",
             f"| unpruned (PyTorch) | {top1['unpruned']:.2f} |", f"| pruned (PyTorch) | {top1['pruned']:.2f} |",
             f"| artifact | {top1['artifact']:.2f} |", "",
             f"- delta vs unpruned: {report.delta_vs_unpruned:+.2f} points; vs pruned: "
             f"{report.delta_vs_pruned:+.2f} points",
             f"- prediction agreement with the pruned reference: {report.agreement:.2f}%",
             f"- embedding cosine: min {report.cosine['min']:.6f}, mean {report.cosine['mean']:.6f}; "
             f"max abs difference {report.max_abs_diff:.2e}, max relative error "
             f"{report.max_relative_error:.2e}"]
    if kept is not None:
        lines.append(f"- kept indices: mean overlap {kept['mean']:.4f}, min {kept['min']:.4f}, identical on "
                     f"{kept['identical']:.2f}% of images")
    lines += ["", "| criterion | value | threshold | result |", "|---|---|---|---|"]
    for name, criterion in report.criteria.items():
        lines.append(f"| {name} | {criterion.value:.6g} | {criterion.threshold:g} | "
                     f"{'pass' if criterion.passed else 'FAIL'} |")
    comparison = report.tensor_comparison
    outputs = ", ".join(f"{name} max abs diff {output.max_abs_diff:.2e} (atol {output.atol:g}: "
                        f"{'pass' if output.passed else 'FAIL'})" for name, output in comparison.outputs.items())
    saved = report.results is not None
    lines += ["", f"Tensor comparison by {comparison.tool} (check_error_stat {comparison.error_stat}, every batch): "
              f"{outputs}. The same comparison with Polygraphy alone"
              + (":" if saved else " (validate with `--save-results RESULTS.json` to write the run results and "
                 "their data loader):"), "", "```", report.polygraphy_command, "```"]
    return "\n".join(lines) + "\n"
