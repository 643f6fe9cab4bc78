"""Collectives over the Ulysses group, as plain functions that graphs can call.

Graphs call these by name with their dims as keyword arguments; the process
group is read from the parallel state at run time, so a graph contains no
process-group object and prints readably.

HCCL (Ascend NPUs) takes only contiguous tensors, so every tensor handed to a
collective here, input or output buffer, is contiguous.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..parallel.state import get_state, is_initialized


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names it and its caller."""


def run_collective(collective: Callable, issuer: str, *args, **kwargs):
    """Call ``collective(*args, **kwargs)`` and name it and ``issuer`` on failure.

    A rank that never enters a collective leaves the others waiting until the
    process group's timeout (``initialize_usp(timeout=...)``). The backend's
    own error then names only the transport that gave up; this one also names
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


def all_to_all_heads_to_sequence(tensors: Sequence[torch.Tensor],
                                 group: dist.ProcessGroup,
                                 issuer: str = "all_to_all_heads_to_sequence"
                                 ) -> List[torch.Tensor]:
    """Exchange several ``[B, S/P, H, D]`` tensors with one ``all_to_all_single``.

    Each tensor goes from this rank's sequence slice with all heads to the full
    sequence with this rank's heads, ``[B, S/P, H, D] -> [B, S, H/P, D]``, as
    ``all_to_all_4d(x, scatter_dim=2, gather_dim=1)`` does for one tensor.
    The tensors must share shape, dtype and device.

    The send buffer interleaves the n tensors inside each token,
    ``[P, B, S/P, n, H/P, D]``, and costs one copy per tensor, as a separate
    exchange would. Row r of the received buffer is rank r's sequence slice,
    so for B = 1 each output is a view of that buffer with a token stride of
    ``n * H/P * D``, and no copy follows the exchange.
    """
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return list(tensors)
    first = tensors[0]
    for tensor in tensors[1:]:
        if tensor.shape != first.shape or tensor.dtype != first.dtype:
            raise ValueError(
                f"all_to_all of several tensors needs one shape and dtype, got "
                f"{[(tuple(t.shape), t.dtype) for t in tensors]}")
    num_heads = first.size(2)
    if num_heads % world_size != 0:
        raise ValueError(
            f"all_to_all: dim 2 of shape {tuple(first.shape)} has size "
            f"{num_heads}, which is not divisible by the group size {world_size}")

    # Each [B, S/P, H, D] -> [P, B, S/P, H/P, D]; stacked at dim 3:
    # [P, B, S/P, n, H/P, D], where row r is the piece for rank r.
    pieces = [t.unflatten(2, (world_size, num_heads // world_size)).movedim(2, 0)
              for t in tensors]
    send = torch.stack(pieces, dim=3).contiguous()
    received = torch.empty_like(send)
    run_collective(dist.all_to_all_single, issuer, received, send, group=group)

    # received [P, B, S/P, n, H/P, D]: row r came from rank r. Tensor i:
    # [P, B, S/P, H/P, D] -> [B, P, S/P, H/P, D] -> [B, S, H/P, D].
    return [received.select(3, index).movedim(0, 1).flatten(1, 2)
            for index in range(len(tensors))]


def ulysses_all_to_all_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exchange q, k and v before self-attention in as few calls as possible.

    ``[B, S/P, H, D] -> [B, S, H/P, D]`` for each, over the Ulysses group of
    the parallel state. Tensors of the same shape and dtype share one
    ``all_to_all_heads_to_sequence`` call: one call in total when all three
    match. Under bf16 autocast with fp32 weights, Wan's q and k leave the RMS
    norm in fp32 while v is bf16, so q and k share one call and v gets its
    own. Every tensor keeps its dtype, so the bytes sent are those of three
    separate exchanges.
    """
    group = get_state().ulysses_group
    if group is None:
        return q, k, v
    tensors = (q, k, v)
    batches: Dict[tuple, List[int]] = {}
    for index, tensor in enumerate(tensors):
        batches.setdefault((tuple(tensor.shape), tensor.dtype), []).append(index)

    exchanged: List[Optional[torch.Tensor]] = [None] * len(tensors)
    for indices in batches.values():
        roles = "/".join("qkv"[index] for index in indices)
        issuer = f"ulysses_all_to_all_qkv ({roles}) in self-attention"
        outputs = all_to_all_heads_to_sequence(
            [tensors[index] for index in indices], group, issuer)
        for index, output in zip(indices, outputs):
            exchanged[index] = output
    return exchanged[0], exchanged[1], exchanged[2]


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
