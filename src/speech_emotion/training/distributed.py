"""Several processes, one run: what ``torchrun`` sets up, and the few collectives fine-tuning needs.

``torchrun --nproc-per-node K`` starts K copies of the same command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`current_world`
reads them (one process, rank 0, without them); :func:`process_group` joins the others
(``gloo`` on CPU, ``nccl`` when CUDA is present). With one process every helper here is a
no-op, so the same code runs either way.

Example:
    >>> world = current_world({})  # no torchrun variables: a single process
    >>> world.size, world.rank, world.is_main
    (1, 0, True)
    >>> current_world({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}).is_main
    False
    >>> with process_group(world):  # nothing to join
    ...     float(all_reduce_sum(torch.ones(2), world).sum())
    2.0
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

TIMEOUT = timedelta(minutes=30)
"""How long a collective waits for the other processes before failing."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run.

    Attributes:
        rank: 0..size-1; rank 0 alone writes the run folder.
        size: number of processes (``WORLD_SIZE``).
        local_rank: index of the process on its machine (picks its GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for rank 0, the process that writes."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` when CUDA is present, else ``cpu``."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    @property
    def backend(self) -> str:
        """``nccl`` with CUDA, ``gloo`` on CPU."""
        return "nccl" if torch.cuda.is_available() else "gloo"


def current_world(environ: Mapping[str, str] | None = None) -> World:
    """The :class:`World` described by torchrun's variables (a single process without them).

    Raises:
        ValueError: the variables are not integers or are inconsistent (rank outside 0..size-1).
    """
    environ = os.environ if environ is None else environ
    try:
        size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE={environ.get('WORLD_SIZE')!r}, RANK={environ.get('RANK')!r}, "
            f"LOCAL_RANK={environ.get('LOCAL_RANK')!r}: "
            "expected integers (as torchrun sets them); unset them to run in one process"
        ) from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ValueError(
            f"RANK={rank}, WORLD_SIZE={size}: expected 0 <= RANK < WORLD_SIZE; launch with `torchrun --nproc-per-node "
            "K`"
        )
    return World(rank=rank, size=size, local_rank=local_rank)


@contextlib.contextmanager
def process_group(world: World) -> Iterator[World]:
    """Join the run's process group for the duration (nothing to do for a single process).

    The group is created from torchrun's ``MASTER_ADDR``/``MASTER_PORT`` unless one exists
    already (then it is used and left alone), and destroyed on exit when created here.
    """
    if world.size == 1:
        yield world
        return
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        if world.backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=world.backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)
        created = True
    elif dist.get_world_size() != world.size:
        raise ValueError(f"a process group of {dist.get_world_size()} processes exists, but WORLD_SIZE={world.size}")
    try:
        yield world
    finally:
        if created:
            dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all processes (the same result on every rank)."""
    if world.size == 1:
        return tensor
    import torch.distributed as dist

    buffer = tensor.detach().to(world.device).contiguous().clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def broadcast(tensor: torch.Tensor, world: World, *, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank."""
    if world.size == 1:
        return tensor
    import torch.distributed as dist

    buffer = tensor.detach().to(world.device).contiguous().clone()
    dist.broadcast(buffer, src=src)
    return buffer.to(tensor.device)


def barrier(world: World) -> None:
    """Wait until every process gets here."""
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()
