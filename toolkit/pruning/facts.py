"""What a pruned tower prunes, as facts every report shares (an evaluation's, an artifact's description): where
each stage keeps how many patches, ranked by what, and the cost model's block ratio."""

from __future__ import annotations

from dataclasses import dataclass, field

from .cost import block_cost_ratio, vision_macs
from .tower import PrunedVisionTower


@dataclass(frozen=True)
class StageFacts:
    """A stage after the first: ``keep_count`` = k of the ``keep`` ratio of the patches entering ``block``,
    ranked by ``scorer``."""

    block: int
    keep: float
    keep_count: int
    scorer: str


@dataclass(frozen=True)
class PruningFacts:
    """The pruned tower: ``keep_count`` = k patches kept at the input of block ``layer`` (ranked by ``scorer``;
    ``seed``: the random scorer's), ``learnable_tokens`` appended, the dropped patches fused into one token or not,
    then each of ``later_stages``; ``block_cost_ratio``: the cost model's pruned / unpruned cost of the blocks."""

    layer: int
    keep: float
    keep_count: int
    scorer: str
    seed: int | None
    fuse_dropped: bool
    learnable_tokens: int
    block_cost_ratio: float
    later_stages: tuple[StageFacts, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, tower: PrunedVisionTower, scorer: str, seed: int | None) -> PruningFacts:
        """The facts of ``tower``, whose first stage ``scorer`` ranks (with ``seed``)."""
        tokens = tower.num_learnable_tokens
        return cls(layer=tower.layer, keep=tower.keep, keep_count=tower.keep_count, scorer=scorer, seed=seed,
                   fuse_dropped=tower.fuse_dropped, learnable_tokens=tokens,
                   block_cost_ratio=block_cost_ratio(tower.spec, tower.keep, tower.layer, tokens, tower.fuse_dropped,
                                                     tower.later_stages),
                   later_stages=tuple(StageFacts(block, keep, count, tower.stage_scorer.name)
                                      for (block, keep), count in zip(tower.later_stages, tower.stage_counts[1:])))

    @property
    def stages(self) -> tuple[tuple[int, float], ...]:
        """The later stages as ``(block, keep)``, as ``TowerSpec`` takes them."""
        return tuple((stage.block, stage.keep) for stage in self.later_stages)

    @property
    def bound(self) -> float:
        """The cost model's bound on the speedup over the unpruned tower."""
        return 1 / self.block_cost_ratio


def tower_macs(tower: PrunedVisionTower) -> float:
    """Multiply-accumulates per image of ``tower``'s blocks and patch embedding by the cost model (its scorer's own
    cost aside)."""
    return vision_macs(tower.spec, tower.keep, tower.layer, tower.num_learnable_tokens, tower.fuse_dropped,
                       tower.later_stages)
