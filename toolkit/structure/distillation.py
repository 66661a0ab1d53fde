"""Knowledge distillation of a structurally pruned image tower from the unpruned one, on the user's images.

Loss per image: ``1 - cos(student, teacher)`` on the embeddings, plus, with a zero-shot classifier, the KL
divergence from the teacher's zero-shot class distribution to the student's (logits = logit scale x cosine to
each class). Only the image tower trains; the teacher's embeddings are computed once. A held-out share of the
images picks the best epoch (lowest loss), whose weights are kept. The state is saved after every epoch
(``torch.load(weights_only=True)``-readable), so a killed run continues from its last finished epoch; epochs
shuffle with ``seed + epoch``, so a resumed run takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk.core.files import load_torch_state, write_torch_atomic
from prtk.models.zeroshot import zero_shot_logits


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 3
    images: int = 10000  # at most this many of the folder's images (a seeded sample)
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    held_out: float = 0.1  # share of the images that picks the best epoch
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DistillTargets:
    """Student inputs ``[N,3,H,W]`` (float16, preprocessed), the teacher's embeddings ``[N,E]``, the zero-shot
    classifier ``[C,E]`` (or None) and its logit scale."""

    images: torch.Tensor
    teacher: torch.Tensor
    classifier: torch.Tensor | None
    logit_scale: float


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: DistillTargets) -> torch.Tensor:
    """Mean per-image loss: embedding cosine distance (+ zero-shot-logit KL with a classifier)."""
    loss = 1 - F.cosine_similarity(student, teacher, dim=-1)
    if targets.classifier is not None:
        student_logits = targets.logit_scale * zero_shot_logits(student, targets.classifier)
        teacher_logits = targets.logit_scale * zero_shot_logits(teacher, targets.classifier)
        loss = loss + F.kl_div(student_logits.log_softmax(-1), teacher_logits.log_softmax(-1), log_target=True,
                               reduction="none").sum(-1)
    return loss.mean()


def distill(visual: nn.Module, targets: DistillTargets, config: DistillConfig, state_path: Path,
            progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train ``visual`` (the student image tower) towards ``targets``; leaves the best epoch's weights in it and
    returns the history (per epoch: train loss, held-out loss, held-out agreement with the teacher's class)."""
    count = len(targets.images)
    held = max(1, int(round(config.held_out * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(config.seed))
    held_out, train = order[:held], order[held:]
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    optimizer = torch.optim.AdamW([p for p in visual.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    total = steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    start, history, best = 0, [], None
    if state_path.exists():
        saved = load_torch_state(state_path)
        visual.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        start, history, best = saved["epoch"], saved["history"], saved["best"]
    for epoch in range(start, config.epochs):
        visual.train()
        shuffled = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed + epoch + 1))]
        running = 0.0
        for step in range(steps_per_epoch):
            rows = shuffled[step * config.batch_size:(step + 1) * config.batch_size]
            loss = distillation_loss(visual(targets.images[rows].float()), targets.teacher[rows],
                                     targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach()) * len(rows)
            if progress is not None:
                progress(epoch * steps_per_epoch + step + 1, total)
        record = {"epoch": epoch + 1, "train_loss": running / len(train)} | held_out_scores(visual, targets, held_out,
                                                                                            config.batch_size)
        history.append(record)
        if best is None or record["held_out_loss"] < best["record"]["held_out_loss"]:
            best = {"record": record, "student": copy.deepcopy(visual.state_dict())}
        write_torch_atomic(state_path, {"epoch": epoch + 1, "student": visual.state_dict(),
                                        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                        "history": history, "best": best})
    visual.eval()
    if best is not None:
        visual.load_state_dict(best["student"])
    return history


@torch.no_grad()
def held_out_scores(visual: nn.Module, targets: DistillTargets, rows: torch.Tensor, batch_size: int) -> dict:
    """Held-out loss and the share of images whose zero-shot class matches the teacher's (None: no classifier)."""
    visual.eval()
    loss, agree = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        student = visual(targets.images[batch].float())
        teacher = targets.teacher[batch]
        loss += float(distillation_loss(student, teacher, targets)) * len(batch)
        if targets.classifier is not None:
            agree += int((zero_shot_logits(student, targets.classifier).argmax(1)
                          == zero_shot_logits(teacher, targets.classifier).argmax(1)).sum())
    return {"held_out_loss": loss / len(rows),
            "held_out_agreement": 100.0 * agree / len(rows) if targets.classifier is not None else None}
