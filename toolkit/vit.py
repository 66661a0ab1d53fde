"""The facts prtk needs about an open_clip VisionTransformer: its shape (``ViTSpec``) and access checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn

from .errors import PrtkInputError


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of a ViT image tower; ``num_patches`` is N (tokens = N + 1 with CLS)."""

    layers: int
    width: int
    heads: int
    mlp_width: int
    patch_size: int
    image_size: int
    output_dim: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_width / self.width

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
            patch_size=patch_h,
            image_size=height,
            output_dim=tower.output_dim,
        )


def vision_transformer(visual: nn.Module) -> nn.Module:
    """Return ``visual`` if it is an open_clip VisionTransformer prtk can prune, else raise PrtkInputError."""
    from ._torchvision_compat import import_open_clip

    open_clip = import_open_clip()
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise PrtkInputError(f"prtk prunes open_clip VisionTransformer image towers, got {type(visual).__name__}")
    if visual.attn_pool is not None:
        raise PrtkInputError("image towers with an attentional pooler (CoCa) are not supported")
    block = visual.transformer.resblocks[0]
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise PrtkInputError(f"unsupported transformer block type {type(block).__name__}: "
                             "prtk needs open_clip's ResidualAttentionBlock")
    return visual
