"""Process rank, world size and a barrier, from accelerate when launched with ``accelerate launch`` / torchrun."""

from __future__ import annotations

import os
from typing import Callable

import torch

__all__ = ["DistInfo", "dist_info"]


class DistInfo:
    """Rank, world size and a barrier; from accelerate when launched with ``accelerate launch``."""

    def __init__(self, rank: int = 0, world_size: int = 1, barrier: Callable[[], None] = lambda: None) -> None:
        self.rank, self.world_size, self.barrier = rank, world_size, barrier

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info(cpu: bool | None = None) -> DistInfo:
    """Process info from ``accelerate.PartialState`` when several processes were launched, else a single process.

    ``cpu`` (default: no CUDA, or ``ACCELERATE_USE_CPU`` set) makes accelerate use the gloo backend
    (``DistributedType.MULTI_CPU``). Launch CPU processes with ``accelerate launch --multi_gpu --num_processes 2``
    or ``torchrun --nproc_per_node 2``: ``accelerate launch --cpu --num_processes 2`` starts one process unless
    an MPI hostfile is given.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.distributed.is_initialized():
        from accelerate import PartialState

        if cpu is None:
            cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        state = PartialState(cpu=cpu)
        if state.num_processes != int(os.environ.get("WORLD_SIZE", state.num_processes)):
            raise RuntimeError(f"accelerate sees {state.num_processes} processes but WORLD_SIZE is "
                               f"{os.environ['WORLD_SIZE']}: each process would redo the whole run")
        return DistInfo(state.process_index, state.num_processes, state.wait_for_everyone)
    return DistInfo()
