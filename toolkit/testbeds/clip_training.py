"""Contrastive training of both CLIP towers on captions made from class names and prompt templates.

Each step draws one template, encodes the ``C`` class captions with the text tower and a batch of
augmented images with the image tower, and applies CLIP's symmetric loss over the ``[B, C]``
similarities: image -> its class caption, and caption -> the images of its class (a uniform target
over them, since a class has many images in a batch). Deterministic for a seed: the shuffle, the
augmentation and the template choice of epoch ``e`` come from a generator seeded with ``(seed, e)``.
A state file written after each epoch makes an interrupted run resume where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk.core.files import load_torch_state, write_torch_atomic
from prtk.testbeds.augment import random_crop_flip
from prtk.core.errors import PrtkInputError
from prtk.data.tensors import LabelledImages, Normalizer
from prtk.models import LoadedClip
from prtk.models.zeroshot import DEFAULT_TEMPLATES, class_embeddings, topk_correct, zero_shot_logits

TRAIN_TEMPLATES = DEFAULT_TEMPLATES + (
    "a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a small {} in the picture.",
    "a photo of one {}.",
    "there is a {} in this image.",
)
_NO_DECAY = ("token_embedding", "positional_embedding", "class_embedding", "logit_scale")


@dataclass(frozen=True)
class ClipTrainConfig:
    """Optimisation and augmentation settings; every field is recorded in the test-bed card."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3  # peak of a linear-warmup, cosine-decay schedule (AdamW)
    warmup: float = 0.1  # fraction of all steps spent warming up
    weight_decay: float = 0.05
    padding: int = 4  # random-crop padding, pixels
    flip: bool = True
    bf16: bool = False  # bfloat16 autocast, for GPUs (on the 2-core CPU here it was 25% slower than fp32)
    seed: int = 0
    templates: tuple[str, ...] = TRAIN_TEMPLATES

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise PrtkInputError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise PrtkInputError(f"learning rate must be positive, got {self.lr}")
        if self.padding < 0:
            raise PrtkInputError(f"padding must be at least 0, got {self.padding}")


def caption_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                             logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss of images ``[B, E]`` against class captions ``[C, E]``; labels ``[B]`` in [0, C)."""
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    image_loss = F.cross_entropy(logits, labels)
    members = F.one_hot(labels, text_features.shape[0]).T.float()  # [C, B]
    present = members.sum(dim=1) > 0
    targets = members[present] / members[present].sum(dim=1, keepdim=True)
    text_loss = -(targets * logits.T[present].log_softmax(dim=1)).sum(dim=1).mean()
    return (image_loss + text_loss) / 2


def learning_rate(step: int, total_steps: int, config: ClipTrainConfig) -> float:
    warmup_steps = max(1, round(config.warmup * total_steps))
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: nn.Module, config: ClipTrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        skip = parameter.ndim < 2 or any(part in name for part in _NO_DECAY)
        (no_decay if skip else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


@torch.inference_mode()
def zero_shot_top1(clip: LoadedClip, data: LabelledImages, batch_size: int = 500) -> float:
    """Zero-shot top-1 (%) of the unpruned model on in-memory images, with the default prompt templates."""
    was_training = clip.model.training
    clip.model.eval()
    device = next(clip.model.parameters()).device
    classifier = class_embeddings(clip.model, clip.tokenizer, data.classes)
    normalize, correct = Normalizer(clip), 0
    for start in range(0, len(data), batch_size):
        pixels = data.images[start:start + batch_size].to(device).float().div_(255)
        logits = zero_shot_logits(clip.model.encode_image(normalize(pixels)), classifier)
        correct += topk_correct(logits, data.labels[start:start + batch_size].to(device), ks=(1,))[1]
    clip.model.train(was_training)
    return 100.0 * correct / len(data)


def _run_key(clip: LoadedClip, train: LabelledImages, config: ClipTrainConfig) -> str:
    """What a saved state must match to be resumed: model, data and settings."""
    return json.dumps({"model": clip.name, "data": train.sha256, "config": asdict(config)}, sort_keys=True)


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list,
                key: str) -> None:
    write_torch_atomic(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                              "history": json.dumps(history), "key": key})


def train_clip(clip: LoadedClip, train: LabelledImages, held_out: LabelledImages, config: ClipTrainConfig,
               state_path: str | Path, progress: Callable[[int, int], None] | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``clip.model`` in place; returns per-epoch records (loss, held-out top-1, learning rate, seconds).

    ``state_path`` holds the state after each finished epoch (tensors and plain values only, read back
    with ``weights_only=True``); an existing state made with the same model, data and settings is resumed.
    ``progress(step, total_steps)`` follows the steps; ``on_epoch(record)`` is called after each epoch.
    """
    config.check()
    if len(train) < 1:
        raise PrtkInputError("training data holds no images")
    if len(train.classes) != len(held_out.classes):
        raise PrtkInputError(f"training data has {len(train.classes)} classes, held-out data "
                             f"{len(held_out.classes)}: they must match")
    state_path = Path(state_path)
    model, device = clip.model, next(clip.model.parameters()).device
    optimizer, key = _optimizer(model, config), _run_key(clip, train, config)
    batch_size = min(config.batch_size, len(train))
    steps_per_epoch = len(train) // batch_size
    total_steps = steps_per_epoch * config.epochs
    history, first_epoch = [], 0
    if state_path.exists():
        state = load_torch_state(state_path, device)
        if state["key"] != key:
            raise PrtkInputError(f"training state {state_path} belongs to another run (other model, data or "
                                 "settings): remove it or pass --force to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, history = state["epoch"], json.loads(state["history"])
    tokens = torch.stack([clip.tokenizer([template.format(name) for name in train.classes])
                          for template in config.templates]).to(device)  # [T, C, context]
    normalize = Normalizer(clip)
    model.train()
    for epoch in range(first_epoch, config.epochs):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(train), generator=generator)
        templates = torch.randint(len(config.templates), (steps_per_epoch,), generator=generator)
        loss_sum, start = 0.0, time.perf_counter()
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(global_step, total_steps, config)
            batch = order[step * batch_size:(step + 1) * batch_size]
            pixels = random_crop_flip(train.images[batch], config.padding, config.flip, generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                image_features = model.encode_image(normalize(pixels.to(device)))
                text_features = model.encode_text(tokens[templates[step]])
            loss = caption_contrastive_loss(image_features.float(), text_features.float(),
                                            train.labels[batch].to(device), model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            loss_sum += loss.item()
            if progress is not None:
                progress(global_step + 1, total_steps)
        record = {"epoch": epoch + 1, "loss": loss_sum / steps_per_epoch,
                  "held_out_top1": zero_shot_top1(clip, held_out), "lr_end": optimizer.param_groups[0]["lr"]}
        record["seconds"] = round(time.perf_counter() - start, 1)
        history.append(record)
        _save_state(state_path, model, optimizer, epoch + 1, history, key)
        if on_epoch is not None:
            on_epoch(record)
    model.eval()
    return history
