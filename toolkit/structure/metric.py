"""The module-wise pruning error (MoPE, Lin et al., CVPR 2024): what the tower loses on calibration images when one
module is removed.

For each module, over the calibration images: the drop in zero-shot top-1 (points; with labels) and the drop in
embedding similarity to the unpruned tower (``1 - mean cosine``; always). Modules rank by accuracy drop, ties
(frequent on a few hundred images) broken by the similarity drop; without labels by similarity alone. The tokens
entering each block are computed once per batch, so removing a module of block ``b`` reruns blocks ``b..L-1``
only. Totals are saved after every batch: a killed run continues from its last finished batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk.core.errors import PrtkInputError
from prtk.core.files import write_json_atomic
from prtk.models.vit import embed_tokens, project_tokens, run_blocks
from prtk.models.zeroshot import topk_correct, zero_shot_logits
from prtk.structure.modules import TowerModule, removed


@dataclass(frozen=True)
class ModuleError:
    """A module's pruning error on the calibration images."""

    module: TowerModule
    accuracy_drop: float | None  # top-1 points lost (None without labels)
    similarity_drop: float  # 1 - mean cosine between the embeddings without and with the module

    @property
    def rank_key(self) -> tuple[float, float]:
        """Smaller = less important = removed first."""
        return (self.accuracy_drop or 0.0, self.similarity_drop)

    def as_dict(self) -> dict:
        return {"module": self.module.key, "accuracy_drop": self.accuracy_drop,
                "similarity_drop": self.similarity_drop}


@dataclass(frozen=True)
class Calibration:
    """Calibration images ``[N,3,H,W]`` (preprocessed), their labels ``[N]`` or None, and the zero-shot
    classifier ``[C,E]`` (None without labels)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classifier: torch.Tensor | None


@torch.inference_mode()
def module_errors(visual: nn.Module, calibration: Calibration, modules: list[TowerModule], mlp_group: int,
                  batch_size: int, state_path: Path, run_key: dict,
                  progress: Callable[[int, int], None] | None = None) -> list[ModuleError]:
    """The MoPE of every module in ``modules`` of ``visual`` (eval mode); resumable through ``state_path``."""
    images, count = calibration.images, len(calibration.images)
    totals = _resume(state_path, run_key, modules)
    starts = list(range(0, count, batch_size))
    for batch_index, start in enumerate(starts):
        if batch_index < totals["batches"]:
            continue
        batch = images[start:start + batch_size]
        labels = None if calibration.labels is None else calibration.labels[start:start + batch_size]
        inputs = [embed_tokens(visual, batch)]  # inputs[b]: tokens entering block b, [B, N+1, D]
        for block in range(len(visual.transformer.resblocks)):
            inputs.append(run_blocks(visual, inputs[-1], block, block + 1))
        reference = project_tokens(visual, inputs[-1])  # [B, E]
        totals["base_correct"] += _correct(reference, labels, calibration.classifier)
        for module in modules:
            with removed(visual, [module], mlp_group):
                tokens = run_blocks(visual, inputs[module.block], module.block, len(inputs) - 1)
                embedding = project_tokens(visual, tokens)
            totals["correct"][module.key] += _correct(embedding, labels, calibration.classifier)
            totals["similarity"][module.key] += float(F.cosine_similarity(embedding, reference, dim=-1).sum())
        totals["batches"] = batch_index + 1
        write_json_atomic(state_path, totals)
        if progress is not None:
            progress(min(start + batch_size, count), count)
    labelled = calibration.labels is not None
    return [ModuleError(module,
                        100.0 * (totals["base_correct"] - totals["correct"][module.key]) / count if labelled else None,
                        1.0 - totals["similarity"][module.key] / count)
            for module in modules]


def _correct(embedding: torch.Tensor, labels: torch.Tensor | None, classifier: torch.Tensor | None) -> int:
    if labels is None:
        return 0
    return topk_correct(zero_shot_logits(embedding, classifier), labels, ks=(1,))[1]


def _resume(state_path: Path, run_key: dict, modules: list[TowerModule]) -> dict:
    """The totals saved by an interrupted run of the same key, or fresh ones."""
    fresh = {"key": run_key, "batches": 0, "base_correct": 0, "correct": {m.key: 0 for m in modules},
             "similarity": {m.key: 0.0 for m in modules}}
    if not state_path.exists():
        return fresh
    try:
        saved = json.loads(state_path.read_text())
    except (OSError, ValueError):
        raise PrtkInputError(f"saved part of an interrupted run is unreadable: {state_path}; "
                             "pass --force to discard the partial run and start over") from None
    if saved.get("key") != json.loads(json.dumps(run_key)) or set(saved.get("correct", {})) != set(fresh["correct"]):
        return fresh
    return saved
