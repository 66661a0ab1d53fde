"""Rank every image of an ImageFolder into one ranking file: chunked, resumable, shardable, distributed.

Images are split into fixed chunks of ``chunk`` images (chunk ``c`` covers images ``[c*chunk,
(c+1)*chunk)``); a process works on the chunks ``c % count == index`` of its shard (``--shard i/n``)
or of its torch.distributed rank. Each finished chunk is saved in ``.<out>.partial/``, so a killed
run restarted with the same command continues where it stopped; chunk boundaries never depend on how
the work was split, so every way of running gives the same bytes.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prtk import __version__
from prtk.core.files import check_writable, output_lock, prepare_run_folder, read_run_part, write_bytes_atomic
from prtk.data.folder import ImageFolderDataset, class_display_name
from prtk.core.errors import PrtkInputError
from prtk.models import LoadedClip
from prtk.pruning.spec import TowerSpec, build_tower
from prtk.pruning.tower import PrunedVisionTower
from prtk.ranking.search import CandidateScore, GoldenRanker, RankingConfig
from prtk.ranking.file import TENSORS, RankingFile, save_ranking
from prtk.models.zeroshot import DEFAULT_TEMPLATES


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` (0-based): the chunks ``c`` with ``c % count == index``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise PrtkInputError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
        if not (count >= 1 and 0 <= index < count):
            raise PrtkInputError(f"shard i/n needs 0 <= i < n, got {text!r}")
        return cls(index, count)


def ranking_metadata(clip: LoadedClip, dataset: ImageFolderDataset, tower: PrunedVisionTower,
                     config: RankingConfig, chunk: int) -> dict:
    """Everything that identifies a ranking run: model, weights, search settings, data and images."""
    return {
        "prtk_version": __version__,
        "model": clip.name,
        "weights_sha256": clip.weights_sha256,
        "weights": clip.weights,
        "num_patches": clip.spec.num_patches,
        "layer": tower.layer,
        "score": config.score,
        "step": config.step,
        "min_keep": config.min_keep,
        "chunk": chunk,
        "templates": list(DEFAULT_TEMPLATES),
        "data_root": str(dataset.root),
        "classes": dataset.classes,
        "images": [{"path": dataset.relative_path(i), "sha256": dataset.sha256(i), "label": record.label}
                   for i, record in enumerate(dataset.records)],
    }


def _chunk_path(partial: Path, chunk_index: int) -> Path:
    return partial / f"chunk-{chunk_index:06d}.safetensors"


def _load_images(dataset: ImageFolderDataset, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for index in range(start, stop):
        pixels, label, _, error = dataset[index]
        if error:
            raise PrtkInputError(f"cannot decode image {dataset.records[index].path}: {error}")
        images.append(pixels)
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def rank_folder(clip: LoadedClip, data_root: str | Path, out: str | Path, config: RankingConfig, *,
                chunk: int = 32, limit: int | None = None, shard: Shard = Shard(), force: bool = False,
                device: str = "cpu", progress: Callable[[int, int], None] | None = None,
                gather: Callable[[dict], dict | None] | None = None) -> RankingFile | None:
    """Rank the images of ``data_root`` and write ``out``; returns what was written (None on non-zero ranks).

    ``gather(results)`` (torch.distributed) collects every process's ``{chunk: tensors}`` on rank 0
    and returns the union there, None elsewhere; without it, this process's shard is the whole output.
    """
    config.check()
    if chunk < 1:
        raise PrtkInputError(f"chunk must be at least 1, got {chunk}")
    out = Path(out)
    if gather is None or shard.index == 0:
        check_writable(out, force)
    with output_lock(out) if gather is None else nullcontext():
        clip.model.to(device)
        tower = build_tower(clip, TowerSpec(keep=1.0, layer=config.layer))
        dataset = ImageFolderDataset(data_root, clip.preprocess, clip.spec.image_size, limit)
        meta = ranking_metadata(clip, dataset, tower, config, chunk)
        partial = out.with_name(f".{out.name}.partial")
        prepare_run_folder(partial, {k: v for k, v in meta.items() if k != "prtk_version"}, force and gather is None)
        score = CandidateScore.for_classes(config.score, clip, [class_display_name(c) for c in dataset.classes])
        ranker = GoldenRanker(tower, score, config)
        chunks = [c for c in range(-(-len(dataset) // chunk)) if c % shard.count == shard.index]
        mine_total = sum(min(len(dataset), (c + 1) * chunk) - c * chunk for c in chunks)
        results = {c: _read_chunk(_chunk_path(partial, c)) for c in chunks if _chunk_path(partial, c).exists()}
        completed = 0
        if progress is not None:
            progress(0, mine_total)
        for c in chunks:
            start, stop = c * chunk, min(len(dataset), (c + 1) * chunk)
            path = _chunk_path(partial, c)
            if c not in results:
                images, labels = _load_images(dataset, start, stop)
                ranked = ranker.rank(images.to(device), labels.to(device))
                results[c] = {"order": ranked.order.int().cpu(), "scores": ranked.scores.float().cpu(),
                              "rounds": ranked.rounds.int().cpu()}
                _write_chunk(path, results[c])
            completed += stop - start
            if progress is not None:
                progress(completed, mine_total)
        if gather is not None:
            results = gather(results)
            if results is None:
                return None
            shard = Shard()
        ranking = _assemble(results, meta, shard, len(dataset), chunk)
        save_ranking(out, ranking)
        shutil.rmtree(partial)
        return ranking


def _write_chunk(path: Path, tensors: dict) -> None:
    from safetensors.torch import save

    write_bytes_atomic(path, save({name: tensors[name].contiguous() for name in TENSORS}))


def _read_chunk(path: Path) -> dict:
    from safetensors.torch import load_file

    def read(where: Path) -> dict:
        tensors = load_file(str(where))
        if set(tensors) != set(TENSORS):
            raise ValueError(f"tensors {', '.join(sorted(tensors))}, not {', '.join(TENSORS)}")
        return tensors

    return read_run_part(path, read)


def _assemble(results: dict, meta: dict, shard: Shard, images: int, chunk: int) -> RankingFile:
    order = sorted(results)
    rows = [row for c in order for row in range(c * chunk, min(images, (c + 1) * chunk))]
    empty = {name: torch.zeros(0, meta["num_patches"], dtype=torch.float32 if name == "scores" else torch.int32)
             for name in TENSORS}
    tensors = {name: torch.cat([results[c][name] for c in order]) if order else empty[name] for name in TENSORS}
    if shard.count > 1:
        meta = meta | {"shard": {"index": shard.index, "count": shard.count, "rows": rows}}
    return RankingFile(tensors=tensors, meta=meta)


def merge_rankings(files: list[RankingFile]) -> RankingFile:
    """Join the shards of one run (``--shard i/n`` for every i) into the file a single run writes."""
    if not files:
        raise PrtkInputError("nothing to merge: give the shard files")
    identity = files[0].identity()
    for other in files[1:]:
        if other.identity() != identity:
            differing = sorted(k for k in identity if identity.get(k) != other.identity().get(k))
            raise PrtkInputError(f"shards come from different runs (they differ in {', '.join(differing)})")
    by_row = {}
    for file in files:
        rows = file.meta.get("shard", {}).get("rows", list(range(len(file.images))))
        for position, row in enumerate(rows):
            if row in by_row:
                raise PrtkInputError(f"image {file.images[row]['path']} is in more than one shard")
            by_row[row] = (file, position)
    missing = [i for i in range(len(files[0].images)) if i not in by_row]
    if missing:
        raise PrtkInputError(f"{len(missing)} images are in no shard (first: {files[0].images[missing[0]]['path']})")
    tensors = {name: torch.stack([by_row[row][0].tensors[name][by_row[row][1]] for row in sorted(by_row)])
               for name in TENSORS}
    weights = {"weights": files[0].meta["weights"]} if "weights" in files[0].meta else {}
    return RankingFile(tensors=tensors, meta=dict(identity) | weights)
