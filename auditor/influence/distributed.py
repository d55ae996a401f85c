"""Row sharding of per-sample gradient work over the ranks of a torchrun job (`torchrun ... -m auditor score`).

Without torchrun (WORLD_SIZE unset or 1) every helper here is the identity: one process, all rows, rank 0.
Under torchrun each rank scores one contiguous block of rows, the blocks are gathered to every rank (each
rank then holds the same full arrays, so the code after a gather needs no branching), and only the
primary rank writes to the run directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's rank and the number of processes scoring together."""

    rank: int = 0
    size: int = 1

    @property
    def primary(self) -> bool:
        """True on the one rank that writes tables and runs analyze/report."""
        return self.rank == 0


def current_world() -> World:
    """The initialised process group's rank and size, or the single-process world."""
    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size())
    return World()


def launched_distributed() -> bool:
    """True when torchrun (or another launcher using its env protocol) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group(timeout: timedelta | None = None) -> Iterator[World]:
    """Join the torchrun job for the block (NCCL with CUDA, else gloo), then leave it; a no-op without torchrun.

    `timeout` bounds every collective call, so it must exceed the longest time one rank works alone (under
    `audit`, rank 0 trains while the others wait); None keeps torch's default (30 minutes on gloo).
    """
    if not launched_distributed() or not dist.is_available() or dist.is_initialized():
        yield current_world()
        return
    backend = choose_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timeout)
    world = current_world()
    logger.info("Joined a %s job as rank %d of %d", backend, world.rank, world.size)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def choose_backend() -> str:
    """NCCL when every local rank can own a GPU, else gloo.

    NCCL refuses two ranks on one device, so with fewer GPUs than local ranks the job falls back to gloo
    (the gradient work runs on the CPU either way today; only the gather moves).
    """
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_ranks and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if current_world().size > 1:
        dist.barrier()


def broadcast_from_primary(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank; `value` itself in one process."""
    if current_world().size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous block of `n` rows; the first n % size ranks take one extra row."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(local: np.ndarray, n: int, *, axis: int = 0) -> np.ndarray:
    """Every rank's block of rows (along `axis`), concatenated in rank order into the full `n` rows.

    Blocks differ in length by at most one, so each is zero-padded to the longest for all_gather (which
    needs equal shapes) and trimmed back. NCCL only moves CUDA tensors, so the gather runs on the GPU there.
    """
    world = current_world()
    if world.size == 1:
        return local
    lengths = [stop - start for start, stop in (shard_bounds(n, r, world.size) for r in range(world.size))]
    moved = np.moveaxis(local, axis, 0)
    assert moved.shape[0] == lengths[world.rank], "each rank must pass exactly its own block"
    padded = np.zeros((max(lengths), *moved.shape[1:]), dtype=moved.dtype)
    padded[: len(moved)] = moved
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.from_numpy(padded).to(device)
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor)
    full = np.concatenate([part.cpu().numpy()[:length] for part, length in zip(parts, lengths, strict=True)])
    return np.moveaxis(full, 0, axis)
