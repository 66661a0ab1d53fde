"""The ranking file (``.prtk``): one safetensors file, tensors per image plus JSON metadata.

Tensors: ``order`` int32 [I, N] (patch indices, most important first), ``scores`` float32 [I, N]
(each patch's candidate score in the last round it took part in), ``rounds`` int32 [I, N] (that
round). Metadata key ``prtk`` holds JSON: format, model name and weights hash, layer, score, step,
min_keep, the data root, classes, and per image its relative path, content hash and label, plus
which slice of the images the file covers (a shard of ``--shard i/n``, or all of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prtk.core.errors import PrtkInputError
from prtk.core.tagged_file import read_tagged, write_tagged

FORMAT = "prtk-ranking/1"
TENSORS = ("order", "scores", "rounds")


@dataclass
class RankingFile:
    """``tensors`` maps ``order``/``scores``/``rounds`` to [I, N] tensors; ``meta`` is the JSON metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def images(self) -> list[dict]:
        return self.meta["images"]

    def identity(self) -> dict:
        """What the shards of one run share: everything but which rows each holds and where the weights were
        read from (shards made on several machines name their own checkpoint paths; the hash must agree)."""
        return {key: value for key, value in self.meta.items() if key not in ("shard", "weights")}


def save_ranking(path: str | Path, ranking: RankingFile) -> None:
    """Write atomically; equal inputs give equal bytes."""
    write_tagged(path, {name: ranking.tensors[name] for name in TENSORS}, ranking.meta | {"format": FORMAT})


def load_ranking(path: str | Path) -> RankingFile:
    """Read a ranking file; anything else is refused in one line."""
    tensors, meta = read_tagged(path, "ranking file", FORMAT)
    if set(tensors) != set(TENSORS):
        raise PrtkInputError(f"{path} is not a prtk ranking file (tensors {', '.join(sorted(tensors))})")
    return RankingFile(tensors=tensors, meta=meta)


def rankings_for(ranking: RankingFile, clip, relative_paths: list[str], file_hashes: list[str]) -> torch.Tensor:
    """The ``order`` rows [I, N] for images given by relative path, after checking the file fits them.

    Refuses a ranking of another model or weights, and images the file does not hold or whose
    content changed since ranking.
    """
    meta = ranking.meta
    from prtk.models import check_made_for

    check_made_for("ranking", meta["model"], meta["weights_sha256"], meta.get("weights"), clip)
    rows = {image["path"]: (row, image["sha256"]) for row, image in enumerate(ranking.images)}
    selected = []
    for path, digest in zip(relative_paths, file_hashes, strict=True):
        if path not in rows:
            raise PrtkInputError(f"ranking holds no image {path} (it ranks {meta['data_root']}): rank this data first")
        row, ranked_digest = rows[path]
        if ranked_digest != digest:
            raise PrtkInputError(f"image {path} differs from the one that was ranked (content hash changed)")
        selected.append(row)
    return ranking.tensors["order"][torch.tensor(selected, dtype=torch.long)]
