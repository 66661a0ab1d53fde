"""What ``validate`` found, as a report: the pass/fail ``Thresholds`` per precision, the ``ValidationReport`` built
from the per-image columns a validation collects (``build_report``), and the report written as Markdown and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prtk import __version__
from prtk.core.files import write_bytes_atomic, write_json_atomic
from prtk.export.artifact import Artifact
from prtk.export.criteria import Thresholds
from prtk.export.tensor_comparison import TensorComparison
from prtk.models import LoadedClip

from .cpp_program import CppProgram


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


def build_report(artifact: Artifact, backend: str, program: CppProgram | None, clip: LoadedClip, dataset, columns: dict,
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
    if overlap is not None:
        identical = 100.0 * float((overlap == 1.0).mean())
        criteria["kept_identical"] = Criterion(identical, thresholds.min_kept_identical,
                                               identical >= thresholds.min_kept_identical)
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
        weights_sha256=clip.weights_sha256, pruning=artifact.pruning_json(),
        data={"root": data_root, "images": int(len(labels)), "classes": dataset.classes}, top1=top1,
        delta_vs_unpruned=top1["artifact"] - top1["unpruned"], delta_vs_pruned=delta_pruned, agreement=agreement,
        cosine={"min": float(cosine.min()), "mean": float(cosine.mean())}, max_abs_diff=embedding.max_abs_diff,
        max_relative_error=max_relative,
        kept_overlap=None if overlap is None else {"mean": float(overlap.mean()), "min": float(overlap.min()),
                                                   "identical": criteria["kept_identical"].value},
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
