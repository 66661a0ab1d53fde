"""``prtk train``: a ranker pack from a ranking file — the predictor, then learnable tokens per keep ratio.

1. The ranked images are read (each checked against its content hash in the ranking file) and the
   tokens entering block l are computed once (``[I, N+1, D]``); a seeded split holds out
   ``val_fraction`` of them.
2. The predictor learns the golden orders from those tokens (``keep_set_kl`` or ``list_mle``); after
   each epoch its top-k overlap with the golden keep sets and Kendall's tau are measured on the
   held-out images, and the epoch with the best mean overlap is kept.
3. Per keep ratio, the predictor (frozen) picks the kept tokens and ``P`` learnable tokens are trained
   with cross-entropy over the frozen zero-shot head; the epoch with the best held-out top-1 is kept.

Finished epochs are saved in ``.<out>.partial/``, so a killed run restarted with the same command
continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from prtk import __version__
from prtk.core.files import check_writable, load_torch_state, output_lock, prepare_run_folder
from prtk.data.tensors import Normalizer
from prtk.data.folder import class_display_name
from prtk.core.errors import PrtkInputError
from prtk.predictor.fitting import FitConfig, FitResult, fit
from prtk.data.tensors import load_listed_images
from prtk.models import LoadedClip
from prtk.predictor.pack import RankerPack, keep_key, save_pack
from prtk.predictor.losses import LOSSES, ranking_loss
from prtk.predictor.metrics import kendall_tau, top_k_overlap
from prtk.predictor.model import PredictorConfig, TokenRankPredictor, predictor_cost
from prtk.pruning.tower import PrunedVisionTower, check_keeps
from prtk.ranking.file import RankingFile, load_ranking, rankings_for
from prtk.models.zeroshot import class_embeddings, zero_shot_logits


@dataclass(frozen=True)
class TrainConfig:
    """What ``prtk train`` trains and how."""

    keeps: tuple[float, ...] = (0.5, 0.6, 0.7)
    num_tokens: int = 8  # P learnable tokens per keep ratio (0: none)
    loss: str = "kl"  # kl (reference) or listmle
    predictor_epochs: int = 40
    token_epochs: int = 15
    batch_size: int = 128
    predictor_lr: float = 3e-3
    token_lr: float = 3e-3
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        check_keeps(self.keeps)
        if self.loss not in LOSSES:
            raise PrtkInputError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("num_tokens", "predictor_epochs", "token_epochs"):
            if getattr(self, name) < 0:
                raise PrtkInputError(f"{name.replace('_', ' ')} must be at least 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise PrtkInputError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise PrtkInputError(f"validation fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class RankedImages:
    """The ranked images as training tensors: ``tokens`` entering block l ``[I, N+1, D]``, golden ``orders``
    ``[I, N]``, ``labels`` ``[I]``."""

    tokens: torch.Tensor
    orders: torch.Tensor
    labels: torch.Tensor

    def subset(self, rows: torch.Tensor) -> RankedImages:
        return RankedImages(self.tokens[rows], self.orders[rows], self.labels[rows])


def training_data_sha256(ranking: RankingFile) -> str:
    """Hash of the training images: their relative paths and content hashes, in ranking order."""
    listing = [[image["path"], image["sha256"]] for image in ranking.images]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


@torch.no_grad()
def ranked_images(clip: LoadedClip, ranking: RankingFile, data_root: str | Path, tower: PrunedVisionTower,
                  device: torch.device, batch_size: int = 256) -> RankedImages:
    """Read the ranking's images from ``data_root`` (refusing changed ones) and compute their block-l tokens."""
    paths = [image["path"] for image in ranking.images]
    pixels, hashes = load_listed_images(data_root, paths, clip.spec.image_size)
    orders = rankings_for(ranking, clip, paths, hashes).long()
    normalize = Normalizer(clip)
    tokens = torch.cat([tower.prefix(normalize(pixels[start:start + batch_size].to(device).float() / 255)).tokens
                        for start in range(0, len(pixels), batch_size)])
    labels = torch.tensor([image["label"] for image in ranking.images], device=device)
    return RankedImages(tokens=tokens, orders=orders.to(device), labels=labels)


def holdout_split(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train rows, held-out rows); at least one of each."""
    if count < 2:
        raise PrtkInputError(f"training needs at least 2 ranked images, got {count}")
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held_out = min(count - 1, max(1, round(fraction * count)))
    return permutation[held_out:].sort().values, permutation[:held_out].sort().values


def predictor_metrics(predictor: TokenRankPredictor, data: RankedImages, keeps: tuple[float, ...]) -> dict:
    """Mean top-k overlap with the golden keep set per keep ratio, and mean Kendall's tau."""
    scores = predictor(data.tokens)
    return {"top_k_overlap": {f"{keep:g}": top_k_overlap(scores, data.orders, keep).mean().item() for keep in keeps},
            "kendall_tau": kendall_tau(scores, data.orders).mean().item()}


class TokenHead(nn.Module):
    """blocks[l:] + head with the learnable tokens: selected tokens ``[B, 1+k, D]`` -> zero-shot logits ``[B, C]``."""

    def __init__(self, tower: PrunedVisionTower, classifier: torch.Tensor, logit_scale: float):
        super().__init__()
        self.tower, self.logit_scale = tower, logit_scale
        self.register_buffer("classifier", classifier)

    def forward(self, selected: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * zero_shot_logits(self.tower.suffix(selected), self.classifier)


def _top1(head: TokenHead, selected: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    correct = sum(int((head(selected[s:s + batch_size]).argmax(dim=1) == labels[s:s + batch_size]).sum())
                  for s in range(0, len(labels), batch_size))
    return 100.0 * correct / len(labels)


def train_predictor(clip: LoadedClip, predictor_config: PredictorConfig, train: RankedImages, val: RankedImages,
                    config: TrainConfig, state_path: Path, tick: Callable[[], None],
                    world: tuple[int, int]) -> tuple[FitResult, TokenRankPredictor]:
    """The predictor of the epoch with the best mean held-out top-k overlap (frozen), and its training record."""
    torch.manual_seed(config.seed)
    predictor = TokenRankPredictor(clip.spec, predictor_config).to(train.tokens.device)

    def predictor_loss(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        return ranking_loss(config.loss, model(train.tokens[rows]), train.orders[rows], config.keeps)

    def predictor_validation() -> tuple[float, dict]:
        metrics = predictor_metrics(predictor, val, config.keeps)
        return sum(metrics["top_k_overlap"].values()) / len(config.keeps), metrics

    fitted = fit(predictor, predictor_loss, predictor_validation, len(train.labels),
                 FitConfig(config.predictor_epochs, config.batch_size, config.predictor_lr, 0.01, config.seed),
                 state_path, tick, world)
    predictor.load_state_dict(fitted.best)
    return fitted, predictor.eval().requires_grad_(False)


@dataclass
class TokenStage:
    """What the learnable tokens of one keep ratio are trained against (all frozen)."""

    clip: LoadedClip
    predictor: TokenRankPredictor
    layer: int
    keep: float
    classifier: torch.Tensor  # [C, E], a normal (not inference) tensor
    logit_scale: float

    def head(self, num_tokens: int) -> TokenHead:
        tower = PrunedVisionTower(self.clip.visual, self.keep, self.layer, num_learnable_tokens=num_tokens)
        return TokenHead(tower, self.classifier, self.logit_scale)

    @torch.no_grad()
    def selected(self, part: RankedImages) -> torch.Tensor:
        """CLS + the predictor's top-k patches of every image ``[I, 1+k, D]``."""
        tower = PrunedVisionTower(self.clip.visual, self.keep, self.layer)
        kept = self.predictor(part.tokens).topk(tower.keep_count, dim=1).indices.sort(dim=1).values
        return tower.select(part.tokens, kept)


def train_tokens(stage: TokenStage, train: RankedImages, val: RankedImages, config: TrainConfig, state_path: Path,
                 seed: int, tick: Callable[[], None], world: tuple[int, int]) -> tuple[torch.Tensor | None, dict]:
    """The best learnable tokens ``[P, D]`` for one keep ratio (None when P = 0) and their held-out metrics."""
    train_selected, val_selected = stage.selected(train), stage.selected(val)
    with torch.no_grad():
        no_tokens = _top1(stage.head(0), val_selected, val.labels)
    record = {"keep_count": train_selected.shape[1] - 1, "val_top1_no_tokens": no_tokens}
    if not config.num_tokens:
        return None, record
    head = stage.head(config.num_tokens).to(train_selected.device)
    learnable = head.tower.learnable_tokens
    learnable.data.copy_(0.02 * torch.randn(learnable.shape, generator=torch.Generator().manual_seed(seed)))

    def token_loss(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(train_selected[rows]), train.labels[rows])

    def token_validation() -> tuple[float, dict]:
        top1 = _top1(head, val_selected, val.labels)
        return top1, {"val_top1": top1}

    fitted = fit(head, token_loss, token_validation, len(train.labels),
                 FitConfig(config.token_epochs, config.batch_size, config.token_lr, 0.0, config.seed),
                 state_path, tick, world)
    return fitted.best["tower.learnable_tokens"].cpu(), record | fitted.best_metrics | {"history": fitted.history}


def train_pack(clip: LoadedClip, ranking_path: str | Path, data_root: str | Path, out: str | Path,
               config: TrainConfig, *, force: bool = False, progress: Callable[[int, int], None] | None = None,
               world: tuple[int, int] = (0, 1)) -> RankerPack:
    """Train the predictor and the tokens and write the pack ``out``; returns it. See the module docstring."""
    from prtk.core.devices import resolve_device

    config.check()
    rank = world[0]
    out = Path(out)
    if rank == 0:
        check_writable(out, force)
    with output_lock(out) if world[1] == 1 else nullcontext():
        device = resolve_device(config.device)
        ranking = load_ranking(ranking_path)
        clip.model.to(device).eval().requires_grad_(False)
        tower = PrunedVisionTower(clip.visual, 1.0, ranking.meta["layer"])
        data = ranked_images(clip, ranking, data_root, tower, device)
        train_rows, val_rows = holdout_split(len(data.labels), config.val_fraction, config.seed)
        train, val = data.subset(train_rows), data.subset(val_rows)
        predictor_config = PredictorConfig.for_spec(clip.spec)
        partial = out.with_name(f".{out.name}.partial")
        run_key = {"model": clip.name, "weights_sha256": clip.weights_sha256, "ranking": ranking.identity(),
                   "config": asdict(config), "predictor": predictor_config.as_dict()}
        prepare_run_folder(partial, run_key, force and rank == 0)
        for state in sorted(partial.glob("*.pt")):  # a corrupt saved epoch is reported before any training
            load_torch_state(state)

        predictor_steps = config.predictor_epochs * -(-len(train_rows) // config.batch_size)
        token_steps = len(config.keeps) * config.token_epochs * -(-len(train_rows) // config.batch_size)
        total, done = predictor_steps + (token_steps if config.num_tokens else 0), 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        if progress is not None:
            progress(0, total)
        fitted, predictor = train_predictor(clip, predictor_config, train, val, config, partial / "predictor.pt", tick,
                                            world)
        metrics = {"predictor": fitted.best_metrics, "predictor_history": fitted.history, "tokens": {}}

        class_names = [class_display_name(c) for c in ranking.meta["classes"]]
        classifier = class_embeddings(clip.model, clip.tokenizer, class_names).clone()  # a normal tensor, for autograd
        logit_scale = clip.logit_scale
        tokens = {}
        with torch.no_grad():
            unpruned_head = TokenHead(PrunedVisionTower(clip.visual, 1.0, tower.layer), classifier, logit_scale)
            metrics["unpruned_val_top1"] = _top1(unpruned_head, val.tokens, val.labels)
        for index, keep in enumerate(config.keeps):
            tokens_for_keep, metrics["tokens"][f"{keep:g}"] = train_tokens(
                TokenStage(clip, predictor, tower.layer, keep, classifier, logit_scale), train, val, config,
                partial / f"{keep_key(keep)}.pt", config.seed * 1_000 + index, tick, world)
            if tokens_for_keep is not None:
                tokens[keep] = tokens_for_keep

        pack = RankerPack(
            predictor={name: value.cpu() for name, value in predictor.state_dict().items()},
            tokens=tokens,
            meta={
                "prtk_version": __version__, "model": clip.name, "weights_sha256": clip.weights_sha256,
                "weights": clip.weights,
                "layer": tower.layer, "num_patches": clip.spec.num_patches, "width": clip.spec.width,
                "keep_ratios": list(config.keeps), "num_tokens": config.num_tokens,
                "predictor": predictor_config.as_dict(),
                "predictor_cost": predictor_cost(predictor, clip.visual, clip.spec),
                "ranking": {key: ranking.meta[key] for key in ("score", "step", "min_keep", "data_root")},
                "training_data": {"root": str(data_root), "images": len(data.labels), "held_out": len(val_rows),
                                  "sha256": training_data_sha256(ranking)},
                "config": asdict(config),
                "metrics": metrics,
            })
        if rank == 0:
            save_pack(out, pack)
            shutil.rmtree(partial)
        return pack
