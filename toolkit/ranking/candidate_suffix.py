"""blocks[l:] for many candidate token sets of the same images, without repeating candidate-independent work.

A candidate is CLS + a subset of the patch tokens entering block ``l`` (the cached prefix output).
Two exact shortcuts cut the cost per candidate:

1. Block ``l``'s inputs are rows of the cached tokens, so its LayerNorm and QKV projection run once
   per image (``[B, N+1, 3D]``) and each candidate gathers its rows.
2. With CLS pooling only the CLS token leaves the last block, so that block computes keys and values
   for every token but the attention output, residual and MLP for CLS alone.

For a 6-block tower pruned at block 3 this is about 1.5x less work than running the candidates
through open_clip's blocks. The blocks are open_clip's own modules, evaluated through their weights:
``F.linear`` with ``attn.in_proj_weight`` and ``attn.out_proj`` around
``F.scaled_dot_product_attention``, then the block's ``ls_1``, ``ln_2``, ``mlp`` and ``ls_2``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk.pruning.tower import PrunedVisionTower


def _qkv(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Queries, keys and values [M, T, 3D] of block inputs x [M, T, D]."""
    return F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)


def _block(block: nn.Module, x: torch.Tensor, qkv: torch.Tensor, cls_only: bool) -> torch.Tensor:
    """One residual attention block on x [M, T, D] with its qkv [M, T, 3D]; [M, T, D], or [M, 1, D] for CLS only."""
    attn = block.attn
    q, k, v = qkv.chunk(3, dim=-1)
    if cls_only:
        x, q = x[:, :1], q[:, :1]
    heads = [t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in (q, k, v)]  # [M, H, T, D/H]
    attended = F.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(2)
    x = x + block.ls_1(F.linear(attended, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _plain_attention(block: nn.Module) -> bool:
    attn = block.attn
    return (attn._qkv_same_embed_dim and attn.bias_k is None and not attn.add_zero_attn
            and not hasattr(block, "ln_1_kv"))


class CandidateSuffix:
    """Embeddings of candidate token sets: ``prepare`` once per image batch, then ``embed`` many times."""

    def __init__(self, tower: PrunedVisionTower):
        self.tower = tower
        self.blocks = list(tower.visual.transformer.resblocks[tower.layer:])
        self.shortcuts = tower.learnable_tokens is None and all(_plain_attention(b) for b in self.blocks)
        self.cls_only = tower.visual.pool_type == "tok"

    def prepare(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-image cache for tokens [B, N+1, D] entering block l: (tokens, block l's qkv [B, N+1, 3D])."""
        return tokens, (_qkv(self.blocks[0], tokens) if self.shortcuts else None)

    def embed(self, cache: tuple[torch.Tensor, torch.Tensor | None], owners: torch.Tensor,
              kept: torch.Tensor) -> torch.Tensor:
        """Embeddings [M, E] of CLS + patches ``kept`` [M, m] (0-based) of images ``owners`` [M]."""
        tokens, qkv = cache
        rows = owners.unsqueeze(1)
        positions = torch.cat([torch.zeros_like(kept[:, :1]), 1 + kept], dim=1)  # [M, 1+m], CLS first
        x = tokens[rows, positions]
        if not self.shortcuts:
            return self.tower.suffix(x)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            block_qkv = qkv[rows, positions] if index == 0 else _qkv(block, x)
            x = _block(block, x, block_qkv, cls_only=self.cls_only and index == last)
        return self.tower.head(x)
