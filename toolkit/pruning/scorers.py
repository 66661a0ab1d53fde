"""Token scorers: one score per patch token entering block ``l`` (higher = more important).

Every scorer maps a ``ScorerInput`` to scores ``[B, N]`` with static shapes and no per-image loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk.core.errors import PrtkInputError


@dataclass
class ScorerInput:
    """What a scorer may look at: the token flow around the pruning point."""

    tokens: torch.Tensor  # [B, N+1, D] entering block l (CLS first)
    previous_tokens: torch.Tensor  # [B, N+1, D] entering block l-1
    previous_block: nn.Module  # block l-1 (an open_clip ResidualAttentionBlock)
    rankings: torch.Tensor | None = None  # [B, N] patch indices, most important first, given from outside


class TokenScorer(nn.Module):
    """Base class: ``forward(ScorerInput) -> scores [B, N]``."""

    name = "base"

    def forward(self, inputs: ScorerInput) -> torch.Tensor:
        raise NotImplementedError


class RandomScorer(TokenScorer):
    """Uniform random scores from a generator seeded at construction (``reset`` restarts it)."""

    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def forward(self, inputs: ScorerInput) -> torch.Tensor:
        batch, tokens, _ = inputs.tokens.shape
        scores = torch.rand(batch, tokens - 1, generator=self.generator)
        return scores.to(inputs.tokens.device)


class FixedRandomScorer(TokenScorer):
    """One seeded random score per patch, the same for every image: a random baseline a static graph can hold."""

    name = "fixed-random"

    def __init__(self, num_patches: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("patch_scores", torch.rand(num_patches, generator=generator))  # [N]

    def forward(self, inputs: ScorerInput) -> torch.Tensor:
        return self.patch_scores.to(inputs.tokens.dtype).expand(inputs.tokens.shape[0], -1)


class ClsAttentionScorer(TokenScorer):
    """EViT-style score: head-averaged attention from CLS to each patch in block ``l-1``.

    Recomputes block ``l-1``'s query of CLS and keys of all tokens from its own weights, so the
    unpruned forward pass is left untouched.
    """

    name = "cls-attention"

    def forward(self, inputs: ScorerInput) -> torch.Tensor:
        return cls_attention(inputs.previous_block, inputs.previous_tokens)


def cls_attention(block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Head-averaged softmax attention of the first token to every other one in ``block`` (an open_clip
    ResidualAttentionBlock) over ``tokens`` [B,T,D] entering it -> [B, T-1]."""
    attention = block.attn
    if not attention._qkv_same_embed_dim:
        raise PrtkInputError("cls-attention needs a self-attention block with a packed in-projection")
    hidden = block.ln_1(tokens)  # [B, T, D]
    batch, length, _ = hidden.shape
    heads, head_width = attention.num_heads, attention.head_dim
    weight_q, weight_k, _ = attention.in_proj_weight.chunk(3)
    bias_q, bias_k = (None, None)
    if attention.in_proj_bias is not None:
        bias_q, bias_k, _ = attention.in_proj_bias.chunk(3)
    query = F.linear(hidden[:, :1], weight_q, bias_q).reshape(batch, 1, heads, head_width).transpose(1, 2)
    keys = F.linear(hidden, weight_k, bias_k).reshape(batch, length, heads, head_width).transpose(1, 2)
    logits = (query @ keys.transpose(-1, -2)) * head_width ** -0.5  # [B, H, 1, T]
    return logits.softmax(dim=-1).mean(dim=1)[:, 0, 1:]  # [B, T-1]


class LanguageGuidedScorer(TokenScorer):
    """ELIP's language-guided score (Guo et al., arXiv 2309.16738), for a zero-shot classifier.

    ELIP replaces the vision [CLS] by ``(1 - 0.2) * vision CLS + 0.2 * text CLS`` and ranks patches by that
    query's head-averaged attention. A deployed classifier has no caption, so its language side is the zero-shot
    head: the class text embeddings ``classifier`` [C,E] weighted by the current prediction (the softmax of
    ``logit_scale`` x cosine between the tower's embedding of the tokens leaving block ``l-1`` and each class),
    carried into the tower's width by the transpose of its projection and scaled to the CLS token's norm. The
    query attends in block ``l-1`` (as cls-attention does) instead of ELIP's look-ahead through the next blocks,
    which would cost those blocks twice.
    """

    name = "elip"
    VISION_WEIGHT = 0.8  # ELIP's lambda

    def __init__(self, visual: nn.Module, classifier: torch.Tensor, logit_scale: float):
        super().__init__()
        self.parts = (visual,)  # read, not owned: the tower registers the image tower
        self.register_buffer("classifier", classifier.detach().clone())  # [C, E], rows L2-normalised
        self.logit_scale = logit_scale

    def forward(self, inputs: ScorerInput) -> torch.Tensor:
        from prtk.models.vit import project_tokens

        (visual,) = self.parts
        estimate = project_tokens(visual, inputs.tokens)  # [B, E]
        classifier = self.classifier.to(estimate.dtype)
        prediction = (self.logit_scale * F.normalize(estimate, dim=-1) @ classifier.T).softmax(dim=-1)  # [B, C]
        text = prediction @ classifier  # [B, E]
        if visual.proj is not None:
            text = text @ visual.proj.T  # [B, D]
        cls = inputs.previous_tokens[:, 0]  # [B, D]
        text = text * (cls.norm(dim=-1, keepdim=True) / text.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        query = self.VISION_WEIGHT * cls + (1 - self.VISION_WEIGHT) * text
        tokens = torch.cat([query.unsqueeze(1), inputs.previous_tokens[:, 1:]], dim=1)
        return cls_attention(inputs.previous_block, tokens)


class IndexScorer(TokenScorer):
    """Scores from per-image rankings given with the batch: rank j of N gets score N - j."""

    name = "indices"

    def forward(self, inputs: ScorerInput) -> torch.Tensor:
        rankings = inputs.rankings
        if rankings is None:
            raise ValueError("the indices scorer needs rankings [B, N] passed with the batch")
        patches = inputs.tokens.shape[1] - 1
        if rankings.shape != (inputs.tokens.shape[0], patches):
            raise ValueError(f"rankings must be [B, N] = [{inputs.tokens.shape[0]}, {patches}], "
                             f"got {list(rankings.shape)}")
        descending = torch.arange(patches, 0, -1, device=rankings.device, dtype=torch.float32)
        return torch.zeros(rankings.shape, device=rankings.device).scatter(
            1, rankings.long(), descending.expand_as(rankings))
