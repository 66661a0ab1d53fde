"""The token-rank predictor (DESIGN.md, Phase II): one importance score per patch from the tokens entering block l.

Architecture (reference, scaled to the tower): LayerNorm + channel reduction ``D -> width``, one
MLP-Mixer block (token-mixing MLP across the ``N`` patches, ``N -> token_hidden -> N``; channel MLP
``width -> channel_hidden -> width``), then ``Linear(width, 1)``. Shapes: tokens ``[B, N+1, D]`` (CLS
first, ignored) -> scores ``[B, N]``, higher = more important.

Losses: ``keep_set_kl`` (the reference: KL from a target with equal mass on the golden keep set at a
budget) and ``list_mle`` (Plackett-Luce likelihood of the whole golden order). Metrics: ``top_k_overlap``
and ``kendall_tau``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .flops import vision_macs
from .pruning import keep_count
from .scorers import ScorerInput, TokenScorer
from .vit import ViTSpec

KEEP_SET_MASS = 0.99  # target probability mass on the golden keep set in ``keep_set_kl``


@dataclass(frozen=True)
class PredictorConfig:
    """Sizes of the predictor; ``for_spec`` picks the defaults for a tower."""

    width: int
    token_hidden: int
    channel_hidden: int

    @classmethod
    def for_spec(cls, spec: ViTSpec) -> PredictorConfig:
        """Reference sizes (width 64, channel MLP 2x) capped so the predictor stays under 1% of the tower."""
        width = min(64, max(8, spec.width // 8))
        return cls(width=width, token_hidden=max(8, spec.num_patches // 2), channel_hidden=2 * width)

    def as_dict(self) -> dict:
        return asdict(self)


class TokenRankPredictor(nn.Module):
    """Patch scores ``[B, N]`` from the tokens entering block l ``[B, N+1, D]``."""

    def __init__(self, spec: ViTSpec, config: PredictorConfig):
        super().__init__()
        self.config = config
        self.reduce = nn.Sequential(nn.LayerNorm(spec.width), nn.Linear(spec.width, config.width))
        self.token_norm = nn.LayerNorm(config.width)
        self.token_mlp = nn.Sequential(nn.Linear(spec.num_patches, config.token_hidden), nn.GELU(),
                                       nn.Linear(config.token_hidden, spec.num_patches))
        self.channel_norm = nn.LayerNorm(config.width)
        self.channel_mlp = nn.Sequential(nn.Linear(config.width, config.channel_hidden), nn.GELU(),
                                         nn.Linear(config.channel_hidden, config.width))
        self.score = nn.Linear(config.width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.reduce(tokens[:, 1:])  # [B, N, width]
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel_mlp(self.channel_norm(x))
        return self.score(x).squeeze(-1)


def predictor_macs(spec: ViTSpec, config: PredictorConfig) -> int:
    """MACs of one predictor pass for one image (linear layers; norms and activations are negligible)."""
    patches = spec.num_patches
    return (patches * spec.width * config.width + 2 * config.width * patches * config.token_hidden
            + 2 * patches * config.width * config.channel_hidden + patches * config.width)


def predictor_cost(predictor: TokenRankPredictor, visual: nn.Module, spec: ViTSpec) -> dict:
    """Parameters and MACs of the predictor next to the image tower's, with their ratios."""
    params = sum(p.numel() for p in predictor.parameters())
    tower_params = sum(p.numel() for p in visual.parameters())
    macs, tower_macs = predictor_macs(spec, predictor.config), vision_macs(spec)
    return {"params": params, "tower_params": tower_params, "params_ratio": params / tower_params,
            "macs": macs, "tower_macs": tower_macs, "macs_ratio": macs / tower_macs}


class PredictorScorer(TokenScorer):
    """A trained predictor as the pruned tower's scorer."""

    name = "predictor"

    def __init__(self, predictor: TokenRankPredictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, inputs: ScorerInput) -> torch.Tensor:
        return self.predictor(inputs.tokens)


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
