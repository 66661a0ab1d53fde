"""Tensor-level comparison of a deployed graph with its PyTorch reference, by Polygraphy's comparator.

Both runs are recorded batch by batch as Polygraphy ``RunResults`` (one iteration per batch, runners
``REFERENCE_RUNNER`` and the artifact's), compared with ``SimpleCompareFunc`` per output — the largest
|artifact - reference| element against that output's atol (``check_error_stat max``, rtol 0) — and saved as the
JSON that ``polygraphy inspect data`` reads and ``polygraphy run --load-outputs`` compares against. Compared
are the float outputs (``embedding``, ``logits``); kept indices are judged by their overlap, which Polygraphy
has no comparison for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_RUNNER = "pytorch-reference"
COMPARED_OUTPUTS = ("embedding", "logits")
ERROR_STAT = "max"


@dataclass(frozen=True)
class OutputComparison:
    """One output over every batch: the tolerance and the largest |artifact - reference| element seen."""

    atol: float
    max_abs_diff: float
    passed: bool


@dataclass(frozen=True)
class TensorComparison:
    """Polygraphy's verdict over every batch, per compared output; ``tool`` names Polygraphy and its version."""

    tool: str
    error_stat: str
    outputs: dict[str, OutputComparison]

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs.values())


class RunRecorder:
    """The outputs of the reference and the artifact (runner ``artifact_runner``), batch by batch."""

    def __init__(self, artifact_runner: str):
        from polygraphy.comparator import RunResults

        self.artifact_runner = artifact_runner
        self.results = RunResults()
        self.results[REFERENCE_RUNNER] = []
        self.results[artifact_runner] = []

    def add(self, reference: dict[str, np.ndarray], artifact: dict[str, np.ndarray]) -> None:
        """One batch: each side's outputs by name (numpy; only the compared ones are kept)."""
        from polygraphy.comparator import IterationResult

        for runner, outputs in ((REFERENCE_RUNNER, reference), (self.artifact_runner, artifact)):
            kept = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in outputs.items()
                    if name in COMPARED_OUTPUTS}
            self.results[runner].append(IterationResult(kept, runner_name=runner))

    def compare(self, atol: dict[str, float]) -> TensorComparison:
        """Compare every recorded batch with Polygraphy, ``atol`` per output name."""
        import polygraphy
        from polygraphy.comparator import Comparator, SimpleCompareFunc

        names = [name for name in COMPARED_OUTPUTS if name in self.results[REFERENCE_RUNNER][0]]
        compare = SimpleCompareFunc(atol={name: atol[name] for name in names}, rtol={name: 0.0 for name in names},
                                     check_error_stat=ERROR_STAT)
        with quiet_polygraphy():
            (accuracy,) = Comparator.compare_accuracy(self.results, compare_func=compare)
        (iterations,) = accuracy.values()
        outputs = {name: OutputComparison(atol[name], max(float(it[name].max_absdiff) for it in iterations),
                                          all(bool(it[name]) for it in iterations)) for name in names}
        return TensorComparison(f"polygraphy {polygraphy.__version__}", ERROR_STAT, outputs)

    def save(self, path: str | Path) -> None:
        """Write the run results as Polygraphy's JSON to ``path`` (a staging name: the caller moves it into place)."""
        with quiet_polygraphy():
            self.results.save(str(path))


@contextlib.contextmanager
def quiet_polygraphy():
    """Polygraphy's logger silent (its failures still raise), for the duration."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        yield


def tolerance_flags(comparison: TensorComparison) -> str:
    """The ``polygraphy run`` flags that apply ``comparison``'s tolerances."""
    outputs = comparison.outputs
    return " ".join([f"--atol {' '.join(f'{name}:{o.atol:g}' for name, o in outputs.items())}",
                     f"--rtol {' '.join(f'{name}:0' for name in outputs)}",
                     f"--check-error-stat {' '.join(f'{name}:{comparison.error_stat}' for name in outputs)}"])
