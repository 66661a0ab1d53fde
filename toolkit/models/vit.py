"""The facts prtk needs about an open_clip VisionTransformer: its shape (``ViTSpec``), the guard that refuses
towers prtk cannot wrap, and the two private open_clip methods prtk calls (``embed_tokens``, ``pool_tokens``).

This is the only module that reaches into open_clip's VisionTransformer. prtk wraps open_clip's
``ResidualAttentionBlock`` (``ln_1``, ``attn`` an ``nn.MultiheadAttention``, ``ls_1``, ``ln_2``, ``mlp``,
``ls_2``) and calls the tower's ``_embeds`` and ``_pool`` (open_clip >= 2.32; tested with 3.3): the guard checks
every one of them on every block, so a tower of another kind is refused in one line rather than mis-pruned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from prtk.core.errors import PrtkInputError


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of a ViT image tower; ``num_patches`` is N (tokens = N + 1 with CLS)."""

    layers: int
    width: int
    heads: int
    mlp_width: int
    head_width: int
    patch_size: int
    image_size: int
    output_dim: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_width / self.width

    @property
    def attention_width(self) -> int:
        """``A`` = heads x head width (the width ``D`` unless heads were pruned)."""
        return self.heads * self.head_width

    def as_dict(self) -> dict:
        return asdict(self) | {"num_patches": self.num_patches}

    @classmethod
    def of(cls, visual: nn.Module) -> "ViTSpec":
        tower = vision_transformer(visual)
        block = tower.transformer.resblocks[0]
        height, width = tower.image_size
        patch_h, patch_w = tower.patch_size
        if height != width or patch_h != patch_w:
            raise PrtkInputError(f"only square images and patches are supported, got image {tower.image_size} "
                                 f"and patch {tower.patch_size}")
        return cls(
            layers=len(tower.transformer.resblocks),
            width=tower.transformer.width,
            heads=block.attn.num_heads,
            mlp_width=block.mlp.c_fc.out_features,
            head_width=block.attn.head_dim,
            patch_size=patch_h,
            image_size=height,
            output_dim=tower.output_dim,
        )


TOWER_METHODS = ("_embeds", "_pool")  # private open_clip methods prtk calls
BLOCK_PARTS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")  # open_clip ResidualAttentionBlock parts prtk uses


def vision_transformer(visual: nn.Module) -> nn.Module:
    """Return ``visual`` if it is an open_clip VisionTransformer prtk can prune, else raise PrtkInputError."""
    from prtk.models.compat import import_open_clip

    open_clip = import_open_clip()
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise PrtkInputError(f"prtk prunes open_clip VisionTransformer image towers, got {type(visual).__name__}")
    if visual.attn_pool is not None:
        raise PrtkInputError("image towers with an attentional pooler (CoCa) are not supported")
    missing = [name for name in TOWER_METHODS if not callable(getattr(visual, name, None))]
    if missing:
        raise PrtkInputError(f"open_clip {open_clip.__version__}'s VisionTransformer lacks {', '.join(missing)}: "
                             "prtk needs open_clip >= 2.32 (tested with 3.3)")
    for index, block in enumerate(visual.transformer.resblocks):
        lacking = [part for part in BLOCK_PARTS if not hasattr(block, part)]
        if lacking or not isinstance(block.attn, nn.MultiheadAttention):
            what = f"lacks {', '.join(lacking)}" if lacking else f"attends with {type(block.attn).__name__}"
            raise PrtkInputError(f"unsupported transformer block {index} ({type(block).__name__}, {what}): prtk "
                                 "wraps open_clip's ResidualAttentionBlock with nn.MultiheadAttention")
    return visual


def embed_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """open_clip's patch embedding, CLS, positional embedding and pre-LayerNorm: images [B,3,H,W] -> [B,N+1,D]."""
    return visual._embeds(images)


def run_blocks(visual: nn.Module, tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """open_clip's ``resblocks[start:stop]`` on batch-first tokens [B,T,D] -> [B,T,D]."""
    transformer = visual.transformer
    x = tokens if transformer.batch_first else tokens.transpose(0, 1)
    for block in transformer.resblocks[start:stop]:
        x = block(x)
    return x if transformer.batch_first else x.transpose(0, 1)


def pool_tokens(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's pooling (after its final LayerNorm) of the last block's output [B,T,D] -> [B,D]."""
    pooled, _ = visual._pool(tokens)
    return pooled


def project_tokens(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's pooling and output projection of tokens [B,T,D] -> the image embedding [B,E]."""
    pooled = pool_tokens(visual, tokens)
    return pooled if visual.proj is None else pooled @ visual.proj
