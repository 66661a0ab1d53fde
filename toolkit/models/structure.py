"""Structurally pruned image towers: attention with fewer heads than ``width / head_width``, and the config keys
that say so.

open_clip's blocks attend with ``nn.MultiheadAttention``, whose packed in-projection ties the heads to the
width (``heads x head_width = width``), so an open_clip config cannot spell a block that kept 3 of 4 heads of
width 32 in a 128-wide tower. A structurally pruned model's config is therefore an open_clip config of the
*envelope* (``vision_cfg``: residual width, ``head_width``, the pruned ``layers`` and ``mlp_ratio`` = kept MLP
channels / width) plus one prtk key, ``vision_heads`` (heads kept in every image-tower block, each of
``head_width``), and ``prtk_lineage`` (parent model, its weights hash, what was removed). prtk builds the
envelope with open_clip and swaps each block's attention for ``NarrowAttention`` of ``vision_heads`` heads before
loading the weights; without the key (MLP- or depth-only pruning) the config is plain open_clip.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS_KEY = "vision_heads"
LINEAGE_KEY = "prtk_lineage"
PRTK_KEYS = (HEADS_KEY, LINEAGE_KEY)


class NarrowAttention(nn.MultiheadAttention):
    """Self-attention of ``num_heads`` heads of ``head_dim`` each over ``embed_dim``-wide tokens, where
    ``num_heads x head_dim`` (the attention width ``A``) may be less than ``embed_dim`` (``D``).

    Parameters keep ``nn.MultiheadAttention``'s names and packing: ``in_proj_weight`` ``[3A, D]`` (q, k, v rows,
    head-major inside each), ``in_proj_bias`` ``[3A]``, ``out_proj`` ``A -> D``; so prtk's lean and fused export
    blocks, its scorers and state dicts treat it as the packed attention it subclasses.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, batch_first: bool):
        super().__init__(embed_dim, 1, batch_first=batch_first)
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * inner, embed_dim)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(inner, embed_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or need_weights or is_causal:
            raise ValueError("NarrowAttention attends without masks and returns no attention weights")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        heads = [F.linear(x, w, b).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                 for x, w, b in ((query, weight_q, bias_q), (key, weight_k, bias_k), (value, weight_v, bias_v))]
        attended = F.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(2)  # [B, T, A]
        output = self.out_proj(attended)
        return (output if self.batch_first else output.transpose(0, 1)), None


def narrow_attention(visual: nn.Module, heads: int) -> None:
    """Give every block of open_clip image tower ``visual`` a ``NarrowAttention`` of ``heads`` heads of its
    current head width (initialised as ``nn.MultiheadAttention`` is; a checkpoint usually replaces them)."""
    for block in visual.transformer.resblocks:
        attention = block.attn
        block.attn = NarrowAttention(attention.embed_dim, heads, attention.head_dim, attention.batch_first)


def split_config(config: dict) -> tuple[dict, int | None, dict | None]:
    """A config -> (the open_clip config without prtk's keys, ``vision_heads`` or None, ``prtk_lineage`` or None)."""
    plain = {key: value for key, value in config.items() if key not in PRTK_KEYS}
    return plain, config.get(HEADS_KEY), config.get(LINEAGE_KEY)


def heads_problem(config: dict) -> str | None:
    """The first impossible value of the prtk keys of a config, or None."""
    heads = config.get(HEADS_KEY)
    if heads is not None:
        vision = config["vision_cfg"]
        most = vision.get("width", 768) // vision.get("head_width", 64)
        if isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= most:
            return f"{HEADS_KEY} must be a whole number in [1, {most}] (width / head_width), got {heads!r}"
    if not isinstance(config.get(LINEAGE_KEY, {}), dict):
        return f"{LINEAGE_KEY} must be an object"
    return None
