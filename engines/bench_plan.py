"""What a bench times: the artifacts named (``collect_artifacts``: files, or folders as ``prtk export`` and ``prtk
build-engine`` write them) and, per backend, the contenders among them (``plan_contenders``): each artifact its
description lets the backend run, each compared with the unpruned tower of its own model, backend and variant, or
with a ``--baseline`` artifact of any model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from prtk.core.errors import PrtkInputError
from prtk.export.artifact import GRAPH_BACKENDS, Artifact


@dataclass(frozen=True)
class Contender:
    """One thing timed: ``artifact`` on ``backend`` (torch: the PyTorch module an fp32 graph was exported from), in
    ``variant`` (the artifact's; fp32 for torch)."""

    backend: str
    variant: str
    artifact: Artifact

    @property
    def key(self) -> tuple[str, Path]:
        return self.backend, self.artifact.path

    @property
    def keep(self) -> float | None:
        return self.artifact.keep

    @property
    def group(self) -> tuple:
        """Model, weights and pack, variant and level: what a pruned artifact shares with its unpruned reference."""
        return self.artifact.origin, self.variant, self.artifact.optimize

    def is_twin_of(self, other: Contender) -> bool:
        """Same backend and group: one of the two is the other's unpruned reference."""
        return (self.backend, self.group) == (other.backend, other.group)


def artifact_labels(artifacts: list[Artifact]) -> dict[Path, str]:
    """Each artifact's name in tables: its file name, or ``folder/name`` where another has the same file name."""
    names = [artifact.path.name for artifact in artifacts]
    return {artifact.path: artifact.path.name if names.count(artifact.path.name) == 1
            else f"{artifact.path.parent.name}/{artifact.path.name}" for artifact in artifacts}


def collect_artifacts(targets: Sequence[str | Path]) -> list[Artifact]:
    """Every ``.onnx`` and ``.engine`` among ``targets`` (files, or folders), each read and checked with its
    sidecar; refused in one line when one is named twice."""
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
    return [Artifact.read(path) for path in paths]


def plan_contenders(artifacts: list[Artifact], backends: Sequence[str], variants: Sequence[str] | None = None,
                    baseline: Artifact | None = None) -> list[Contender]:
    """The contenders of ``backends`` over ``artifacts`` (ONNX Runtime and OpenVINO only on graphs of ``variants``
    when given); per backend grouped by model, variant and level, each group's unpruned tower first, then the pruned
    ones by keep (two pruned ones of one schedule, e.g. quantized two ways, both compare with it). Refused in one
    line when a backend has nothing to run, a group has two unpruned towers, or (without a ``baseline``) a pruned
    artifact has no unpruned tower of its model, backend and variant."""
    contenders: list[Contender] = []
    for backend in backends:
        found = [Contender(backend, "fp32" if backend == "torch" else a.variant, a) for a in artifacts
                 if a.runs_on(backend) and (variants is None or backend not in GRAPH_BACKENDS or a.variant in variants)]
        if not found:
            raise PrtkInputError(f"no artifact runs on {backend}: {_runs_on_hint(backend)}")
        for contender in found:
            twin = next((c for c in found if c is not contender and c.is_twin_of(contender) and c.keep is None), None)
            if twin is not None and contender.keep is None:
                raise PrtkInputError(f"{twin.artifact.path.name} and {contender.artifact.path.name} are both {backend} "
                                     f"{contender.variant} {contender.artifact.optimize} unpruned: which is the pruned "
                                     "graphs' reference? bench them separately")
            if baseline is None and not any(c.is_twin_of(contender) and c.keep is None for c in found):
                raise PrtkInputError(f"no unpruned {contender.variant} tower among the artifacts for {backend} to "
                                     "compare with: export with --full (and build its engine), or name a --baseline")
        groups = list(dict.fromkeys(c.group for c in found))
        contenders += sorted(found, key=lambda c: (groups.index(c.group), c.keep is not None, c.keep or 0.0,
                                                   c.artifact.schedule))
    return contenders


def _runs_on_hint(backend: str) -> str:
    return {"tensorrt": "build engines with `prtk build-engine DIR`",
            "torch": "torch times the PyTorch module of an fp32 graph, and there is none",
            }.get(backend, "every graph is for other runtimes (see each sidecar's runtimes)")
