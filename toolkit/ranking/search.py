"""The golden ranking: greedy backward elimination of patch tokens at block ``l`` (docs/design.md, the method, step 1).

Per image, starting from all ``N`` patches, each round scores every candidate ``c`` by running
blocks[l:] and the head on CLS + (kept minus c), and drops the ``step`` candidates whose removal
scores highest (the image does best without them). The ranking lists the patches most important
first: the ones still kept when the search stops (ordered by their last-round scores, lowest first),
then the removed ones in reverse order of removal.

``GoldenRanker`` is the fast search: blocks below ``l`` run once per image, and all candidates of a
round, for several images at once, go through blocks[l:] in batches of at most ``max_batch``
sequences, with the candidate-independent work of those blocks done once (``CandidateSuffix``).
``naive_ranking`` is the reference (one image, one candidate at a time, the whole tower per
candidate) used by the tests and the speed benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prtk.ranking.candidate_suffix import CandidateSuffix
from prtk.core.errors import PrtkInputError
from prtk.pruning.tower import PrunedVisionTower, keep_count

SCORES = ("label", "confidence", "similarity")


@dataclass(frozen=True)
class RankingConfig:
    """What the search optimises and how far it goes."""

    layer: int | None = None  # None: L // 4
    score: str = "label"
    step: int = 1  # tokens removed per round (1: exact greedy)
    min_keep: float | None = None  # stop once keep_count(min_keep) patches are left; None: rank all
    max_batch: int = 1024  # sequences per pass through blocks[l:]

    def check(self) -> None:
        if self.score not in SCORES:
            raise PrtkInputError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.step < 1:
            raise PrtkInputError(f"step must be at least 1, got {self.step}")
        if self.max_batch < 1:
            raise PrtkInputError(f"max batch must be at least 1, got {self.max_batch}")
        if self.min_keep is not None and not 0 < self.min_keep <= 1:
            raise PrtkInputError(f"min keep must be in (0, 1], got {self.min_keep}")


class CandidateScore:
    """``f`` of docs/design.md: how good an image is with a candidate set of tokens, higher = better.

    ``label``: log-probability of the true class under the zero-shot head; ``confidence``: that of
    the class the unpruned model predicts (the log keeps the probability's order); ``similarity``:
    cosine to the unpruned embedding. Log-probabilities are computed as ``-softplus(logsumexp(z_j -
    z_y))`` over the other classes j, which does not round to 0 for a confident model, so candidates
    do not tie.
    """

    def __init__(self, kind: str, classifier: torch.Tensor, logit_scale: float):
        self.kind, self.classifier, self.logit_scale = kind, classifier, logit_scale  # classifier [C, E]

    @classmethod
    def for_classes(cls, kind: str, clip, class_names: list[str]) -> CandidateScore:
        """The score over a zero-shot head built from ``class_names`` with ``clip``'s text tower."""
        from prtk.models.zeroshot import class_embeddings

        classifier = class_embeddings(clip.model, clip.tokenizer, class_names)
        return cls(kind, classifier, clip.logit_scale)

    def _logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(embeddings, dim=-1) @ self.classifier.T.to(embeddings.dtype)

    def _log_prob(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """log p(class) per row of logits [M, C], classes [M]."""
        chosen = logits.gather(1, classes.unsqueeze(1))
        others = (logits - chosen).scatter(1, classes.unsqueeze(1), float("-inf"))
        return -F.softplus(others.logsumexp(dim=1))

    def targets(self, unpruned: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per image what candidates are scored against: a class index [B] or the unpruned embedding [B, E]."""
        if self.kind == "label":
            return labels
        if self.kind == "confidence":
            return self._logits(unpruned).argmax(dim=-1)
        return F.normalize(unpruned, dim=-1)

    def __call__(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scores [M] of candidate embeddings [M, E] against their images' targets (rows of ``targets``)."""
        if self.kind == "similarity":
            return (F.normalize(embeddings, dim=-1) * targets).sum(dim=-1)
        return self._log_prob(self._logits(embeddings), targets)


@dataclass
class ImageRanking:
    """Result for a batch: ``order`` [B, N] patch indices most important first; ``scores`` [B, N] the
    score of each patch's candidate in the last round it took part in; ``rounds`` [B, N] that round."""

    order: torch.Tensor
    scores: torch.Tensor
    rounds: torch.Tensor


class GoldenRanker:
    """Greedy backward elimination over batches of images; see the module docstring."""

    def __init__(self, tower: PrunedVisionTower, score: CandidateScore, config: RankingConfig):
        config.check()
        self.tower, self.score, self.config = tower, score, config
        self.candidates = CandidateSuffix(tower)
        patches = tower.spec.num_patches
        self.stop_at = 1 if config.min_keep is None else keep_count(config.min_keep, patches)

    def _embed_candidates(self, cache, kept: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        """Embeddings [M, E] of CLS + patches ``kept`` [M, m-1] of images ``owners`` [M], ``max_batch`` at a time."""
        size = self.config.max_batch
        return torch.cat([self.candidates.embed(cache, owners[start:start + size], kept[start:start + size])
                          for start in range(0, len(owners), size)])

    @torch.inference_mode()
    def rank(self, images: torch.Tensor, labels: torch.Tensor) -> ImageRanking:
        """Rank the patches of images [B, 3, H, W] with labels [B] (used by the ``label`` score only)."""
        tokens = self.tower.prefix(images).tokens  # [B, N+1, D]
        batch, patches = tokens.shape[0], tokens.shape[1] - 1
        unpruned = self.tower.suffix(tokens)
        cache = self.candidates.prepare(tokens)
        targets = self.score.targets(unpruned, labels)
        remaining = torch.arange(patches, device=tokens.device).expand(batch, -1).clone()  # [B, m]
        scores = torch.zeros(batch, patches, dtype=tokens.dtype, device=tokens.device)
        rounds = torch.zeros(batch, patches, dtype=torch.long, device=tokens.device)
        removed, round_index = [], 0
        while remaining.shape[1] > self.stop_at:
            m = remaining.shape[1]
            leave_one_out = _leave_one_out(m, tokens.device)  # [m, m-1] positions
            kept = remaining[:, leave_one_out].reshape(batch * m, m - 1)
            owners = torch.arange(batch, device=tokens.device).repeat_interleave(m)
            embeddings = self._embed_candidates(cache, kept, owners)
            round_scores = self.score(embeddings, targets[owners]).reshape(batch, m)
            scores.scatter_(1, remaining, round_scores)
            rounds.scatter_(1, remaining, round_index)
            drop = min(self.config.step, m - self.stop_at)
            # positions, highest score first; among equal scores the lowest position first
            dropped = round_scores.argsort(dim=1, descending=True, stable=True)[:, :drop]
            removed.append(remaining.gather(1, dropped))
            keep_mask = torch.ones_like(remaining, dtype=torch.bool).scatter_(1, dropped, False)
            remaining = remaining[keep_mask].reshape(batch, m - drop)
            round_index += 1
        if remaining.shape[1] > 1:
            remaining = remaining.gather(1, scores.gather(1, remaining).argsort(dim=1, stable=True))
        order = torch.cat([remaining, *(r.flip(1) for r in reversed(removed))], dim=1)
        return ImageRanking(order=order, scores=scores, rounds=rounds)


def _leave_one_out(m: int, device: torch.device) -> torch.Tensor:
    """[m, m-1]: row c lists positions 0..m-1 without c."""
    positions = torch.arange(m, device=device).expand(m, -1)
    return positions[~torch.eye(m, dtype=torch.bool, device=device)].reshape(m, m - 1)


@torch.inference_mode()
def naive_ranking(tower: PrunedVisionTower, score: CandidateScore, image: torch.Tensor, label: int,
                  step: int = 1, min_keep: float | None = None) -> tuple[list[int], list[float]]:
    """Reference search for one image [3, H, W]: the whole tower runs once per candidate, through
    open_clip's own blocks, with nothing cached or batched. Returns the ranking and, per patch, the
    score of its candidate in the last round it took part in (as ``ImageRanking``, for one image)."""

    def embed(kept: list[int] | None) -> torch.Tensor:
        tokens = tower.prefix(image.unsqueeze(0)).tokens  # [1, N+1, D]
        if kept is not None:
            tokens = torch.cat([tokens[:, :1], tokens[:, [1 + p for p in kept]]], dim=1)
        return tower.suffix(tokens)

    target = score.targets(embed(None), torch.tensor([label]))
    remaining = list(range(tower.spec.num_patches))
    stop_at = 1 if min_keep is None else keep_count(min_keep, len(remaining))
    removed, last_scores = [], {}
    while len(remaining) > stop_at:
        for candidate in remaining:
            last_scores[candidate] = float(score(embed([p for p in remaining if p != candidate]), target)[0])
        for _ in range(min(step, len(remaining) - stop_at)):
            worst = max(remaining, key=lambda p: (last_scores[p], -remaining.index(p)))
            remaining.remove(worst)
            removed.append(worst)
    remaining.sort(key=lambda p: last_scores.get(p, 0.0))
    return remaining + removed[::-1], [last_scores.get(p, 0.0) for p in range(tower.spec.num_patches)]
