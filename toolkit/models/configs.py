"""Model architectures by name: prtk's built-in configs, the shipped test-bed weights, custom config files."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prtk.core.errors import PrtkInputError
from prtk.models.compat import import_open_clip
from prtk.models.structure import heads_problem, split_config

BUILTIN_CONFIG_PACKAGE = "prtk.model_configs"
BUILTIN_CHECKPOINT_PACKAGE = "prtk.checkpoints"
_registered_config_dirs: set[str] = set()


@dataclass(frozen=True)
class StructureKeys:
    """What a config says beyond open_clip's keys: image-tower heads per block (None: width / head_width) and
    the structured-pruning lineage (None: not pruned by prtk)."""

    vision_heads: int | None = None
    lineage: dict | None = None


_structure_keys: dict[str, StructureKeys] = {}  # model name -> its config's prtk keys
_open_clip_copies: Path | None = None  # folder of the configs without prtk keys, as open_clip reads them


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


def shipped_model_names() -> set[str]:
    """The architectures that ship with open_clip or prtk (not the config files registered in this process)."""
    open_clip_configs = Path(import_open_clip().__file__).parent / "model_configs"
    return {path.stem for path in open_clip_configs.glob("*.json")} | set(builtin_model_names())


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
    problem = config_problem(config) or heads_problem(config)
    if problem:
        raise PrtkInputError(f"model config {path}: {problem}")
    plain, heads, lineage = split_config(config)
    _structure_keys[path.stem] = StructureKeys(heads, lineage)
    _register_config_path(path if plain == config else _open_clip_copy(path, plain))
    return path.stem


def _open_clip_copy(path: Path, plain: dict) -> Path:
    """The copy of config ``path`` without prtk's keys that open_clip reads: one file per model name in one
    folder per process, rewritten (and registered again) only when its content changes."""
    global _open_clip_copies
    if _open_clip_copies is None:
        _open_clip_copies = Path(tempfile.mkdtemp(prefix="prtk-configs-"))
    copy, text = _open_clip_copies / path.name, json.dumps(plain)
    if not copy.exists() or copy.read_text() != text:
        copy.write_text(text)
        _registered_config_dirs.discard(str(copy))
    return copy


def structure_keys(name: str) -> StructureKeys:
    """The prtk keys of the config registered for model ``name`` (none for open_clip's and built-in models)."""
    return _structure_keys.get(name, StructureKeys())


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
