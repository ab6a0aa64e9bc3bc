"""Data-parallel training over torch.distributed: who this process is, the process group, the
gradient all-reduce and the rank-0 guard.

A job launched by torchrun finds RANK, WORLD_SIZE and LOCAL_RANK in its environment; without them
it is world size 1 and nothing here touches torch.distributed, so a plain process behaves exactly
as before. `session(device)` opens the process group (gloo on CPU, NCCL on CUDA) unless one is
open, and closes only one it opened, so a job can hold it around train() and its own rank-0
writes. Every rank draws the same global batch (same seed, same data state) and keeps rows
rank::world_size (`shard`); gradients are summed with weights local_rows / global_rows, so the
update is the one a single process makes on the global batch of a batch-mean loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from toymodels.resources import resolve_device


class World(NamedTuple):
    """This process's place among the training processes."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """The process that writes run folders, checkpoints and SAE files."""
        return self.rank == 0


def world() -> World:
    """Rank, world size and local rank from torchrun's environment (0, 1, 0 without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK = {rank} and WORLD_SIZE = {world_size} do not describe a process")
    return World(rank, world_size, local_rank)


def is_distributed() -> bool:
    """True while a process group of more than one process is open."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_device(device: torch.device) -> torch.device:
    """A bare "cuda" becomes this process's GPU (cuda:LOCAL_RANK) when several processes run."""
    if device.type == "cuda" and device.index is None and world().world_size > 1:
        return torch.device("cuda", world().local_rank % torch.cuda.device_count())
    return device


def process_device(name: str) -> torch.device:
    """The device a job named (auto, cpu, cuda, cuda:N) as this process's: resolved on this
    machine, a bare "cuda" taken as this process's GPU."""
    return local_device(resolve_device(name))


@contextmanager
def session(device: torch.device | str = "cpu") -> Iterator[World]:
    """Open the process group for the environment's world (NCCL on a CUDA device, else gloo)
    unless one is open or the world is one process; close it on exit if this call opened it."""
    me = world()
    opened = False
    if me.world_size > 1 and not dist.is_initialized():
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(local_device(device))
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=me.rank,
            world_size=me.world_size,
        )
        opened = True
    try:
        yield me
    finally:
        if opened:
            dist.destroy_process_group()


@contextmanager
def job(device: str = "cpu") -> Iterator[World]:
    """A whole job on the named device (`process_device`) under torchrun: one process group
    for all its trainings, and every rank waits at the end until rank 0 has written the run."""
    with session(process_device(device)) as me:
        yield me
        barrier()


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if is_distributed():
        dist.barrier()


def gather_to_main(value: object) -> list:
    """Every rank's value, in rank order, on rank 0 (an empty list elsewhere); [value] alone."""
    if not is_distributed():
        return [value]
    values = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, values, dst=0)
    return values if values is not None else []


def shard(batch: Tensor, global_rows: int) -> Tensor:
    """Rows rank::world_size of a global batch (B, D) or (M, B, D)."""
    if not is_distributed():
        return batch
    rank, size = dist.get_rank(), dist.get_world_size()
    if global_rows < size:
        raise ValueError(f"batch_size = {global_rows} is smaller than the world size {size}")
    return batch[..., rank::size, :]


def weighted_sum(values: Tensor, local_rows: int, global_rows: int) -> Tensor:
    """sum over ranks of values * local_rows / global_rows: the global batch mean of a batch
    mean (in place; returned for chaining)."""
    if is_distributed():
        values.mul_(local_rows / global_rows)
        dist.all_reduce(values)
    return values


def all_reduce_gradients(module: nn.Module, local_rows: int, global_rows: int) -> None:
    """Replace every gradient by the global-batch gradient, in one all-reduce."""
    if not is_distributed():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = weighted_sum(torch.cat([g.reshape(-1) for g in grads]), local_rows, global_rows)
    for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(part.view_as(grad))


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the replicas start identical)."""
    if is_distributed():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def whole_batch_firing(global_rows: int) -> Callable[[Tensor, int], tuple[Tensor, int]]:
    """For SAE.batch_firing: the latents that fired on any rank's rows, and the global batch's
    row count, so every rank's dead-latent counters (and the aux-k loss they gate) are those of
    one process on the global batch."""

    def firing(fired_MF: Tensor, rows: int) -> tuple[Tensor, int]:
        fired = fired_MF.to(torch.int32)
        dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        return fired.bool(), global_rows

    return firing


def whole_batch_keep(global_rows: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """For BatchTopKSAE.batch_keep: per member m, which of this rank's scores (M, B, F) the whole
    global batch keeps under its budget of k_m x global_rows, and the smallest positive kept
    score (inf if none), the same on every rank.

    Each rank sends its top `length` scores per member (-inf padded to one length for the
    all-gather): every score at or above the budget's cutoff is among them, since no rank holds
    more than the budget above it, and so are all positive scores when fewer than the budget
    are. Scores tied at the cutoff (identical rows give identical scores) are kept in rank
    order, so exactly the budget is kept, as in one process."""
    size, rank = dist.get_world_size(), dist.get_rank()
    rows_per_rank = -(-global_rows // size)

    def keep(scores_MBF: Tensor, k_M: Tensor) -> tuple[Tensor, Tensor]:
        M, B, F = scores_MBF.shape
        scores_MN = scores_MBF.reshape(M, B * F)
        budget_M = k_M.to(scores_MN.device) * global_rows
        length = min(int(budget_M.max()), rows_per_rank * F)
        local_ML = scores_MN.topk(min(length, B * F), dim=-1).values
        local_ML = torch.nn.functional.pad(
            local_ML, (0, length - local_ML.shape[-1]), value=-torch.inf
        )
        ranked_MN = torch.cat(all_gather(local_ML), dim=-1).sort(dim=-1, descending=True).values
        cutoff_M = ranked_MN.gather(-1, (budget_M - 1)[:, None])
        tied_MN = scores_MN == cutoff_M
        ties_M = tied_MN.sum(-1)
        before_M = torch.stack(all_gather(ties_M))[:rank].sum(0)
        room_M = budget_M - (ranked_MN > cutoff_M).sum(-1) - before_M
        take_MN = tied_MN & (tied_MN.cumsum(-1) <= room_M[:, None])
        kept_MN = (ranked_MN >= cutoff_M) & (ranked_MN > 0)
        smallest_M = torch.where(kept_MN, ranked_MN, torch.inf).min(dim=-1).values
        return ((scores_MN > cutoff_M) | take_MN).view(M, B, F), smallest_M

    return keep


def all_gather(tensor: Tensor) -> list[Tensor]:
    """Every rank's tensor of one shape, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts
