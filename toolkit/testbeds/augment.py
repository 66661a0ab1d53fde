"""Batched training augmentation on uint8 image tensors, driven by an explicit generator (deterministic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Reflect-pad by ``padding`` pixels, crop back to ``[B, 3, H, W]`` at random offsets, flip half horizontally.

    ``images`` is uint8 ``[B, 3, H, W]``; the result is float32 in [0, 1].
    """
    batch, _, height, width = images.shape
    pixels = images.float().div_(255)
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    if padding:
        padded = F.pad(pixels, (padding,) * 4, mode="reflect")
        pixels = torch.stack([padded[i, :, y:y + height, x:x + width]
                              for i, (y, x) in enumerate(offsets.tolist())])
    if flip:
        pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
    return pixels
