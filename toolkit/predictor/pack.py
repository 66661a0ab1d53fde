"""The ranker pack (``.prtk``): a trained predictor and, per keep ratio, its learnable tokens.

One safetensors file: tensors ``predictor.<name>`` (the predictor's state dict) and ``tokens.<keep>``
``[P, D]`` per keep ratio (none when P = 0); metadata key ``prtk`` holds JSON: format, model name and
weights hash, layer, keep ratios, P, predictor sizes and cost, the ranking and training data it was
trained on, and the validation metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prtk.core.errors import PrtkInputError
from prtk.models import LoadedClip, check_made_for
from prtk.predictor.model import PredictorConfig, PredictorScorer, TokenRankPredictor
from prtk.core.tagged_file import read_tagged, write_tagged

FORMAT = "prtk-pack/1"


def keep_key(keep: float) -> str:
    """How a keep ratio names its tokens in the file: ``0.6`` -> ``tokens.0.6``."""
    return f"tokens.{keep:g}"


@dataclass
class RankerPack:
    """``predictor`` state dict, ``tokens`` ``{keep: [P, D]}``, and the JSON ``meta``."""

    predictor: dict[str, torch.Tensor]
    tokens: dict[float, torch.Tensor]
    meta: dict

    @property
    def layer(self) -> int:
        return self.meta["layer"]

    @property
    def keeps(self) -> list[float]:
        return self.meta["keep_ratios"]

    @property
    def num_tokens(self) -> int:
        return self.meta["num_tokens"]

    def check_model(self, clip: LoadedClip) -> None:
        """Refuse a pack trained for another model or other weights."""
        check_made_for("pack", self.meta["model"], self.meta["weights_sha256"], self.meta.get("weights"), clip)

    def build_predictor(self, clip: LoadedClip) -> TokenRankPredictor:
        predictor = TokenRankPredictor(clip.spec, PredictorConfig(**self.meta["predictor"]))
        predictor.load_state_dict(self.predictor)
        return predictor.eval().requires_grad_(False)

    def predictor_scorer(self, clip: LoadedClip) -> PredictorScorer:
        """The pack's predictor as a pruned tower's scorer."""
        return PredictorScorer(self.build_predictor(clip))

    def learnable_tokens(self, keep: float) -> torch.Tensor | None:
        """The tokens ``[P, D]`` trained for ``keep`` (None when P = 0); refuses a keep ratio without tokens."""
        if self.num_tokens == 0:
            return None
        if keep not in self.keeps:
            raise PrtkInputError(f"pack has tokens for keep {', '.join(f'{k:g}' for k in self.keeps)}, not {keep:g}: "
                                 "pass --no-tokens or train tokens for it")
        return self.tokens[keep]


def save_pack(path: str | Path, pack: RankerPack) -> None:
    """Write atomically; equal inputs give equal bytes."""
    tensors = {f"predictor.{name}": value for name, value in pack.predictor.items()}
    tensors |= {keep_key(keep): value for keep, value in pack.tokens.items()}
    write_tagged(path, tensors, pack.meta | {"format": FORMAT})


def load_pack(path: str | Path) -> RankerPack:
    """Read a pack; anything else is refused in one line."""
    tensors, meta = read_tagged(path, "ranker pack", FORMAT)
    predictor = {name.removeprefix("predictor."): t for name, t in tensors.items() if name.startswith("predictor.")}
    tokens = {keep: tensors[keep_key(keep)] for keep in meta["keep_ratios"] if keep_key(keep) in tensors}
    return RankerPack(predictor=predictor, tokens=tokens, meta=meta)
