"""A pruned image tower wrapping open_clip's VisionTransformer at a static token budget.

Flow (shapes for batch B, N patches, width D, k kept, P learnable tokens):
images [B,3,H,W] -> open_clip embeddings [B,N+1,D] -> blocks[0:l] -> scorer [B,N] -> top-k
-> CLS + k kept patches (+ fused token) (+ P learnable tokens) [B,1+k(+1)+P,D] -> blocks[l:]
-> open_clip pooling over CLS, kept (and fused) tokens -> projection [B,E].
Later stages (``later_stages``) prune again at the input of block ``b``: the kept patches are ranked by
``stage_scorer`` (default: the head-averaged attention of CLS in block ``b-1``, EViT; or ELIP's language-guided
query) and the top ``k_s`` of them stay (the fused token absorbs the dropped ones); ``kept`` indices always
refer to the original patch grid.
Every ``k`` is a Python int fixed at construction, so every shape is static.
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn

from prtk.core.errors import PrtkInputError
from prtk.pruning.scorers import ClsAttentionScorer, ScorerInput, TokenScorer
from prtk.models.vit import ViTSpec, embed_tokens, project_tokens, run_blocks, vision_transformer


def keep_count(keep: float, num_patches: int) -> int:
    """Patch tokens kept at ratio ``keep``: ``max(1, round(keep * N))``, rounding halves up."""
    check_keep(keep)
    return max(1, math.floor(keep * num_patches + 0.5))


def check_keep(keep: float) -> None:
    if not (0.0 < keep <= 1.0):
        raise PrtkInputError(f"keep ratio must be in (0, 1], got {keep}")


def check_keeps(keeps: tuple[float, ...]) -> None:
    """Several keep ratios: at least one, each in (0, 1], no two that name the same artifact (``keep0.60``)."""
    if not keeps:
        raise PrtkInputError("give at least one keep ratio")
    named: dict[str, float] = {}
    for keep in keeps:
        check_keep(keep)
        name = f"{keep:.2f}"
        if name in named:
            raise PrtkInputError(f"keep ratios {named[name]:g} and {keep:g} are one ratio to two decimals ({name}), "
                                 "which names the tokens and exports: give distinct ratios")
        named[name] = keep


def check_layer(layer: int, spec: ViTSpec) -> None:
    if not (1 <= layer <= spec.layers - 1):
        raise PrtkInputError(f"layer must be in [1, {spec.layers - 1}] for a {spec.layers}-block ViT, got {layer}")


def check_stages(layer: int | None, keep: float, later_stages: tuple[tuple[int, float], ...],
                 layers: int | None = None) -> None:
    """A stage schedule ``(layer, keep), *later_stages`` (``layer`` None: the default one): every keep in (0, 1],
    blocks strictly ascending, and with the model's ``layers`` each later block within [1, L-1]."""
    check_keep(keep)
    previous = layer
    for block, stage_keep in later_stages:
        if layers is not None and not (1 <= block <= layers - 1):
            raise PrtkInputError(f"stage block {block} is outside [1, {layers - 1}] for a {layers}-block ViT "
                                 "(a stage prunes at the input of a block after the first)")
        if previous is not None and block == previous:
            raise PrtkInputError(f"stage block {block} appears twice: one stage per block")
        if previous is not None and block < previous:
            raise PrtkInputError(f"stage blocks must ascend: block {block} comes after block {previous}")
        check_keep(stage_keep)
        previous = block


def stage_counts(keep: float, later_stages: tuple[tuple[int, float], ...], num_patches: int) -> tuple[int, ...]:
    """Patches kept after each stage: ``k_0 = keep_count(keep, N)``, ``k_s = keep_count(keep_s, k_{s-1})``."""
    counts = [keep_count(keep, num_patches)]
    for _, stage_keep in later_stages:
        counts.append(keep_count(stage_keep, counts[-1]))
    return tuple(counts)


def default_layer(spec: ViTSpec) -> int:
    """The default pruning point ``L // 4`` (3 for 12-block ViT-B), at least 1."""
    return max(1, spec.layers // 4)


def ascending(indices: torch.Tensor, count: int) -> torch.Tensor:
    """Sort ``count`` indices per row [B, count] ascending as a TopK of constant K (an exported ``sort`` reads K
    from the tensor's shape at run time, which TensorRT refuses)."""
    return (-indices).topk(count, dim=1).values.neg()


class PrunedVisionTower(nn.Module):
    """open_clip's image tower with patch tokens pruned to a static budget at the input of block ``layer``."""

    def __init__(
        self,
        visual: nn.Module,
        keep: float,
        layer: int | None = None,
        scorer: TokenScorer | None = None,
        num_learnable_tokens: int = 0,
        fuse_dropped: bool = False,
        later_stages: tuple[tuple[int, float], ...] = (),
        stage_scorer: TokenScorer | None = None,
    ):
        super().__init__()
        self.visual = vision_transformer(visual)
        self.spec = ViTSpec.of(visual)
        self.layer = default_layer(self.spec) if layer is None else layer
        check_layer(self.layer, self.spec)
        check_stages(self.layer, keep, later_stages, self.spec.layers)
        self.keep = keep
        self.later_stages = tuple(later_stages)
        self.stage_counts = stage_counts(keep, self.later_stages, self.spec.num_patches)
        self.keep_count = self.stage_counts[0]  # the first stage's k
        if fuse_dropped and self.keep_count == self.spec.num_patches:
            raise PrtkInputError("a fused token needs dropped tokens: keep must be below 1")
        self.fuse_dropped = fuse_dropped
        self.scorer = scorer if scorer is not None else ClsAttentionScorer()
        self.stage_scorer = stage_scorer if stage_scorer is not None else ClsAttentionScorer()  # later stages
        self.learnable_tokens = (nn.Parameter(torch.zeros(num_learnable_tokens, self.spec.width))
                                 if num_learnable_tokens else None)

    @property
    def num_learnable_tokens(self) -> int:
        return 0 if self.learnable_tokens is None else self.learnable_tokens.shape[0]

    def _run_blocks(self, tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Apply resblocks[start:stop] to batch-first tokens [B, T, D]."""
        return run_blocks(self.visual, tokens, start, stop)

    def prefix(self, images: torch.Tensor, rankings: torch.Tensor | None = None) -> ScorerInput:
        """Embed images [B,3,H,W] and run blocks[0:l]; blocks below l run once per image."""
        tokens = embed_tokens(self.visual, images)
        previous = self._run_blocks(tokens, 0, self.layer - 1)
        return ScorerInput(
            tokens=self._run_blocks(previous, self.layer - 1, self.layer),
            previous_tokens=previous,
            previous_block=self.visual.transformer.resblocks[self.layer - 1],
            rankings=rankings,
        )

    def select(self, tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """CLS + kept patches (+ the mean of the dropped ones): [B,N+1,D], [B,k] -> [B,1+k(+1),D]."""
        patches = tokens[:, 1:]
        index = kept.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        parts = [tokens[:, :1], patches.gather(1, index)]
        if self.fuse_dropped:
            dropped = torch.ones(patches.shape[:2], dtype=patches.dtype, device=patches.device)
            dropped = dropped.scatter(1, kept, 0.0).unsqueeze(-1)  # [B, N, 1]
            dropped_count = patches.shape[1] - kept.shape[1]
            parts.append((patches * dropped).sum(dim=1, keepdim=True) / dropped_count)
        return torch.cat(parts, dim=1)

    @property
    def kept_count(self) -> int:
        """Patches left after the last stage (the width of the kept indices)."""
        return self.stage_counts[-1]

    def suffix(self, tokens: torch.Tensor, kept: torch.Tensor | None = None):
        """Blocks[l:] (with the later stages), pooling and projection on selected tokens [B,T,D] -> embedding [B,E];
        given the first stage's ``kept`` [B,k_0], also returns the indices left after the last stage [B,k_last].

        Learnable tokens are appended before blocks[l:] and left out of the pooling.
        """
        pooled_count = tokens.shape[1]
        if self.learnable_tokens is not None:
            extra = self.learnable_tokens.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens, extra], dim=1)
        start = self.layer
        for (block, _), count, before in zip(self.later_stages, self.stage_counts[1:], self.stage_counts):
            previous = self._run_blocks(tokens, start, block - 1)
            tokens = self._run_blocks(previous, block - 1, block)
            scores = self.stage_scorer(ScorerInput(tokens, previous, self.visual.transformer.resblocks[block - 1]))
            local = ascending(scores[:, :before].topk(count, dim=1).indices, count)  # [B, k_s] of the k_{s-1}
            tokens = self._prune_again(tokens, local, before)
            kept = None if kept is None else kept.gather(1, local)
            pooled_count -= before - count
            start = block
        embedding = self.head(self._run_blocks(tokens, start, self.spec.layers)[:, :pooled_count])
        return embedding if kept is None else (embedding, kept)

    def _prune_again(self, tokens: torch.Tensor, local: torch.Tensor, before: int) -> torch.Tensor:
        """Keep CLS, the ``local`` [B,k_s] of the ``before`` patches that follow it, and the tokens after them
        (fused, learnable); the fused token takes in the newly dropped patches, each token weighted by the
        original patches it stands for."""
        patches = tokens[:, 1:1 + before]
        index = local.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        kept = patches.gather(1, index)
        rest = tokens[:, 1 + before:]
        if self.fuse_dropped:
            dropped = torch.ones(patches.shape[:2], dtype=patches.dtype, device=patches.device)
            dropped = dropped.scatter(1, local, 0.0).unsqueeze(-1)  # [B, k_{s-1}, 1]
            earlier = self.spec.num_patches - before
            newly = before - local.shape[1]
            fused = (rest[:, :1] * earlier + (patches * dropped).sum(dim=1, keepdim=True)) / (earlier + newly)
            rest = torch.cat([fused, rest[:, 1:]], dim=1)
        return torch.cat([tokens[:, :1], kept, rest], dim=1)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's pooling and projection on the last block's output [B,T,D] -> embedding [B,E]."""
        return project_tokens(self.visual, tokens)

    def forward(self, images: torch.Tensor, rankings: torch.Tensor | None = None, return_indices: bool = False):
        """images [B,3,H,W] (rankings [B,N] for the ``indices`` scorer) -> embedding [B,E].

        The embedding is unnormalised, as open_clip's ``visual(images)``. With ``return_indices`` also
        returns the patch indices kept after the last stage [B,k] (0-based, CLS excluded, ascending).
        """
        inputs = self.prefix(images, rankings)
        scores = self.scorer(inputs)  # [B, N]
        kept = ascending(scores.topk(self.keep_count, dim=1).indices, self.keep_count)  # [B, k]
        if self.later_stages:
            embedding, kept = self.suffix(self.select(inputs.tokens, kept), kept)
        else:
            embedding = self.suffix(self.select(inputs.tokens, kept))
        return (embedding, kept) if return_indices else embedding
