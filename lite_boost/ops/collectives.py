"""Collectives over the Ulysses group, as plain functions that graphs can call.

Graphs call these by name with their dims as keyword arguments; the process
group is read from the parallel state at run time, so a graph holds no
process-group object and prints readably.

HCCL (Ascend NPUs) takes only contiguous tensors, so every tensor handed to a
collective here, input or output buffer, is contiguous.
"""

from typing import Callable

import torch
import torch.distributed as dist

from ..parallel.state import get_state, is_initialized


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names it and its caller."""


def run_collective(collective: Callable, issuer: str, *args, **kwargs):
    """Call ``collective(*args, **kwargs)`` and name it and ``issuer`` on failure.

    A rank that never enters a collective leaves the others waiting until the
    process group's timeout (``initialize_usp(timeout=...)``). The backend's
    own error then says only which transport gave up; this one also says
    which collective and which lite_boost call issued it.
    """
    try:
        return collective(*args, **kwargs)
    except RuntimeError as error:
        timeout = get_state().timeout if is_initialized() else "unknown"
        rank = dist.get_rank() if dist.is_initialized() else 0
        raise CollectiveError(
            f"{collective.__name__} issued by lite_boost's {issuer} failed on "
            f"rank {rank} (process-group timeout {timeout}): {error}. A rank "
            "that did not enter it, or entered it with other shapes, causes "
            "this: call the patched model or generate() on every rank with "
            "the same arguments") from error


def all_gather_single(output: torch.Tensor, input: torch.Tensor,
                      group: dist.ProcessGroup, issuer: str = "all_gather") -> None:
    """Gather every rank's ``input`` into ``output`` along dim 0, in rank order.

    torch 2.14 renamed ``all_gather_into_tensor`` to ``all_gather_single`` and
    warns on the old name; older releases, such as those torch_npu supports,
    have only the old one.
    """
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    run_collective(gather, issuer, output, input, group=group)


def all_to_all_4d(x: torch.Tensor, scatter_dim: int, gather_dim: int,
                  group: dist.ProcessGroup,
                  issuer: str = "all_to_all_4d") -> torch.Tensor:
    """Scatter ``x`` along ``scatter_dim`` and gather along ``gather_dim``.

    With P ranks, for q/k/v before attention (scatter heads, gather sequence):
    ``[B, S/P, H, D] -> [B, S, H/P, D]``; after attention the reverse:
    ``[B, S, H/P, D] -> [B, S/P, H, D]``. Gathered pieces are ordered by rank.

    One ``all_to_all_single`` call moves the data: it is the fastest form on
    gloo and the one HCCL and NCCL implement natively.
    """
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return x
    scatter_size = x.size(scatter_dim)
    if scatter_size % world_size != 0:
        raise ValueError(
            f"all_to_all: dim {scatter_dim} of shape {tuple(x.shape)} has size "
            f"{scatter_size}, which is not divisible by the group size "
            f"{world_size}")

    # [..., N, ...] -> [P, ..., N/P, ...]: the piece for rank r is row r.
    send = x.unflatten(scatter_dim, (world_size, scatter_size // world_size))
    send = send.movedim(scatter_dim, 0).contiguous()
    received = torch.empty_like(send, memory_format=torch.contiguous_format)
    run_collective(dist.all_to_all_single, issuer, received, send, group=group)

    # [P, ..., M, ...] -> [..., P * M, ...]: row r came from rank r, so the
    # pieces join in rank order along gather_dim.
    received = received.movedim(0, gather_dim)
    return received.flatten(gather_dim, gather_dim + 1)


def ulysses_all_to_all(x: torch.Tensor, *, scatter_dim: int,
                       gather_dim: int) -> torch.Tensor:
    """``all_to_all_4d`` over the Ulysses group of the parallel state."""
    group = get_state().ulysses_group
    if group is None:
        return x
    issuer = (f"ulysses_all_to_all(scatter_dim={scatter_dim}, "
              f"gather_dim={gather_dim}) in self-attention")
    return all_to_all_4d(x, scatter_dim, gather_dim, group, issuer)


def all_gather_dim(x: torch.Tensor, dim: int, group: dist.ProcessGroup,
                   issuer: str = "all_gather_dim") -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim``, in rank order.

    ``[B, S/P, C] -> [B, S, C]`` for ``dim=1``. Every rank must pass the same
    shape.
    """
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return x
    local = x.movedim(dim, 0).contiguous()
    gathered = local.new_empty((world_size * local.size(0), *local.shape[1:]))
    all_gather_single(gathered, local, group, issuer)
    return gathered.movedim(0, dim)
