"""The parallel state that every pass and wrapper reads.

``initialize_usp()`` fills it once per process. Passes read the Ulysses group
and degree from here at run time, so a rewritten graph stays valid across calls
and contains no process-group objects.
"""

import dataclasses
import datetime
from typing import Optional

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class ParallelState:
    """Process-group layout of this process.

    Attributes:
        backend: torch.distributed backend name ("gloo", "nccl", "hccl").
        rank: global rank.
        local_rank: rank on this node; it selects the device.
        world_size: number of processes.
        device: the device this rank computes on.
        ulysses_degree: number of ranks that split one sequence (Ulysses).
        ulysses_group: the process group of those ranks; None in a
            single-process run.
        timeout: collective timeout given to the process group.
        owns_process_group: whether initialize_usp() created the default
            process group (and destroy_usp() may destroy it).
    """

    backend: str
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    ulysses_degree: int
    ulysses_group: Optional[dist.ProcessGroup]
    timeout: datetime.timedelta
    owns_process_group: bool = False


_state: Optional[ParallelState] = None


def set_state(state: Optional[ParallelState]) -> None:
    global _state
    _state = state


def get_state() -> ParallelState:
    """Return the state set by ``initialize_usp()``.

    Raises:
        RuntimeError: ``initialize_usp()`` has not run in this process.
    """
    if _state is None:
        raise RuntimeError(
            "lite_boost's parallel state is not initialized: call "
            "lite_boost.parallel.initialize_usp() before ParallelManager() "
            "or setup_model()")
    return _state


def is_initialized() -> bool:
    return _state is not None


def ulysses_rank() -> int:
    state = get_state()
    if state.ulysses_group is None:
        return 0
    return dist.get_rank(state.ulysses_group)
