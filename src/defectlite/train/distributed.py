"""Data-parallel training under ``torchrun`` (PyTorch DDP): who this process is, and the few collective steps the
loop needs. At world size 1 (no ``torchrun``) every function here is a no-op and the loop runs as it always did.

- Backend: gloo on CPU, NCCL on CUDA, initialised from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR`` ...) by :func:`init_from_env`.
- The recipe's ``batch_size`` stays the global batch: each optimisation step draws one global batch in the same
  order a single process draws it (the same generator, sampler and batch sampler), and rank r trains on the r-th
  contiguous chunk of it (:class:`RankChunks`); DDP averages the gradients, so the step equals the
  single-process step on the whole batch (up to float summation order) and the learning rate and schedule keep
  their meaning.
- Batch-norm running statistics are averaged over the ranks at each epoch end (:func:`average_buffers`;
  SyncBatchNorm exists for CUDA only). Only rank 0 validates, writes and reports; its decisions are broadcast.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from defectlite.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes (size 1: not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files, prints progress and validates (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current :class:`World` (from the initialised process group, else size 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return World()


def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its environment names a world size)."""
    return "WORLD_SIZE" in os.environ


def init_from_env(device: str = "auto") -> World:
    """Join the ``torchrun`` job described by the environment (``WORLD_SIZE`` > 1), once; else stay single.

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 but the rendezvous variables are missing.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or world().distributed:
        return world()
    if "MASTER_ADDR" not in os.environ or "RANK" not in os.environ:
        raise ConfigError("WORLD_SIZE > 1 without RANK / MASTER_ADDR: start distributed training with torchrun")
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    atexit.register(shutdown)
    return world()


def shutdown() -> None:
    """Leave the process group (registered at exit by :func:`init_from_env`). A gloo group left to the
    interpreter's teardown can abort a rank that exits first ("terminate called without an active exception",
    exit code -6, seen under load in CI; pytorch/pytorch issue 190489), which torchrun reports as a failed job."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def exit_worker(code: int) -> None:
    """End this ``torchrun`` worker with ``code`` once its work is done: leave the process group, flush the logs
    and standard streams, then ``os._exit`` (a no-op when not distributed: the caller exits as usual).

    A 2-process gloo job aborted under load *after* its last Python line ("terminate called without an active
    exception", exit -6, no Python frame on any thread: C++ static teardown, after the group was destroyed; seen
    in CI, reproduced in 2 of 49 runs of ``tests/ddp_toy.py`` beside a training job, 0 of 80 with this exit), and
    torchrun then reports the finished job as failed. Skipping that teardown is safe here: every file is written
    atomically before this point, and the atexit handlers it skips are flushed by hand."""
    if not world().distributed:
        return
    shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe
            pass
    os._exit(code)


def barrier() -> None:
    """Wait for every rank (no-op when single)."""
    if world().distributed:
        torch.distributed.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object; no-op when single)."""
    if not world().distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: dict[str, float]) -> dict[str, float]:
    """The sum over ranks of each value (training loss sums for the log; no-op when single)."""
    if not world().distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` when distributed (its parameters are
    broadcast from rank 0), else ``model`` itself. Only the trained model is wrapped, never a teacher."""
    if not world().distributed:
        return model
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (batch-norm running mean / var) over the ranks (no-op when single)."""
    w = world()
    if not w.distributed:
        return
    for b in model.buffers():
        if b.dtype.is_floating_point:
            torch.distributed.all_reduce(b)
            b.div_(w.size)


def params_digest(model: nn.Module) -> str:
    """SHA-1 of the parameters' bytes: equal on every rank of a healthy data-parallel job."""
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` when single)."""
    if not world().distributed:
        return [obj]
    out: list[Any] = [None] * world().size
    torch.distributed.all_gather_object(out, obj)
    return out


def seed_rank(seed: int, epoch: int) -> None:
    """Seed the augmentation generators of rank r > 0 for ``epoch`` from (seed, rank, epoch): each rank draws
    its own augmentations, and a resumed job draws the same ones. Rank 0 keeps the single-process generators
    (restored from the stage state), so world size 1 is unchanged."""
    w = world()
    if w.rank == 0:
        return
    s = (seed * 1_000_003 + w.rank * 7_919 + epoch) % 2**63
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class RankChunks:
    """A batch sampler yielding rank r's contiguous chunk of every global batch of ``batches``.

    Args:
        batches: the global batch sampler (e.g. ``BatchSampler(RandomSampler(ds, generator=g), B, drop_last)``).
        rank, size: this rank and the world size; B must divide evenly (checked by :func:`check_batch`).
    """

    def __init__(self, batches, rank: int, size: int) -> None:
        self.batches, self.rank, self.size = batches, rank, size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            n = -(-len(batch) // self.size)
            yield batch[self.rank * n : (self.rank + 1) * n]

    def __len__(self) -> int:
        return len(self.batches)


def loader(dataset, batch_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1), collate_fn=None):
    """The epoch's training batches: shuffled by ``generator`` exactly as ``DataLoader(shuffle=True)`` shuffles,
    the last incomplete batch dropped when the data holds a whole one; under DDP (``shard`` = (rank, size))
    this rank's chunk of each global batch."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    drop = len(dataset) >= batch_size
    rank, size = shard
    if size == 1:
        return DataLoader(dataset, batch_size, shuffle=True, drop_last=drop, generator=generator, collate_fn=collate_fn)
    batches = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop)
    return DataLoader(
        dataset, batch_sampler=RankChunks(batches, rank, size), generator=generator, collate_fn=collate_fn
    )


def check_batch(batch_size: int) -> None:
    """Refuse a global batch that does not split evenly over the ranks.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of the world size.
    """
    w = world()
    if w.distributed and batch_size % w.size:
        raise ConfigError(f"batch_size {batch_size} does not split over {w.size} processes; use a multiple of {w.size}")
