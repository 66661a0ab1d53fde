"""What the predictor is trained on: ``keep_set_kl`` (the reference: KL from a target with equal mass on the
golden keep set at each budget) and ``list_mle`` (Plackett-Luce likelihood of the whole golden order).
Scores and golden orders are ``[B, N]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prtk.pruning.tower import keep_count

KEEP_SET_MASS = 0.99  # target probability mass on the golden keep set in ``keep_set_kl``


def importance(order: torch.Tensor) -> torch.Tensor:
    """Golden orders ``[B, N]`` (most important first) -> per-patch rank from the end ``[B, N]`` (N-1 = best)."""
    patches = order.shape[1]
    descending = torch.arange(patches - 1, -1, -1, device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, descending)


def keep_set_kl(scores: torch.Tensor, order: torch.Tensor, keeps: tuple[float, ...]) -> torch.Tensor:
    """Mean over ``keeps`` of KL(target || softmax(scores)); the target puts ``KEEP_SET_MASS`` evenly on the
    golden keep set ``order[:, :k]`` and the rest evenly on the pruned patches. scores, order ``[B, N]``."""
    patches = scores.shape[1]
    log_probs = scores.log_softmax(dim=1)
    losses = []
    for keep in keeps:
        k = keep_count(keep, patches)
        if k == patches:
            continue
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, :k], True)
        target = torch.where(kept, KEEP_SET_MASS / k, (1 - KEEP_SET_MASS) / (patches - k))
        losses.append(F.kl_div(log_probs, target, reduction="batchmean"))
    return torch.stack(losses).mean()


def list_mle(scores: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Negative Plackett-Luce log-likelihood of the golden order, per image, averaged. scores, order ``[B, N]``."""
    ordered = scores.gather(1, order)  # most important first
    tail_logsumexp = ordered.flip(1).logcumsumexp(dim=1).flip(1)  # logsumexp over positions j..N-1
    return (tail_logsumexp - ordered).sum(dim=1).mean()


LOSSES = ("kl", "listmle")


def ranking_loss(kind: str, scores: torch.Tensor, order: torch.Tensor, keeps: tuple[float, ...]) -> torch.Tensor:
    return keep_set_kl(scores, order, keeps) if kind == "kl" else list_mle(scores, order)
