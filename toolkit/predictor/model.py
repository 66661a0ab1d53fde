"""The token-rank predictor (docs/design.md, the method, step 2): one importance score per patch.

Architecture (reference, scaled to the tower): LayerNorm + channel reduction ``D -> width``, one
MLP-Mixer block (token-mixing MLP across the ``N`` patches, ``N -> token_hidden -> N``; channel MLP
``width -> channel_hidden -> width``), then ``Linear(width, 1)``. Shapes: tokens ``[B, N+1, D]`` (CLS
first, ignored) -> scores ``[B, N]``, higher = more important.

Its losses are in ``prtk.predictor.losses``, its metrics in ``prtk.predictor.metrics``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from prtk.pruning.cost import vision_macs
from prtk.pruning.scorers import ScorerInput, TokenScorer
from prtk.models.vit import ViTSpec


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
