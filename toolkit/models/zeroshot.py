"""The zero-shot head: class names x prompt templates -> normalised text embeddings, and top-k accuracy."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
)


@torch.inference_mode()
def class_embeddings(model: nn.Module, tokenizer: Callable, class_names: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """Zero-shot classifier ``[C, E]``: per class, the normalised mean of its normalised prompt embeddings."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every prompt template needs a '{}' placeholder for the class name")
    device = next(model.parameters()).device
    prompts = [template.format(name) for name in class_names for template in templates]
    text = F.normalize(model.encode_text(tokenizer(prompts).to(device)), dim=-1)
    per_class = text.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def zero_shot_logits(image_embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[B, C]`` between image embeddings ``[B, E]`` and the classifier ``[C, E]``."""
    return F.normalize(image_embeddings, dim=-1) @ classifier.T


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Count of images whose label is among the top-k classes, per k (k capped at the number of classes)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # [B, kmax]
    hits = ranked == labels.unsqueeze(1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}
