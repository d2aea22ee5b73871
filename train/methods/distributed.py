"""Population evaluations spread over processes (torch.distributed).

ES and CMA-ES evaluate P independent members per iteration. With W processes
(``torchrun --nproc-per-node W``, gloo on CPU, NCCL on GPU) every process:

1. regenerates the WHOLE population from shared seeds (the ES noise, or the
   CMA-ES ``ask`` of an identically seeded optimizer): no parameters travel;
2. evaluates only its contiguous slice ``shard(P, rank, W)`` of the members;
3. ``all_gather``s the fitness values (P floats, the only traffic);
4. applies the identical update, so the parameters stay equal on every rank.

Each member's episode and initial state come from seeds keyed by the member's
global index, never by the rank, so W processes give the same numbers as one
process evaluating the whole population.

Dimension letters: P population members, W processes (world size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the W processes of a run (W = 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and the progress bar."""
        return self.rank == 0


def current_world() -> World:
    """The initialised process group's rank and size, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size())
    return World()


def init_from_env(device: str = "cpu") -> World:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), else a single process.

    The backend is NCCL when ``device`` is CUDA, gloo otherwise. With NCCL each
    process takes the GPU ``LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_world()
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return current_world()


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous slice [start, stop) of n members evaluated by ``rank`` of ``size`` (balanced, may be empty)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a world of {size}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def gather_fitness(local: Tensor, n: int, world: World) -> Tensor:
    """Concatenate every rank's fitness slice into the full [P] vector (float64, on the CPU).

    Args:
        local: [stop - start] fitness of this rank's shard (``shard(n, ...)``).
        n: P, the population size.
    Returns:
        [P] fitness in member order, identical on every rank.
    """
    local = local.detach().to("cpu", torch.float64)
    if world.size == 1:
        if local.numel() != n:
            raise ValueError(f"a single process must evaluate all {n} members, got {local.numel()}")
        return local
    width = -(-n // world.size)  # all_gather needs equal sizes: pad every slice to ceil(P / W)
    backend_cuda = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if backend_cuda else torch.device("cpu")
    padded = torch.full((width,), float("nan"), dtype=torch.float64, device=dev)
    padded[: local.numel()] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    out = [parts[r][: shard(n, r, world.size)[1] - shard(n, r, world.size)[0]] for r in range(world.size)]
    return torch.cat(out).cpu()


def broadcast_flag(flag: bool, world: World) -> bool:
    """True on every rank if it is true on any rank (e.g. "stop now" after Ctrl-C on one process)."""
    if world.size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def leave(world: World) -> None:
    """Leave the process group: wait for every rank, then destroy it (nothing to do for one process).

    Ranks that reach teardown at different times (rank 0 still writing the
    model, say) can abort in gloo's teardown with "terminate called without an
    active exception"; the barrier lines them up first.
    """
    if world.size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
