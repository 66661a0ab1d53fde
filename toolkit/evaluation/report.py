"""What ``evaluate`` returns: the accuracy of the unpruned and the pruned tower, and what was pruned how."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prtk import __version__
from prtk.pruning.facts import PruningFacts


@dataclass(frozen=True)
class TowerAccuracy:
    """Zero-shot top-1 and top-5 (%), throughput (images/s, timed passes only) and cost (GFLOPs per image)."""

    top1: float
    top5: float
    images_per_s: float
    gflops: float


@dataclass(frozen=True)
class EvalReport:
    """One evaluation over ``images`` images of ``data_root`` (``skipped_bad``: undecodable ones skipped)."""

    model: str
    weights: dict  # the weights' source record and SHA-256
    architecture: dict  # ``ViTSpec.as_dict()``
    data_root: str
    classes: list[str]
    images: int
    skipped_bad: list[str]
    pruning: PruningFacts
    ranking: str | None
    pack: str | None
    device: str
    config: dict  # the ``EvalConfig`` as given
    unpruned: TowerAccuracy
    pruned: TowerAccuracy

    def as_dict(self) -> dict:
        """The ``--json`` document."""
        return {
            "prtk_version": __version__, "model": self.model, "weights": self.weights,
            "architecture": self.architecture,
            "data": {"root": self.data_root, "classes": self.classes, "images": self.images,
                     "skipped_bad": self.skipped_bad},
            "pruning": asdict(self.pruning), "ranking": self.ranking, "pack": self.pack, "device": self.device,
            "config": self.config, "results": {"unpruned": asdict(self.unpruned), "pruned": asdict(self.pruned)},
        }
