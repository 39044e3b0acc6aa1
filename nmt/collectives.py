"""The calls between torchrun's processes (ranks): joining and leaving the group, rank 0's
values sent to all, and rank 0's work shared with its error.

Every function but ``start`` is collective: every rank calls it, in the same order. In a
single process (world size 1) each is a no-op that returns its own value; torch is
imported only when there are several processes.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable

from nmt.errors import NmtError


def start(device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def stop(world: int) -> None:
    """Leave the process group, once every rank is done."""
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


def broadcast_from_rank0(value, world: int):
    """Rank 0's ``value`` on every rank."""
    if world == 1:
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_from_all_ranks(value, world: int) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if world == 1:
        return [value]
    import torch.distributed as dist
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def on_rank0(work: Callable[[], object], rank: int, world: int):
    """``work()`` run by rank 0 alone; every rank gets its result, or its error. The others
    wait in a gloo group of its own with a long timeout: preparing a large corpus can outlast
    the training group's (NCCL's is 10 minutes)."""
    if world == 1:
        return work()
    import torch.distributed as dist
    group = dist.new_group(backend="gloo", timeout=timedelta(hours=12))
    tell = lambda box: dist.broadcast_object_list(box, src=0, group=group)  # noqa: E731
    if rank == 0:
        try:
            value = work()
        except BaseException as err:  # the others get its message; rank 0 raises it as it was
            tell([("error", str(err) if isinstance(err, NmtError) else
                   "rank 0 failed while preparing the training data (see its error)")])
            raise
        tell([("ok", value)])
        return value
    box: list = [None]
    tell(box)
    status, value = box[0]
    if status == "error":
        raise NmtError(value)
    return value
