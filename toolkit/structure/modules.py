"""The prunable modules of an image tower — attention heads, groups of MLP channels, whole blocks — and their
exact removal in place (``removed``), which is what the MoPE metric measures.

Removing a module zeroes what it adds to the residual stream: a head's columns of the attention
out-projection, a group's columns of the MLP down-projection, a block's two output projections with their
biases. The block then computes exactly what the structurally pruned model computes (open_clip's LayerScale
multiplies a zero branch by its gamma, still zero).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from prtk.models.vit import ViTSpec

KINDS = ("head", "mlp", "block")


@dataclass(frozen=True, order=True)
class TowerModule:
    """One prunable module: ``kind`` head | mlp (a group of ``mlp_group`` channels) | block, in block ``block``
    (0-based), ``index`` its head or group number (0 for a block)."""

    kind: str
    block: int
    index: int = 0

    @property
    def key(self) -> str:
        """``b3.head2``, ``b3.mlp5``, ``b3``: the module's name in score files and cards."""
        return f"b{self.block}" if self.kind == "block" else f"b{self.block}.{self.kind}{self.index}"


def width_modules(spec: ViTSpec, mlp_group: int) -> list[TowerModule]:
    """Every head and every MLP channel group of every block."""
    groups = spec.mlp_width // mlp_group
    return [TowerModule(kind, block, index) for block in range(spec.layers)
            for kind, count in (("head", spec.heads), ("mlp", groups)) for index in range(count)]


def block_modules(spec: ViTSpec) -> list[TowerModule]:
    return [TowerModule("block", block) for block in range(spec.layers)]


def _zeroed_slices(block: nn.Module, module: TowerModule, mlp_group: int) -> list[tuple[torch.Tensor, tuple]]:
    """The (tensor, index) pairs whose entries carry ``module``'s output into the residual stream."""
    attention, down = block.attn.out_proj, block.mlp.c_proj
    if module.kind == "head":
        width = block.attn.head_dim
        return [(attention.weight, (slice(None), slice(module.index * width, (module.index + 1) * width)))]
    if module.kind == "mlp":
        return [(down.weight, (slice(None), slice(module.index * mlp_group, (module.index + 1) * mlp_group)))]
    everything = (slice(None),)
    return [(tensor, everything) for tensor in (attention.weight, attention.bias, down.weight, down.bias)
            if tensor is not None]


@contextlib.contextmanager
def removed(visual: nn.Module, modules: list[TowerModule], mlp_group: int) -> Iterator[None]:
    """Within the block, ``visual`` computes as if ``modules`` were pruned away; its weights are restored after."""
    saved = []
    with torch.no_grad():
        for module in modules:
            block = visual.transformer.resblocks[module.block]
            for tensor, index in _zeroed_slices(block, module, mlp_group):
                saved.append((tensor, index, tensor[index].clone()))
                tensor[index] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, index, values in reversed(saved):
                tensor[index] = values


def magnitude(visual: nn.Module, module: TowerModule, mlp_group: int) -> float:
    """Mean absolute weight of a module (its in- and out-projection slices): the magnitude baseline's score."""
    block = visual.transformer.resblocks[module.block]
    attention, mlp = block.attn, block.mlp
    if module.kind == "head":
        width, heads = attention.head_dim, attention.num_heads
        rows = [part * heads * width + module.index * width + offset for part in range(3) for offset in range(width)]
        pieces = [attention.in_proj_weight[rows], attention.out_proj.weight[:, rows[:width]]]
    elif module.kind == "mlp":
        channels = slice(module.index * mlp_group, (module.index + 1) * mlp_group)
        pieces = [mlp.c_fc.weight[channels], mlp.c_proj.weight[:, channels]]
    else:
        pieces = [parameter for name, parameter in block.named_parameters() if name.endswith("weight")
                  and parameter.dim() == 2]
    with torch.no_grad():
        return float(sum(piece.abs().sum() for piece in pieces) / sum(piece.numel() for piece in pieces))
