"""The module that is exported: images in, embedding (and optionally zero-shot logits and kept indices) out."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk.pruning.tower import PrunedVisionTower

INPUT_NAME = "images"


class DeployedTower(nn.Module):
    """images ``[B,3,H,W]`` -> ``embedding [B,E]`` (L2-normalised unless ``normalize`` is off),
    then ``logits [B,C]`` (``logit_scale`` x cosine to a baked-in zero-shot classifier ``[C,E]``) and
    ``kept_indices [B,k]`` (int64, ascending; pruned towers only), each when asked for.

    ``tower`` is a ``PrunedVisionTower`` or, for the unpruned reference, open_clip's visual module.
    """

    def __init__(self, tower: nn.Module, normalize: bool = True, classifier: torch.Tensor | None = None,
                 logit_scale: float = 100.0, kept_indices: bool = True):
        super().__init__()
        self.tower = tower
        self.normalize = normalize
        self.kept_indices = kept_indices and isinstance(tower, PrunedVisionTower)
        self.logit_scale = logit_scale
        self.register_buffer("classifier", None if classifier is None else classifier.detach().clone())

    @property
    def output_names(self) -> list[str]:
        names = ["embedding"]
        if self.classifier is not None:
            names.append("logits")
        if self.kept_indices:
            names.append("kept_indices")
        return names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.kept_indices:
            embedding, kept = self.tower(images, return_indices=True)
        else:
            embedding, kept = self.tower(images), None
        normalized = F.normalize(embedding, dim=-1)
        outputs = [normalized if self.normalize else embedding]
        if self.classifier is not None:
            outputs.append(self.logit_scale * normalized @ self.classifier.T)
        if kept is not None:
            outputs.append(kept)
        return tuple(outputs)
