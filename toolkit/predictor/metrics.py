"""How well predicted scores reproduce the golden ranking: ``top_k_overlap`` at a budget and ``kendall_tau``
over the whole order. Scores and golden orders are ``[B, N]``."""

from __future__ import annotations

import torch

from prtk.predictor.losses import importance
from prtk.pruning.tower import keep_count


def top_k_overlap(scores: torch.Tensor, order: torch.Tensor, keep: float) -> torch.Tensor:
    """Per image, the fraction of the predicted top-k that is in the golden keep set ``order[:, :k]``: ``[B]``."""
    k = keep_count(keep, scores.shape[1])
    predicted = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    return predicted.gather(1, order[:, :k]).float().mean(dim=1)


def kendall_tau(scores: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Per image, Kendall's tau-a between predicted scores and golden importance ``[B]`` (1 = same order)."""
    golden = importance(order).float()
    patches = scores.shape[1]
    upper = torch.triu(torch.ones(patches, patches, dtype=torch.bool, device=scores.device), diagonal=1)
    agreement = ((scores.unsqueeze(2) - scores.unsqueeze(1)).sign()
                 * (golden.unsqueeze(2) - golden.unsqueeze(1)).sign())  # [B, N, N]
    return agreement[:, upper].mean(dim=1)
