"""The cost model of a (pruned) ViT image tower, in multiply-accumulates (MACs); GFLOPs = 2 x MACs / 1e9.

One block on ``n`` tokens of width ``D``, attention width ``A`` (heads x head width) and MLP width ``M`` costs
``4 n D A + 2 n D M + 2 n^2 A`` MACs: the q/k/v/out projections, the MLP, and the two ``n x n`` attention
products (``12 n D^2 + 2 n^2 D`` for an unpruned block at MLP ratio 4, where ``A = D`` and ``M = 4D``).
Pruning at block ``l`` runs blocks ``l..L-1`` on ``1 + k (+1 fused) + P`` tokens; each later stage
``(b, keep_s)`` runs blocks ``b..`` on ``1 + k_s (+1) + P``. The later stages' CLS-attention scores are counted
with the blocks they read (the query of one token: under 1% of a block).
"""

from __future__ import annotations

from prtk.pruning.tower import check_layer, check_stages, keep_count, stage_counts
from prtk.models.vit import ViTSpec


def block_macs(tokens: int, width: int, attention_width: int | None = None, mlp_width: int | None = None) -> float:
    """MACs of one transformer block on ``tokens`` tokens (attention width ``D`` and MLP ``4D`` unless given)."""
    attention_width = width if attention_width is None else attention_width
    mlp_width = 4 * width if mlp_width is None else mlp_width
    return 4 * tokens * width * attention_width + 2 * tokens * width * mlp_width + 2 * tokens ** 2 * attention_width


def spec_block_macs(spec: ViTSpec, tokens: int) -> float:
    """MACs of one of ``spec``'s blocks on ``tokens`` tokens."""
    return block_macs(tokens, spec.width, spec.attention_width, spec.mlp_width)


def suffix_tokens(spec: ViTSpec, keep: float, learnable_tokens: int = 0, fused: bool = False) -> int:
    """Tokens entering blocks[l:]: CLS + k kept (+ 1 fused) + P learnable."""
    return 1 + keep_count(keep, spec.num_patches) + int(fused) + learnable_tokens


def blocks_macs(spec: ViTSpec, keep: float = 1.0, layer: int | None = None,
                learnable_tokens: int = 0, fused: bool = False,
                later_stages: tuple[tuple[int, float], ...] = ()) -> float:
    """MACs of the L blocks, with pruning at block ``layer`` (no pruning when keep is 1 and P is 0) and again at
    each of ``later_stages``."""
    full = spec_block_macs(spec, spec.num_patches + 1)
    if layer is None:
        return spec.layers * full
    check_layer(layer, spec)
    check_stages(layer, keep, later_stages, spec.layers)
    starts = [layer, *(block for block, _ in later_stages), spec.layers]
    counts = stage_counts(keep, later_stages, spec.num_patches)
    pruned = sum((stop - start) * spec_block_macs(spec, 1 + count + int(fused) + learnable_tokens)
                 for start, stop, count in zip(starts, starts[1:], counts))
    return layer * full + pruned


def vision_macs(spec: ViTSpec, keep: float = 1.0, layer: int | None = None,
                learnable_tokens: int = 0, fused: bool = False,
                later_stages: tuple[tuple[int, float], ...] = ()) -> float:
    """MACs of the whole image tower: patch embedding + blocks + output projection."""
    patch_embedding = spec.num_patches * 3 * spec.patch_size ** 2 * spec.width
    projection = spec.width * spec.output_dim
    return patch_embedding + blocks_macs(spec, keep, layer, learnable_tokens, fused, later_stages) + projection


def block_cost_ratio(spec: ViTSpec, keep: float, layer: int, learnable_tokens: int = 0,
                     fused: bool = False, later_stages: tuple[tuple[int, float], ...] = ()) -> float:
    """docs/design.md's ratio ``(l C(N+1) + (L-l) C(1+k+P)) / (L C(N+1))`` (summed over the segments between
    stages); its inverse bounds the speedup."""
    return blocks_macs(spec, keep, layer, learnable_tokens, fused, later_stages) / blocks_macs(spec)


def gflops(macs: float) -> float:
    """GFLOPs quoted in every report: 2 x MACs / 1e9."""
    return 2 * macs / 1e9
