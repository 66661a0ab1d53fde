"""Load open_clip CLIP models: hub name + pretrained tag, local checkpoint, JSON config, built-in configs.

Weights come from exactly one explicit source; random weights are only used when asked for.
Checkpoints are read safely: safetensors, or a state dict through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from prtk.models.compat import import_open_clip
from prtk.core.errors import PrtkInputError
from prtk.models.preprocessing import Preprocessing
from prtk.models.configs import builtin_checkpoint, known_model_names, register_config_file, structure_keys
from prtk.models.state_dicts import load_checkpoint, state_dict_sha256
from prtk.models.structure import narrow_attention
from prtk.models.vit import ViTSpec


@dataclass
class LoadedClip:
    """A CLIP model ready for inference, with its eval transform and tokenizer."""

    name: str
    model: nn.Module
    preprocess: Callable  # PIL image -> float tensor [3, H, W], the model's own eval transform
    tokenizer: Callable  # list[str] -> int tensor [T, context_length]
    weights: dict = field(default_factory=dict)  # where the weights came from: {"source": ..., ...}
    lineage: dict | None = None  # a structurally pruned model's parent and what was removed (its config's)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @cached_property
    def spec(self) -> ViTSpec:
        return ViTSpec.of(self.model.visual)

    @cached_property
    def weights_sha256(self) -> str:
        return state_dict_sha256(self.model.state_dict())

    @property
    def logit_scale(self) -> float:
        """The zero-shot logit scale: ``exp`` of the model's learnt log scale (100 without one)."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().exp()) if scale is not None else 100.0

    @property
    def preprocess_config(self) -> dict:
        """Input size, resize mode and normalisation, as open_clip records them on the model."""
        open_clip = import_open_clip()
        return dict(open_clip.get_model_preprocess_cfg(self.model))

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing ``preprocess`` applies, as a fact an artifact's description states."""
        return Preprocessing.of_model(self.model)


def check_made_for(kind: str, model: str, weights_sha256: str, weights: dict | None, clip: LoadedClip) -> None:
    """Refuse a file (``kind``: "pack", "ranking", an artifact's name) made for another model or other weights;
    when only the weights differ, say which weights option gives the ones it was made with (``weights``: the
    source recorded in the file, if any)."""
    if model != clip.name:
        raise PrtkInputError(f"{kind} was made for {model} with weights {weights_sha256[:12]}, not {clip.name}")
    if weights_sha256 != clip.weights_sha256:
        hint = f"; it was made with {weights_option(weights)}" if weights else ""
        raise PrtkInputError(f"{kind} was made for {model} with weights {weights_sha256[:12]}, not with weights "
                             f"{clip.weights_sha256[:12]} ({weights_option(clip.weights)}){hint}")


def weights_option(weights: dict) -> str:
    """The model option that loads weights from ``weights`` (a ``LoadedClip.weights`` source record)."""
    source = weights.get("source")
    if source == "hub":
        return f"--pretrained {weights.get('pretrained')}"
    if source == "checkpoint":
        return f"--checkpoint {weights.get('path')}"
    if source == "random":
        return f"--random-weights --seed {weights.get('seed')}"
    if source == "built-in":
        return "the shipped weights (no weights option)"
    return "other weights"


def load_clip(
    name: str,
    *,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LoadedClip:
    """Build model ``name`` (an open_clip or built-in architecture, or the stem of ``config``) in eval mode.

    At most one of ``pretrained`` (open_clip hub tag), ``checkpoint`` (local file) or ``random_weights``
    (seeded with ``seed``) says where the weights come from; with none, a built-in model with shipped
    weights (a test bed) loads those.
    """
    open_clip = import_open_clip()
    if config is not None:
        config_name = register_config_file(config)
        if name and name != config_name:
            raise PrtkInputError(f"--model {name} does not match --model-config {config} (its name is {config_name})")
        name = config_name
    if not name or name not in known_model_names():
        raise PrtkInputError(f"unknown model {name!r}: run `prtk models` for the known names "
                             "or pass --model-config FILE")
    sources = [s for s, given in (("--pretrained", pretrained), ("--checkpoint", checkpoint),
                                  ("--random-weights", random_weights)) if given]
    shipped = builtin_checkpoint(name)
    if not sources and shipped is not None:
        checkpoint, sources = shipped, ["built-in"]
    if not sources:
        raise PrtkInputError(f"no weights given for {name}: pass --checkpoint FILE, --pretrained TAG "
                             "or --random-weights")
    if len(sources) > 1:
        raise PrtkInputError(f"give one source of weights, got {' and '.join(sources)}")

    keys = structure_keys(name)
    if pretrained:
        model, preprocess = _create_from_hub(open_clip, name, pretrained, device)
        weights = {"source": "hub", "pretrained": pretrained}
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with _quiet_open_clip_logs():
                model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
            if keys.vision_heads is not None:
                narrow_attention(model.visual, keys.vision_heads)
                model.visual.to(device)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, name)
            weights = ({"source": "built-in", "file": shipped.name} if checkpoint == shipped
                       else {"source": "checkpoint", "path": str(checkpoint)})
        else:
            weights = {"source": "random", "seed": seed}
    model.eval()
    return LoadedClip(name=name, model=model, preprocess=preprocess,
                      tokenizer=open_clip.get_tokenizer(name), weights=weights, lineage=keys.lineage)


def _create_from_hub(open_clip, name: str, tag: str, device) -> tuple[nn.Module, Callable]:
    known_tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in known_tags:
        raise PrtkInputError(f"unknown pretrained tag {tag!r} for {name}; known tags: "
                             f"{', '.join(known_tags) or 'none'} (or pass --checkpoint FILE)")
    try:
        with _quiet_open_clip_logs():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=device)
    except (RuntimeError, FileNotFoundError, OSError) as error:
        if "download" not in str(error).lower():
            raise
        raise PrtkInputError(f"could not fetch weights {name}/{tag} (offline, and not in the local cache); "
                             "download the checkpoint where the hub is reachable and pass --checkpoint FILE") from None
    return model, preprocess


@contextlib.contextmanager
def _quiet_open_clip_logs():
    """Silence open_clip's and the hub client's log lines (retries, random-init notices); prtk reports itself."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
