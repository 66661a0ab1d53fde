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
from prtk.pruning.scorers import (ClsAttentionScorer, FixedRandomScorer, IndexScorer, LanguageGuidedScorer,
                                  RandomScorer, TokenScorer)
from prtk.pruning.tower import PrunedVisionTower, check_stages

BASELINE_SCORERS = ("cls-attention", "random", "fixed-random", "elip")
SCORERS = (*BASELINE_SCORERS, "golden", "predictor")
STAGE_SCORERS = ("cls-attention", "elip")  # what ranks the patches at the later stages
EXPORTABLE_BASELINES = ("cls-attention", "fixed-random", "elip")  # the baselines a static graph can hold
NO_LANGUAGE_SIDE = ("the elip scorer needs a language side, the zero-shot classifier: the data folder's classes "
                    "(eval) or --classes FILE (export)")


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
    ``fuse_dropped``: one extra token averaging the dropped ones; ``seed``: the random scorers' seed;
    ``later_stages``: ``(block, keep)`` stages that prune again, each keeping that share of the patches entering
    it, ranked by ``stage_scorer`` (``cls-attention``: EViT; ``elip``: language-guided)."""

    keep: float
    scorer: str = "cls-attention"
    layer: int | None = None
    tokens: bool = True
    fuse_dropped: bool = False
    seed: int = 0
    later_stages: tuple[tuple[int, float], ...] = ()
    stage_scorer: str = "cls-attention"

    @property
    def needs_language(self) -> bool:
        """Whether an ELIP scorer ranks some stage (the tower then needs the zero-shot classifier)."""
        return self.scorer == "elip" or (bool(self.later_stages) and self.stage_scorer == "elip")

    def check(self) -> None:
        """Refuse values no tower has, before any model is loaded."""
        check_stages(self.layer, self.keep, self.later_stages)
        if self.stage_scorer not in STAGE_SCORERS:
            raise PrtkInputError(f"unknown stage scorer {self.stage_scorer!r}; choose one of "
                                 f"{', '.join(STAGE_SCORERS)}")
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


def parse_stages(text: str) -> tuple[int, float, tuple[tuple[int, float], ...]]:
    """``--stages B:KEEP[,B:KEEP...]`` -> the first stage's block and keep, and the later stages; refused in one line
    when malformed, out of order, repeating a block, or with a keep outside (0, 1]."""
    stages = []
    for part in text.split(","):
        try:
            block, keep = part.split(":")
            stages.append((int(block), float(keep)))
        except ValueError:
            raise PrtkInputError(f"--stages must be BLOCK:KEEP[,BLOCK:KEEP...], e.g. 3:0.7,6:0.7,9:0.7, got {text!r}"
                                 ) from None
    (layer, keep), *later = stages
    check_stages(layer, keep, tuple(later))
    return layer, keep, tuple(later)


def baseline_scorer(name: str, num_patches: int, seed: int = 0, language: TokenScorer | None = None) -> TokenScorer:
    """A scorer that needs no training: ``cls-attention``, ``random`` (per image, seeded), ``fixed-random``
    (one seeded subset for every image), ``elip`` (``language``, the ``LanguageGuidedScorer``) or ``golden``
    (rankings ``[B, N]`` given with the batch)."""
    if name == "cls-attention":
        return ClsAttentionScorer()
    if name == "elip":
        if language is None:
            raise PrtkInputError(NO_LANGUAGE_SIDE)
        return language
    if name == "random":
        return RandomScorer(seed)
    if name == "fixed-random":
        return FixedRandomScorer(num_patches, seed)
    if name == "golden":
        return IndexScorer()
    raise PrtkInputError(f"scorer {name!r} needs a trained source; baselines are {', '.join(BASELINE_SCORERS)}")


def build_tower(clip, spec: TowerSpec, pack: TowerSource | None = None,
                classifier: torch.Tensor | None = None) -> PrunedVisionTower:
    """The pruned tower ``spec`` describes over ``clip``'s image tower, its scorer and tokens frozen (the image
    tower it shares with ``clip`` is left as it is).

    ``pack`` is required by, and only read by, the ``predictor`` scorer; it must be made for ``clip``.
    ``classifier`` [C,E] (the zero-shot head's class embeddings) is the language side an ``elip`` stage needs.
    """
    spec.check_source(pack is not None)
    language = None
    if spec.needs_language:
        if classifier is None:
            raise PrtkInputError(NO_LANGUAGE_SIDE)
        language = LanguageGuidedScorer(clip.visual, classifier, clip.logit_scale)
    tokens = None
    if pack is not None:
        pack.check_model(clip)
        spec = spec.at_layer_of(pack.layer, "pack")
        scorer: nn.Module = pack.predictor_scorer(clip)
        tokens = pack.learnable_tokens(spec.keep) if spec.tokens else None
    else:
        scorer = baseline_scorer(spec.scorer, clip.spec.num_patches, spec.seed, language)
    stage_scorer = language if spec.stage_scorer == "elip" and spec.later_stages else None
    tower = PrunedVisionTower(clip.visual, spec.keep, spec.layer, scorer,
                              num_learnable_tokens=0 if tokens is None else tokens.shape[0],
                              fuse_dropped=spec.fuse_dropped, later_stages=spec.later_stages,
                              stage_scorer=stage_scorer)
    tower.scorer.requires_grad_(False)
    if tokens is not None:
        tower.learnable_tokens.data.copy_(tokens)
        tower.learnable_tokens.requires_grad_(False)
    return tower
