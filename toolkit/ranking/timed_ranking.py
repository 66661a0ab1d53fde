"""``rank_images``: one ranking job as the CLI and Python users run it — this process's part of the images,
its intra-op thread count, the timing — returning a ``RankSummary``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from prtk.models import LoadedClip
from prtk.ranking.distributed import intra_op_threads
from prtk.ranking.folder_ranking import Shard, rank_folder
from prtk.ranking.search import RankingConfig


@dataclass(frozen=True)
class RankSummary:
    """What a ranking job wrote to ``out``: ``images`` x ``num_patches`` golden orders at block ``layer``, made
    with ``threads`` intra-op threads in ``seconds``."""

    model: str
    num_patches: int
    layer: int
    score: str
    step: int
    min_keep: float | None
    out: str
    images: int
    threads: int
    seconds: float

    def as_dict(self) -> dict:
        """The ``--json`` document."""
        return asdict(self)


def rank_images(clip: LoadedClip, data_root: str | Path, out: str | Path, config: RankingConfig, *,
                part: Shard = Shard(), gather: Callable[[dict], dict | None] | None = None, chunk: int = 32,
                limit: int | None = None, threads: int | None = None, force: bool = False, device: str = "cpu",
                progress: Callable[[int, int], None] | None = None) -> RankSummary | None:
    """Rank ``data_root`` into ``out`` (``prtk.ranking.folder_ranking.rank_folder``) with ``threads`` intra-op threads
    (None: torch's); ``part`` and ``gather`` from ``work_partition``. None on processes other than rank 0."""
    start = time.perf_counter()
    with intra_op_threads(threads) as used_threads:
        ranking = rank_folder(clip, data_root, out, config, chunk=chunk, limit=limit, shard=part, force=force,
                              device=device, progress=progress, gather=gather)
    if ranking is None:
        return None
    meta = ranking.meta
    return RankSummary(model=meta["model"], num_patches=meta["num_patches"], layer=meta["layer"],
                       score=meta["score"], step=meta["step"], min_keep=meta["min_keep"], out=str(out),
                       images=len(ranking.images), threads=used_threads,
                       seconds=round(time.perf_counter() - start, 3))
