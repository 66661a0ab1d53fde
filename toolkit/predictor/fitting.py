"""A small resumable training loop shared by the predictor and the learnable tokens.

Epochs over ``count`` examples in seeded random batches; AdamW with a cosine learning rate; after each
epoch (and before the first) a validation score (higher = better), the best parameters kept, and a
state file written so that a killed run continues at the next epoch. Under torchrun the module runs
as DistributedDataParallel and each process takes its share of every batch; rank 0 writes the state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from prtk.core.files import load_torch_state, write_torch_atomic


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int


@dataclass
class FitResult:
    best: dict[str, torch.Tensor]  # trainable parameters of the best epoch
    best_metrics: dict
    history: list[dict]


def _trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def fit(module: nn.Module, batch_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        validate: Callable[[], tuple[float, dict]], count: int, config: FitConfig, state_path: Path,
        tick: Callable[[], None] = lambda: None, world: tuple[int, int] = (0, 1)) -> FitResult:
    """Train ``module``'s trainable parameters; ``batch_loss(model, indices)`` is the loss of examples
    ``indices`` (``model`` is ``module``, or its DDP wrapper); ``validate()`` -> (score, metrics).
    ``world`` is (rank, processes). Returns the best epoch's parameters, its metrics and the history."""
    rank, processes = world
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(count / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    model = module
    if processes > 1:
        model = nn.parallel.DistributedDataParallel(module)
    start_epoch, best_score, best, best_metrics, history = 0, -math.inf, _trainable(module), {}, []
    if state_path.exists():
        state = load_torch_state(state_path)
        module.load_state_dict(state["params"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, best_score, best = state["epoch"], state["best_score"], state["best"]
        history = json.loads(state["history"])
        best_metrics = json.loads(state["best_metrics"])
        for _ in range(start_epoch * steps_per_epoch):
            tick()
    else:  # the starting point competes too, so training never ships something worse than it
        module.eval()
        with torch.no_grad():
            best_score, best_metrics = validate()
        history.append({"epoch": 0} | best_metrics)
    for epoch in range(start_epoch, config.epochs):
        module.train()
        order = torch.randperm(count, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        losses = []
        for start in range(0, count, config.batch_size):
            indices = order[start:start + config.batch_size][rank::processes]
            loss = batch_loss(model, indices)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            tick()
        module.eval()
        with torch.no_grad():
            score, metrics = validate()
        history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses)} | metrics)
        if score > best_score:
            best_score, best, best_metrics = score, _trainable(module), metrics
        if rank == 0:
            write_torch_atomic(state_path, {"params": _trainable(module), "optimizer": optimizer.state_dict(),
                                     "schedule": schedule.state_dict(), "epoch": epoch + 1,
                                     "best_score": best_score, "best": best, "history": json.dumps(history),
                                     "best_metrics": json.dumps(best_metrics)})
    return FitResult(best=best, best_metrics=best_metrics, history=history)
