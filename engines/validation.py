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

import shlex
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from prtk.core.errors import PrtkInputError
from prtk.core.files import commit_together, write_bytes_atomic
from prtk.export.artifact import GRAPH_BACKENDS, PROGRAM_BACKENDS, Artifact
from prtk.export.criteria import Thresholds
from prtk.export.tensor_comparison import RunRecorder, TensorComparison, tolerance_flags
from prtk.models import LoadedClip

from .cpp_program import CppProgram
from .runners import check_runs_on, runner_for
from .validation_report import ValidationReport, build_report

BACKENDS = GRAPH_BACKENDS + tuple(PROGRAM_BACKENDS)  # an engine is validated on TensorRT, whatever is asked


def validate(clip: LoadedClip, artifact: Artifact, data_root: str | Path, thresholds: Thresholds,
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

    backend = validation_backend(artifact, backend)
    reference = artifact.reference_tower(clip, pack_path)  # refuses a description its reference contradicts
    dataset = ImageFolderDataset(data_root, clip.preprocess, clip.spec.image_size, limit)
    if backend in PROGRAM_BACKENDS:
        if program is None:
            raise PrtkInputError(f"backend {backend} needs the compiled program (prtk cpp build)")
        run = ProgramOutputs(program, artifact.path, [record.path for record in dataset.records], batch_size)
        runner_name = "prtk-embed"
    else:
        runner = runner_for(artifact, backend)
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
    return build_report(artifact, backend if backend in PROGRAM_BACKENDS else runner_name, program, clip, dataset,
                        columns, comparison, None if results_path is None else str(results_path), command,
                        thresholds, str(data_root))


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

    artifact = Artifact.read(artifact_path)
    preprocessing = artifact.preprocessing()
    dataset = ImageFolderDataset(data_root, preprocessing.transform(), preprocessing.size, limit)
    for images, *_ in make_loader(dataset, batch_size, 0):
        yield {artifact.input_name: images.numpy()}


def polygraphy_command(artifact: Artifact, comparison: TensorComparison, results_path: str | Path | None) -> str:
    """The ``polygraphy run`` command that reruns the artifact on the saved batches and compares it with the saved
    reference at the same tolerances: an engine on Polygraphy's TensorRT runner, a graph on its ONNX Runtime runner
    (also one validated on OpenVINO, for which Polygraphy has no runner)."""
    results = str(results_path) if results_path is not None else "RESULTS.json"
    runner = "--trt --model-type engine" if artifact.path.suffix == ".engine" else "--onnxrt"
    return " ".join(["polygraphy run", shlex.quote(str(artifact.path)), runner, "--data-loader-script",
                     shlex.quote(str(inputs_script_path(results))), "--load-outputs", shlex.quote(results),
                     tolerance_flags(comparison)])


def validation_backend(artifact: Artifact, backend: str) -> str:
    """The backend ``validate`` runs ``artifact`` on when asked for ``backend`` (``BACKENDS``): an engine on
    TensorRT (refused for the C++ program, which runs graphs), a graph on ``backend`` if its description lists the
    runtime; refused in one line otherwise."""
    if artifact.is_engine and backend not in PROGRAM_BACKENDS:
        return "tensorrt"
    if backend not in BACKENDS:
        raise PrtkInputError(f"an ONNX graph is validated on one of {', '.join(BACKENDS)}, got {backend!r}")
    check_runs_on(artifact, backend)
    return backend
