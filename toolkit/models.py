"""Load open_clip CLIP models: hub name + pretrained tag, local checkpoint, JSON config, built-in configs.

Weights come from exactly one explicit source; random weights are only used when asked for.
Checkpoints are read safely: safetensors, or a state dict through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ._torchvision_compat import import_open_clip
from .errors import PrtkInputError
from .vit import ViTSpec

BUILTIN_CONFIG_PACKAGE = "prtk.model_configs"
BUILTIN_CHECKPOINT_PACKAGE = "prtk.checkpoints"
_registered_config_dirs: set[str] = set()


@dataclass
class LoadedClip:
    """A CLIP model ready for inference, with its eval transform and tokenizer."""

    name: str
    model: nn.Module
    preprocess: Callable  # PIL image -> float tensor [3, H, W], the model's own eval transform
    tokenizer: Callable  # list[str] -> int tensor [T, context_length]
    weights: dict = field(default_factory=dict)  # where the weights came from: {"source": ..., ...}

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
    def preprocess_config(self) -> dict:
        """Input size, resize mode and normalisation, as open_clip records them on the model."""
        open_clip = import_open_clip()
        return dict(open_clip.get_model_preprocess_cfg(self.model))


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


def register_builtin_configs() -> None:
    """Make prtk's built-in architectures (``prtk/model_configs/*.json``) known to open_clip."""
    config_dir = resources.files(BUILTIN_CONFIG_PACKAGE)
    _register_config_path(Path(str(config_dir)))


def builtin_config_path(name: str) -> Path:
    """The JSON config of built-in model ``name``."""
    return Path(str(resources.files(BUILTIN_CONFIG_PACKAGE))) / f"{name}.json"


def builtin_model_names() -> list[str]:
    config_dir = resources.files(BUILTIN_CONFIG_PACKAGE)
    return sorted(Path(str(p)).stem for p in config_dir.iterdir() if str(p).endswith(".json"))


def known_model_names() -> list[str]:
    """Every architecture ``--model`` accepts: open_clip's and the built-in ones."""
    register_builtin_configs()
    return import_open_clip().list_models()


def builtin_checkpoint(name: str) -> Path | None:
    """The weights shipped with built-in model ``name`` (``prtk/checkpoints/<name>.safetensors``), if any."""
    path = Path(str(resources.files(BUILTIN_CHECKPOINT_PACKAGE))) / f"{name}.safetensors"
    return path if path.is_file() else None


def register_config_file(path: str | Path) -> str:
    """Register a custom open_clip model config (JSON); returns its model name (the file stem)."""
    path = Path(path)
    if not path.is_file():
        raise PrtkInputError(f"model config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PrtkInputError(f"model config {path} is not valid JSON: {error}") from None
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config] if isinstance(
        config, dict) else ["embed_dim", "vision_cfg", "text_cfg"]
    if missing:
        raise PrtkInputError(f"model config {path} lacks {', '.join(missing)}")
    problem = config_problem(config)
    if problem:
        raise PrtkInputError(f"model config {path}: {problem}")
    _register_config_path(path)
    return path.stem


def config_problem(config: dict) -> str | None:
    """The first impossible value of an open_clip model config (naming its field), or None."""
    vision, text = config["vision_cfg"], config["text_cfg"]
    if not isinstance(vision, dict) or not isinstance(text, dict):
        return "vision_cfg and text_cfg must be objects"
    lowest = {"embed_dim": 1}  # field -> smallest whole number allowed; values as open_clip reads them (defaults)
    value = {"embed_dim": config.get("embed_dim")}
    for section, fields in (("vision_cfg", {"layers": (12, 2), "width": (768, 1), "head_width": (64, 1),
                                            "patch_size": (16, 1), "image_size": (224, 1)}),
                            ("text_cfg", {"layers": (12, 1), "width": (512, 1), "heads": (8, 1),
                                          "context_length": (77, 1), "vocab_size": (49408, 1)})):
        for key, (default, low) in fields.items():
            value[f"{section}.{key}"] = config[section].get(key, default)
            lowest[f"{section}.{key}"] = low
    for field_name, low in lowest.items():
        if isinstance(value[field_name], bool) or not isinstance(value[field_name], int) or value[field_name] < low:
            bound = "a whole number" + (f" >= {low}" if low > 1 else " > 0")
            return f"{field_name} must be {bound}, got {json.dumps(value[field_name])}"
    mlp_ratio = vision.get("mlp_ratio", 4.0)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
        return f"vision_cfg.mlp_ratio must be a number > 0, got {json.dumps(mlp_ratio)}"
    if value["vision_cfg.width"] % value["vision_cfg.head_width"]:
        return (f"vision_cfg.width {value['vision_cfg.width']} is not divisible by vision_cfg.head_width "
                f"{value['vision_cfg.head_width']}")
    image_size, patch_size = value["vision_cfg.image_size"], value["vision_cfg.patch_size"]
    if patch_size > image_size:
        return f"vision_cfg.patch_size {patch_size} is larger than vision_cfg.image_size {image_size}"
    if image_size % patch_size:
        return f"vision_cfg.image_size {image_size} is not a multiple of vision_cfg.patch_size {patch_size}"
    if value["text_cfg.width"] % value["text_cfg.heads"]:
        return (f"text_cfg.width {value['text_cfg.width']} is not divisible by text_cfg.heads "
                f"{value['text_cfg.heads']}")
    return None


def _register_config_path(path: Path) -> None:
    if str(path) in _registered_config_dirs:
        return
    import_open_clip().add_model_config(path)
    _registered_config_dirs.add(str(path))


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

    if pretrained:
        model, preprocess = _create_from_hub(open_clip, name, pretrained, device)
        weights = {"source": "hub", "pretrained": pretrained}
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with _quiet_open_clip_logs():
                model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, name)
            weights = ({"source": "built-in", "file": shipped.name} if checkpoint == shipped
                       else {"source": "checkpoint", "path": str(checkpoint)})
        else:
            weights = {"source": "random", "seed": seed}
    model.eval()
    return LoadedClip(name=name, model=model, preprocess=preprocess,
                      tokenizer=open_clip.get_tokenizer(name), weights=weights)


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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise PrtkInputError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # e.g. the pickle protocol notice; the one-line error says enough
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's message advises weights_only=False: never repeat it
        raise PrtkInputError(f"cannot read checkpoint {path}: not a plain state dict of tensors "
                             f"({_unpickler_detail(error)}); prtk never unpickles other objects: save the state "
                             "dict alone, or as .safetensors") from None
    except Exception as error:  # any decoding failure is a bad file, reported in one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PrtkInputError(f"cannot read checkpoint {path}: {first_line}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PrtkInputError(f"checkpoint {path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _unpickler_detail(error: Exception) -> str:
    """The weights-only unpickler's own reason (e.g. ``Unsupported global: GLOBAL builtins.print``)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        tail = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if tail:
            return tail[0].split(" was not an allowed global")[0].split(". ")[0].rstrip(".")[:120]
    return "unreadable pickle"


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly; a mismatch is reported in one line."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    if mismatched:
        key = mismatched[0]
        problems.append(f"{len(mismatched)} shape mismatches (first: {key} is {list(state[key].shape)} "
                        f"in the checkpoint, {list(expected[key].shape)} in the model)")
    if problems:
        raise PrtkInputError(f"checkpoint {path} does not fit {name}: {'; '.join(problems)}")
    broken = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise PrtkInputError(f"checkpoint {path} has NaN or infinite values in {len(broken)} tensors "
                             f"(first: {broken[0]})")
    model.load_state_dict(state, strict=True)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
