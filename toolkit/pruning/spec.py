"""``TowerSpec``, what a pruned tower is, and ``build_tower``, the one factory every command builds it with.

A spec names its scorer: a baseline (``cls-attention``, ``random``, ``fixed-random``), ``golden`` (per-image
rankings passed with each batch) or ``predictor`` (a ranker pack's predictor, and its learnable tokens). A
pack or a ranking file prunes at its own layer; a ``--layer`` given with one must equal it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn as nn

from prtk.core.errors import PrtkInputError
from prtk.pruning.scorers import ClsAttentionScorer, FixedRandomScorer, IndexScorer, RandomScorer, TokenScorer
from prtk.pruning.tower import PrunedVisionTower, check_keep

BASELINE_SCORERS = ("cls-attention", "random", "fixed-random")
SCORERS = (*BASELINE_SCORERS, "golden", "predictor")
EXPORTABLE_BASELINES = ("cls-attention", "fixed-random")  # the baselines a static graph can hold


class TowerSource(Protocol):
    """A trained scorer's source (a ranker pack): its layer, its predictor and its tokens per keep ratio."""

    layer: int

    def check_model(self, clip) -> None: ...

    def predictor_scorer(self, clip) -> TokenScorer: ...

    def learnable_tokens(self, keep: float) -> torch.Tensor | None: ...


@dataclass(frozen=True)
class TowerSpec:
    """A pruned tower: ``scorer`` keeps ``round(keep * N)`` patches at the input of block ``layer``
    (None: the pack's or ranking's layer, else ``L // 4``); ``tokens``: a pack's learnable tokens;
    ``fuse_dropped``: one extra token averaging the dropped ones; ``seed``: the random scorers' seed."""

    keep: float
    scorer: str = "cls-attention"
    layer: int | None = None
    tokens: bool = True
    fuse_dropped: bool = False
    seed: int = 0

    def check(self) -> None:
        """Refuse values no tower has, before any model is loaded."""
        check_keep(self.keep)
        if self.scorer not in SCORERS:
            raise PrtkInputError(f"unknown scorer {self.scorer!r}; choose one of {', '.join(SCORERS)}")
        if self.fuse_dropped and self.scorer == "predictor":
            raise PrtkInputError("--fuse-dropped does not go with --scorer predictor (its tokens were trained without)")

    def check_source(self, pack_given: bool) -> None:
        """``check``, then refuse a pack without the predictor scorer or the predictor without a pack (callers
        that read the pack from a file call this first, before reading it)."""
        self.check()
        if pack_given != (self.scorer == "predictor"):
            raise PrtkInputError(f"--pack is read only by --scorer predictor, got --scorer {self.scorer}" if pack_given
                                 else "the predictor scorer needs --pack FILE (made by `prtk train`)")

    def at_layer_of(self, layer: int, source: str) -> TowerSpec:
        """This spec at a pack's or ranking's ``layer``, refusing a different ``--layer``."""
        if self.layer is not None and self.layer != layer:
            raise PrtkInputError(f"--layer {self.layer} differs from the {source}'s layer {layer}")
        return replace(self, layer=layer)


def baseline_scorer(name: str, num_patches: int, seed: int = 0) -> TokenScorer:
    """A scorer that needs no training: ``cls-attention``, ``random`` (per image, seeded), ``fixed-random``
    (one seeded subset for every image), or ``golden`` (rankings ``[B, N]`` given with the batch)."""
    if name == "cls-attention":
        return ClsAttentionScorer()
    if name == "random":
        return RandomScorer(seed)
    if name == "fixed-random":
        return FixedRandomScorer(num_patches, seed)
    if name == "golden":
        return IndexScorer()
    raise PrtkInputError(f"scorer {name!r} needs a trained source; baselines are {', '.join(BASELINE_SCORERS)}")


def build_tower(clip, spec: TowerSpec, pack: TowerSource | None = None) -> PrunedVisionTower:
    """The pruned tower ``spec`` describes over ``clip``'s image tower, its scorer and tokens frozen (the image
    tower it shares with ``clip`` is left as it is).

    ``pack`` is required by, and only read by, the ``predictor`` scorer; it must be made for ``clip``.
    """
    spec.check_source(pack is not None)
    tokens = None
    if pack is not None:
        pack.check_model(clip)
        spec = spec.at_layer_of(pack.layer, "pack")
        scorer: nn.Module = pack.predictor_scorer(clip)
        tokens = pack.learnable_tokens(spec.keep) if spec.tokens else None
    else:
        scorer = baseline_scorer(spec.scorer, clip.spec.num_patches, spec.seed)
    tower = PrunedVisionTower(clip.visual, spec.keep, spec.layer, scorer,
                              num_learnable_tokens=0 if tokens is None else tokens.shape[0],
                              fuse_dropped=spec.fuse_dropped)
    tower.scorer.requires_grad_(False)
    if tokens is not None:
        tower.learnable_tokens.data.copy_(tokens)
        tower.learnable_tokens.requires_grad_(False)
    return tower
