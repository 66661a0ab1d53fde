"""torch.distributed for processes started by ``torchrun``: which part of the work is this process's,
and a gather of per-process results onto rank 0."""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from typing import Callable, Iterator

from prtk.core.errors import PrtkInputError
from prtk.ranking.folder_ranking import Shard


def work_partition(shard: str | None) -> tuple[Shard, Callable[[dict], dict | None] | None]:
    """This process's part of the work and the gather onto rank 0 (None without torch.distributed).

    Under torchrun: its rank of the world. Otherwise ``shard`` (``"i/n"``, across machines), or all of it.
    """
    world = torchrun_world()
    if world is None:
        return (Shard.parse(shard) if shard else Shard()), None
    if shard is not None:
        raise PrtkInputError("--shard splits work across machines; under torchrun the processes split it already")
    return world


def torchrun_world() -> tuple[Shard, Callable[[dict], dict | None]] | None:
    """Under torchrun with more than one process: (this process's shard, gather); otherwise None.

    ``gather(results)`` merges every process's ``{key: value}`` on rank 0 and returns it there, None
    elsewhere. The gloo backend carries it (CPU tensors), so it works with or without GPUs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
        atexit.register(_leave_process_group)
    rank, world = dist.get_rank(), dist.get_world_size()

    def gather(results: dict) -> dict | None:
        collected = [None] * world if rank == 0 else None
        dist.gather_object(results, collected, dst=0)
        if rank != 0:
            return None
        merged = {}
        for part in collected:
            merged.update(part)
        return merged

    return Shard(rank, world), gather


def _leave_process_group() -> None:
    """At exit: wait for every process, then tear the process group down, so that gloo's threads stop while the
    interpreter still runs (a rank that exited first, the group left to interpreter shutdown, was seen to abort)."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op CPU threads (None: the process's current setting); yields the count.

    CPU results can depend on the thread count (on the 2-core AMD EPYC test machines a ranking made
    with 1 thread differs from one made with 2 by ~2e-6 in candidate scores, enough to swap tied
    patches). torchrun starts its processes with ``OMP_NUM_THREADS=1`` unless it is set, so a run
    split by torchrun equals a single run only when both are given the same count.
    """
    import torch

    check_threads(threads)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise PrtkInputError(f"--threads must be at least 1, got {threads}")
