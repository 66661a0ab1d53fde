"""Structured pruning of the image tower (MoPE-CLIP): rank attention heads, MLP channel groups and blocks by the
accuracy lost without each (the module-wise pruning error), cut the least important to a target, write a
smaller open_clip-style model and distil it from the unpruned tower.

It reads models, data and the cost model, and writes a model that every later stage loads like any other
(``--model-config``, ``--checkpoint``).
"""

from prtk.structure.job import StructureConfig, StructureResult, plan_shape, prune_structure
from prtk.structure.selection import SELECTIONS, StructureShape

__all__ = ["SELECTIONS", "StructureConfig", "StructureResult", "StructureShape", "plan_shape", "prune_structure"]
