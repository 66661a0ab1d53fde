"""Transformer blocks as runtimes want to see them in a graph: the ``--optimize`` levels.

- ``O0``: open_clip's blocks traced as they are. nn.MultiheadAttention spells out about 105 nodes per block
  (shape arithmetic on the batch, the scale as a square root on both q and k) that no runtime fuses.
- ``O1`` (default): ``LeanBlock`` — the same computation in the pattern TensorRT and ONNX Runtime fuse, with
  reshapes of constant shape (``-1`` for the batch): LayerNormalization, one q/k/v MatMul + Add, Reshape,
  Transpose, Split, one scale on q, MatMul -> Softmax -> MatMul, Transpose, Reshape, out-projection, residual
  Add, LayerNormalization, the MLP (one Gelu op from opset 20) and its residual Add: 23 nodes, standard ONNX.
- ``O2``: ``FusedBlock`` — ONNX Runtime's fused operators written directly (Attention, SkipLayerNormalization,
  BiasGelu or QuickGelu; 9 nodes): ONNX Runtime only, so TensorRT cannot build it.

The blocks wrap open_clip's ``ResidualAttentionBlock`` and read its own parameters (nothing is copied), and
``export_blocks`` puts them in place only while a graph is traced.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk.models.vit import vision_transformer

from .options import optimize_level
from .onnxruntime_ops import BiasGelu, FusedAttention, QuickGelu, SkipLayerNorm


def _layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` as one LayerNormalization (open_clip's LayerNorm adds a cast back to the input's dtype)."""
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return norm(x)


class LeanBlock(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` on ``[B,T,D]`` (``[T,B,D]`` where not batch-first) with attention
    written as the plain pattern: ``x + ls_1(attn(ln_1(x)))``, then ``x + ls_2(mlp(ln_2(x)))``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ls_1 = block.ln_1, block.attn, block.ls_1
        self.ln_2, self.mlp, self.ls_2 = block.ln_2, block.mlp, block.ls_2

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("image towers attend without a mask")
        if not self.attn.batch_first:
            return self.residual(x.transpose(0, 1)).transpose(0, 1)
        return self.residual(x)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-first tokens ``[B,T,D]`` through the block."""
        x = x + self.ls_1(self.attention(_layer_norm(self.ln_1, x)))
        return x + self.ls_2(self.mlp(_layer_norm(self.ln_2, x)))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention ``[B,T,D] -> [B,T,D]`` (through ``A`` = heads x head width); ``T`` is
        static, so every reshape is a constant."""
        attn = self.attn
        length, heads, head_width = int(x.shape[1]), attn.num_heads, attn.head_dim
        packed = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [B, T, 3A], A = heads x head width
        query, key, value = packed.reshape(-1, length, 3 * heads, head_width).transpose(1, 2).split(heads, dim=1)
        weights = ((query * head_width ** -0.5) @ key.transpose(-1, -2)).softmax(dim=-1)  # [B, H, T, T]
        return attn.out_proj((weights @ value).transpose(1, 2).reshape(-1, length, heads * head_width))


class FusedBlock(LeanBlock):
    """The block in ONNX Runtime's fused operators: LayerNormalization, Attention, the out-projection MatMul,
    SkipLayerNormalization (out-projection bias + residual + ln_2), MatMul, BiasGelu (QuickGelu), MatMul and the
    residual. A LayerScale is folded into the projection before it; an MLP of another form stays plain."""

    def __init__(self, block: nn.Module):
        super().__init__(block)
        self.activation = _fusable_activation(block.mlp)  # None: the MLP stays plain

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        hidden = FusedAttention.apply(_layer_norm(self.ln_1, x), attn.in_proj_weight.t(), attn.in_proj_bias,
                                      attn.num_heads)
        weight, bias = _scaled(attn.out_proj, self.ls_1)
        hidden, x = SkipLayerNorm.apply(hidden @ weight, x, self.ln_2.weight, self.ln_2.bias, bias, self.ln_2.eps)
        return x + self.mlp_branch(hidden)

    def mlp_branch(self, hidden: torch.Tensor) -> torch.Tensor:
        """``ls_2(mlp(hidden))`` on ln_2's output ``[B,T,D]``."""
        if self.activation is None:
            return self.ls_2(self.mlp(hidden))
        fc = self.mlp.c_fc
        if self.activation == "gelu":
            hidden = BiasGelu.apply(hidden @ fc.weight.t(), fc.bias)
        else:
            hidden = QuickGelu.apply(F.linear(hidden, fc.weight, fc.bias))
        weight, bias = _scaled(self.mlp.c_proj, self.ls_2)
        return hidden @ weight + bias


def _scaled(linear: nn.Linear, layer_scale: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear``'s weight ``[in, out]`` and bias ``[out]`` with a LayerScale after it folded in."""
    weight, bias = linear.weight.t(), linear.bias
    gamma = getattr(layer_scale, "gamma", None)
    return (weight, bias) if gamma is None else (weight * gamma, bias * gamma)


def _fusable_activation(mlp: nn.Module) -> str | None:
    """``gelu`` or ``quick_gelu`` for open_clip's ``c_fc -> activation -> c_proj`` MLP, else None."""
    from prtk.models.compat import import_open_clip

    parts = dict(mlp.named_children())
    if set(parts) - {"c_fc", "gelu", "ln", "c_proj"} or not isinstance(parts.get("ln", nn.Identity()), nn.Identity):
        return None
    if not all(isinstance(parts.get(name), nn.Linear) and parts[name].bias is not None for name in ("c_fc", "c_proj")):
        return None
    activation = parts.get("gelu")
    if isinstance(activation, nn.GELU) and activation.approximate == "none":
        return "gelu"
    if isinstance(activation, import_open_clip().transformer.QuickGELU):
        return "quick_gelu"
    return None


BLOCKS = {"O1": LeanBlock, "O2": FusedBlock}


@contextlib.contextmanager
def export_blocks(visual: nn.Module, level: str) -> Iterator[None]:
    """Within the block, ``visual``'s transformer runs the blocks of ``level`` (O0: its own)."""
    optimize_level(level)
    transformer = vision_transformer(visual).transformer
    if level not in BLOCKS:
        yield
        return
    original = transformer.resblocks
    transformer.resblocks = nn.ModuleList(BLOCKS[level](block) for block in original)
    try:
        yield
    finally:
        transformer.resblocks = original
