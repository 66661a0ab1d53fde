"""Targets and selection: the pruned shape a user asks for (``--heads``, ``--mlp``, ``--depth`` or ``--gflops``)
and which modules are kept to reach it.

Width is pruned first and uniformly (every block keeps ``heads`` heads and ``mlp`` MLP channels, as MoPE-CLIP
prunes width per layer), which keeps every block one static shape for the runtimes; depth is pruned after, on
the width-pruned tower, by removing whole blocks.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

from prtk.core.errors import PrtkInputError
from prtk.models.vit import ViTSpec
from prtk.pruning.cost import gflops, vision_macs
from prtk.structure.modules import TowerModule

SELECTIONS = ("mope", "magnitude", "random")


@dataclass(frozen=True)
class StructureShape:
    """Per-block heads and MLP channels, and blocks, of a structurally pruned tower."""

    heads: int
    mlp_width: int
    depth: int

    def spec(self, parent: ViTSpec) -> ViTSpec:
        return replace(parent, heads=self.heads, mlp_width=self.mlp_width, layers=self.depth)

    def gflops(self, parent: ViTSpec) -> float:
        return gflops(vision_macs(self.spec(parent)))

    @property
    def tag(self) -> str:
        """``h3m192d5``: the shape in a model name."""
        return f"h{self.heads}m{self.mlp_width}d{self.depth}"


MIN_DEPTH = 2  # blocks a tower keeps: token pruning needs one before its layer and one after


def check_mlp_group(spec: ViTSpec, mlp_group: int) -> None:
    if mlp_group < 1 or spec.mlp_width % mlp_group:
        raise PrtkInputError(f"--mlp-group must be a positive divisor of the MLP width {spec.mlp_width}, "
                             f"got {mlp_group}")


def resolve_shape(spec: ViTSpec, heads: int | None, mlp: int | None, depth: int | None,
                  target_gflops: float | None, mlp_group: int) -> StructureShape:
    """The shape the targets ask for; with ``target_gflops`` the dimensions not given are chosen as the shape with
    the most GFLOPs at or under the target (ties: more blocks, then more heads). One-line errors for targets the
    tower cannot meet."""
    check_mlp_group(spec, mlp_group)
    if heads is not None and not 1 <= heads <= spec.heads:
        raise PrtkInputError(f"--heads must be in [1, {spec.heads}] (heads per block to keep), got {heads}")
    if mlp is not None and not (1 <= mlp <= spec.mlp_width and mlp % mlp_group == 0):
        raise PrtkInputError(f"--mlp must be a multiple of the MLP group {mlp_group} in [{mlp_group}, "
                             f"{spec.mlp_width}] (MLP channels per block to keep), got {mlp}")
    if depth is not None and not MIN_DEPTH <= depth <= spec.layers:
        raise PrtkInputError(f"--depth must be in [{MIN_DEPTH}, {spec.layers}] (blocks to keep; a tower keeps at "
                             f"least {MIN_DEPTH}), got {depth}")
    full = gflops(vision_macs(spec))
    if target_gflops is None:
        if heads is None and mlp is None and depth is None:
            raise PrtkInputError("no target given: pass --heads, --mlp, --depth or --gflops")
        shape = StructureShape(spec.heads if heads is None else heads, spec.mlp_width if mlp is None else mlp,
                               spec.layers if depth is None else depth)
    else:
        if not 0 < target_gflops < full:
            raise PrtkInputError(f"--gflops must be above 0 and below the model's {full:.4g} GFLOPs, "
                                 f"got {target_gflops:g}")
        choices = itertools.product(range(MIN_DEPTH, spec.layers + 1) if depth is None else [depth],
                                    range(1, spec.heads + 1) if heads is None else [heads],
                                    range(mlp_group, spec.mlp_width + 1, mlp_group) if mlp is None else [mlp])
        costs = {shape: shape.gflops(spec) for shape in (StructureShape(h, m, d) for d, h, m in choices)}
        fitting = [shape for shape, cost in costs.items() if cost <= target_gflops]
        if not fitting:
            raise PrtkInputError(f"--gflops {target_gflops:g} is below the smallest shape the other targets allow")
        shape = max(fitting, key=lambda s: (costs[s], s.depth, s.heads))
    if shape == StructureShape(spec.heads, spec.mlp_width, spec.layers):
        raise PrtkInputError("the targets remove nothing: ask for fewer heads, MLP channels or blocks")
    return shape


def keep_per_block(scores: dict[TowerModule, tuple], kind: str, block: int, count: int) -> tuple[int, ...]:
    """Indices of the ``count`` highest-scoring modules of ``kind`` in ``block``, ascending."""
    ranked = sorted((m for m in scores if m.kind == kind and m.block == block), key=lambda m: (scores[m], m.index))
    return tuple(sorted(m.index for m in ranked[len(ranked) - count:]))


def random_scores(modules: list[TowerModule], seed: int) -> dict[TowerModule, tuple]:
    """The random baseline: a seeded permutation as the score."""
    order = list(range(len(modules)))
    random.Random(seed).shuffle(order)
    return {module: (float(rank),) for module, rank in zip(modules, order)}
