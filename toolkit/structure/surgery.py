"""The smaller model itself: the parent's state dict with the kept heads, MLP channels and blocks sliced out
(blocks renumbered), and its open_clip-style config (``prtk.models.structure`` explains the ``vision_heads``
key). The text tower and everything outside the image tower's blocks are the parent's, unchanged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from pathlib import Path

import torch

from prtk.core.files import write_bytes_atomic, write_json_atomic
from prtk.models import LoadedClip, import_open_clip, load_clip
from prtk.models.configs import register_builtin_configs, structure_keys
from prtk.models.structure import HEADS_KEY, LINEAGE_KEY
from prtk.structure.selection import StructureShape

BLOCKS = "visual.transformer.resblocks."


@dataclass(frozen=True)
class KeptModules:
    """What survives, in the parent's numbering: ``blocks`` kept (ascending), and per parent block the kept
    ``heads`` and MLP channel ``groups`` (of ``mlp_group`` channels)."""

    blocks: tuple[int, ...]
    heads: dict[int, tuple[int, ...]]
    groups: dict[int, tuple[int, ...]]
    mlp_group: int

    def removed(self, parent_layers: int, parent_heads: int, parent_groups: int) -> dict:
        """The lineage's ``removed``: parent blocks, and per kept block its removed heads and MLP groups."""
        return {"blocks": [b for b in range(parent_layers) if b not in self.blocks],
                "heads": {str(b): [h for h in range(parent_heads) if h not in self.heads[b]] for b in self.blocks},
                "mlp_groups": {str(b): [g for g in range(parent_groups) if g not in self.groups[b]]
                               for b in self.blocks},
                "mlp_group": self.mlp_group}


def pruned_state(clip: LoadedClip, kept: KeptModules) -> dict[str, torch.Tensor]:
    """The parent's state dict cut down to ``kept`` (contiguous copies, safetensors-ready)."""
    state = clip.model.state_dict()
    spec = clip.spec
    out = {key: value for key, value in state.items() if not key.startswith(BLOCKS)}
    for new_index, block in enumerate(kept.blocks):
        head_rows = torch.tensor([head * spec.head_width + offset for head in kept.heads[block]
                                  for offset in range(spec.head_width)])
        in_rows = torch.cat([part * spec.attention_width + head_rows for part in range(3)])
        channels = torch.tensor([group * kept.mlp_group + offset for group in kept.groups[block]
                                 for offset in range(kept.mlp_group)])
        cut = {"attn.in_proj_weight": (0, in_rows), "attn.in_proj_bias": (0, in_rows),
               "attn.out_proj.weight": (1, head_rows), "mlp.c_fc.weight": (0, channels),
               "mlp.c_fc.bias": (0, channels), "mlp.c_proj.weight": (1, channels)}
        prefix = f"{BLOCKS}{block}."
        for key, value in state.items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                if name in cut:
                    dim, index = cut[name]
                    value = value.index_select(dim, index)
                out[f"{BLOCKS}{new_index}.{name}"] = value.detach().clone().contiguous()
    return {key: value.contiguous() for key, value in out.items()}


def parent_config(clip: LoadedClip) -> dict:
    """The open_clip config ``clip`` was built from, with its prtk keys (and ``quick_gelu`` where its blocks use
    QuickGELU, which hub weights may switch on outside the config)."""
    register_builtin_configs()
    open_clip = import_open_clip()
    config = copy.deepcopy(open_clip.get_model_config(clip.name))
    keys = structure_keys(clip.name)
    if isinstance(getattr(clip.visual.transformer.resblocks[0].mlp, "gelu", None), open_clip.transformer.QuickGELU):
        config["quick_gelu"] = True
    if keys.vision_heads is not None:
        config[HEADS_KEY] = keys.vision_heads
    if keys.lineage is not None:
        config[LINEAGE_KEY] = keys.lineage
    return config


def pruned_config(clip: LoadedClip, heads: int, mlp_width: int, depth: int, lineage: dict) -> dict:
    """The smaller model's config: the parent's, with ``layers``, ``mlp_ratio`` (chosen so that open_clip's
    ``int(width * mlp_ratio)`` is ``mlp_width``), ``head_width`` spelled out, ``vision_heads`` where heads were
    removed, and ``prtk_lineage``."""
    config = parent_config(clip)
    spec = clip.spec
    vision = config["vision_cfg"]
    ratio = mlp_width / spec.width
    while int(spec.width * ratio) < mlp_width:
        ratio = math.nextafter(ratio, math.inf)
    vision.update(layers=depth, mlp_ratio=ratio, head_width=spec.head_width)
    config.pop(HEADS_KEY, None)
    if heads * spec.head_width != spec.width:
        config[HEADS_KEY] = heads
    config[LINEAGE_KEY] = lineage
    return config


def write_model(parent: LoadedClip, kept: KeptModules, shape: StructureShape, folder: Path, name: str,
                lineage: dict) -> LoadedClip:
    """Write the pruned model's config ``folder/NAME.json`` and weights ``folder/NAME.safetensors`` and load them
    back as a model."""
    from safetensors.torch import save

    write_json_atomic(folder / f"{name}.json", pruned_config(parent, shape.heads, shape.mlp_width, shape.depth,
                                                            lineage))
    write_bytes_atomic(folder / f"{name}.safetensors", save(pruned_state(parent, kept)))
    return load_clip(name, config=folder / f"{name}.json", checkpoint=folder / f"{name}.safetensors")
