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
        ring_degree: ranks that pass keys and values around a ring.
        cfg_degree: 1, or 2 when the two guidance branches run on two halves
            of the ranks.
        ring_group, cfg_group: this rank's ring and CFG groups, or None.
        sequence_group: the ulysses_degree * ring_degree ranks that split one
            sequence, or None.
        world_group: every rank (the VAE's data parallelism), or None.
        degrees_fixed: whether the caller chose the degrees; otherwise the
            planner may choose them when the first model is patched.
        plan_reason: why these degrees, for the log and the report.

    Rank layout: Ulysses groups are consecutive ranks (the fastest links on a
    node), ring groups stride by ulysses_degree, and CFG groups by
    ulysses_degree * ring_degree.
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
    ring_degree: int = 1
    cfg_degree: int = 1
    ring_group: Optional[dist.ProcessGroup] = None
    cfg_group: Optional[dist.ProcessGroup] = None
    sequence_group: Optional[dist.ProcessGroup] = None
    world_group: Optional[dist.ProcessGroup] = None
    degrees_fixed: bool = False
    plan_reason: str = "every rank runs Ulysses (the default)"

    @property
    def sequence_degree(self) -> int:
        """Ranks that split one sequence: ulysses_degree * ring_degree."""
        return self.ulysses_degree * self.ring_degree

    @property
    def degrees(self) -> tuple:
        """(cfg_degree, ulysses_degree, ring_degree)."""
        return (self.cfg_degree, self.ulysses_degree, self.ring_degree)


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


def group_rank(group: Optional[dist.ProcessGroup]) -> int:
    """This process's rank in ``group``; 0 for None (a group of one)."""
    if group is None:
        return 0
    return dist.get_rank(group)


def ulysses_rank() -> int:
    return group_rank(get_state().ulysses_group)


def ring_rank() -> int:
    return group_rank(get_state().ring_group)


def sequence_rank() -> int:
    return group_rank(get_state().sequence_group)


def cfg_rank() -> int:
    return group_rank(get_state().cfg_group)
