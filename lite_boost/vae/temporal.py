"""Data-parallel temporal tiling of the Wan VAE encode and decode.

``tiled_decode`` and ``tiled_encode`` split one video along time with
``plan_chunks``, run chunk ``i`` on rank ``i % world_size`` with a fresh
``vae.model.decode`` / ``vae.model.encode``, gather the outputs on every rank
and cross-fade them in plan order.

The VAE is causal in time, and each of its CausalConv3d layers carries a cache
from one latent to the next, so any chunking differs from the untiled result.
The result is defined as that of a sequential run of the same chunks
(``sequential=True``), which the data-parallel run reproduces. With a single
chunk, which is the default on one rank, the result is Wan's own untiled
encode or decode.
"""

import dataclasses
import logging
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist

from ..ops.collectives import all_gather_single
from ..parallel import state as parallel_state
from .plan import (TEMPORAL_STRIDE, Chunk, chunks_of_rank, default_chunk_size,
                   frame_offset, num_encoded_latents, plan_chunks)

logger = logging.getLogger(__name__)


def _identity(index: int) -> int:
    return index


@dataclasses.dataclass(frozen=True)
class _Direction:
    """Operations that differ between tiled encode and tiled decode.

    Attributes:
        name: "encode" or "decode", for messages.
        run_chunk: function that runs one chunk freshly and returns its kept
            output as float32 ``[C, L, H, W]``, with ``L`` in output steps
            (frames for decode, latents for encode).
        output_offset: function from a latent index to the index of its
            first output step, used to place and blend chunk outputs.
        count_latents: function from the input's time steps to its latent
            count.
    """

    name: str
    run_chunk: Callable[[object, torch.Tensor, Chunk], torch.Tensor]
    output_offset: Callable[[int], int]
    count_latents: Callable[[int], int]


def _decode_chunk(vae, z: torch.Tensor, chunk: Chunk) -> torch.Tensor:
    # z: [C, T_lat, H, W] -> fresh decode of latents [first, stop)
    # -> [1, 3, 1 + 4 (stop - first - 1), H', W']
    fresh = vae.model.decode(z[:, chunk.first:chunk.stop].unsqueeze(0),
                             vae.scale)
    video = fresh.squeeze(0).float()

    # Fresh latent j >= 1 decodes to fresh frames [4j - 3, 4j + 1), so the
    # frames of original latents >= keep_from start at fresh frame
    # frame_offset(keep_from - first). keep_from == first only when
    # first == 0, where fresh and original latent 0 agree.
    kept_frames = video[:, frame_offset(chunk.keep_from - chunk.first):]
    assert kept_frames.shape[1] == (frame_offset(chunk.stop)
                                    - frame_offset(chunk.keep_from)), (
        chunk, tuple(video.shape))
    return kept_frames


def _encode_chunk(vae, video: torch.Tensor, chunk: Chunk) -> torch.Tensor:
    # Frames [4 * first, 4 * stop - 3) encode to stop - first fresh latents.
    # Fresh latent j >= 1 covers the same frames as original latent
    # first + j. Fresh latent 0 is frame 4 * first alone (the last frame of
    # latent first), so it equals original latent 0 only when first == 0.
    # Otherwise it is warm-up that the plan never keeps, because
    # blend <= warmup - 1 there.
    # video: [3, T, H, W] -> [1, 3, 4 (stop - first) - 3, H, W]
    first_frame = TEMPORAL_STRIDE * chunk.first
    frames = video[:, first_frame:frame_offset(chunk.stop)].unsqueeze(0)
    fresh = vae.model.encode(frames, vae.scale)  # [1, C, stop - first, h, w]
    latents = fresh.squeeze(0).float()

    kept_latents = latents[:, chunk.keep_from - chunk.first:]
    assert kept_latents.shape[1] == chunk.stop - chunk.keep_from, (
        chunk, tuple(latents.shape))
    return kept_latents


_DECODE = _Direction(name="decode", run_chunk=_decode_chunk,
                     output_offset=frame_offset,
                     count_latents=_identity)
_ENCODE = _Direction(name="encode", run_chunk=_encode_chunk,
                     output_offset=_identity,
                     count_latents=num_encoded_latents)


def _assemble(direction: _Direction, plan: List[Chunk],
              pieces: List[torch.Tensor]) -> torch.Tensor:
    """Place chunk outputs in plan order and cross-fade the blended steps.

    Chunk outputs are written in plan order. The first ``n`` steps of a chunk
    overlap the end of what is already written, and become
    ``(1 - t) * written + t * new`` with ``t = k / (n + 1)`` for
    ``k = 1 .. n``, so the weight moves from the previous chunk to the new one.
    """
    offset = direction.output_offset
    total = offset(plan[-1].stop)
    channels, _, height, width = pieces[0].shape
    result = pieces[0].new_empty((channels, total, height, width))

    for chunk, piece in zip(plan, pieces):
        begin = offset(chunk.keep_from)
        blended = offset(chunk.start) - begin
        result[:, begin + blended:offset(chunk.stop)] = piece[:, blended:]
        if blended == 0:
            continue

        ramp = torch.arange(1, blended + 1, dtype=piece.dtype,
                            device=piece.device) / (blended + 1)
        ramp = ramp.view(1, blended, 1, 1)  # broadcasts over [C, n, H, W]
        previous = result[:, begin:begin + blended]
        result[:, begin:begin + blended] = (
            previous * (1 - ramp) + piece[:, :blended] * ramp)
    return result


def data_parallel_layout() -> Tuple[Optional[dist.ProcessGroup], int, int]:
    """Return (group, rank, world_size) for the data-parallel run.

    Without ``initialize_usp()``, or with a single rank, this is
    ``(None, 0, 1)`` and no collective runs.
    """
    if not parallel_state.is_initialized():
        return None, 0, 1
    group = parallel_state.get_state().world_group
    if group is None:
        return None, 0, 1
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return None, 0, 1
    return group, dist.get_rank(group), world_size


def _run_sequential(direction: _Direction, vae, x: torch.Tensor,
                    plan: List[Chunk]) -> torch.Tensor:
    pieces = [direction.run_chunk(vae, x, chunk) for chunk in plan]
    return _assemble(direction, plan, pieces)


def _exchange_shapes(direction: _Direction, x: torch.Tensor,
                     pieces: List[torch.Tensor],
                     options: Tuple[int, int, int],
                     group: dist.ProcessGroup, world_size: int
                     ) -> Tuple[int, int, int]:
    """Check that all ranks tiled the same input and return the output [C, H, W].

    A rank without a chunk has no output channels and size to go by. Ranks
    with different inputs or options would size the data gather differently
    and hang. So every rank first sends one fixed-size row: input shape,
    options, output [C, H, W] (zeros without a chunk).
    """
    if pieces:
        channels, _, height, width = pieces[0].shape
    else:
        channels = height = width = 0
    row = torch.tensor([*x.shape, *options, channels, height, width],
                       dtype=torch.int64, device=x.device)
    # gloo needs an output of world_size * numel elements with the input's
    # number of dimensions, so gather flat and view as [world_size, numel].
    table = row.new_empty(world_size * row.numel())
    all_gather_single(table, row, group,
                      issuer=f"tiled {direction.name} (shape exchange)")
    table = table.view(world_size, row.numel()).cpu()

    rows = table[:, :len(x.shape) + len(options)].tolist()
    if any(other != rows[0] for other in rows):
        raise RuntimeError(
            f"tiled {direction.name} was called with different inputs on "
            f"different ranks: per-rank [input shape..., chunk_size, overlap, "
            f"blend] = {rows}. Every rank of the group must call it with the "
            "same tensor shapes and options")

    # Chunk 0 always runs on rank 0, so rank 0's row has the output shape.
    channels, height, width = table[0, -3:].tolist()
    return channels, height, width


def _run_parallel(direction: _Direction, vae, x: torch.Tensor,
                  plan: List[Chunk], options: Tuple[int, int, int],
                  group: dist.ProcessGroup, rank: int,
                  world_size: int) -> torch.Tensor:
    own = chunks_of_rank(plan, rank, world_size)
    pieces = [direction.run_chunk(vae, x, chunk) for chunk in own]
    channels, height, width = _exchange_shapes(
        direction, x, pieces, options, group, world_size)

    # Output steps of each chunk, known on every rank from the plan alone.
    offset = direction.output_offset
    lengths = [offset(c.stop) - offset(c.keep_from) for c in plan]
    step_numel = channels * height * width
    rank_numel = [step_numel * sum(lengths[r::world_size])
                  for r in range(world_size)]
    padded_numel = max(rank_numel)

    # Every rank enters the gather, also one without a chunk: it sends zeros.
    send = x.new_zeros(padded_numel, dtype=torch.float32)
    if pieces:
        flat = torch.cat([piece.reshape(-1) for piece in pieces])
        send[:flat.numel()] = flat
    received = send.new_empty(world_size * padded_numel)
    all_gather_single(received, send, group, issuer=f"tiled {direction.name}")

    # received: [world_size * padded_numel]. Rank r's chunks lie in plan
    # order from r * padded_numel, each a flattened [C, L, H, W].
    gathered: List[Optional[torch.Tensor]] = [None] * len(plan)
    for source_rank in range(world_size):
        position = source_rank * padded_numel
        for chunk in chunks_of_rank(plan, source_rank, world_size):
            numel = step_numel * lengths[chunk.index]
            piece = received[position:position + numel]
            gathered[chunk.index] = piece.view(
                channels, lengths[chunk.index], height, width)
            position += numel
    return _assemble(direction, plan, gathered)


def _tile(direction: _Direction, vae, x: torch.Tensor,
          chunk_size: Optional[int], overlap: int, blend: int,
          sequential: bool) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(
            f"tiled {direction.name} expects one video as a 4-D tensor "
            f"[C, T, H, W], got shape {tuple(x.shape)}. Pass the videos of a "
            "batch as separate tensors")
    if x.shape[1] < 1:
        raise ValueError(
            f"tiled {direction.name} got an input with no time steps: shape "
            f"{tuple(x.shape)}")

    group, rank, world_size = data_parallel_layout()
    num_latents = direction.count_latents(x.shape[1])
    if chunk_size is None:
        chunk_size = default_chunk_size(num_latents, world_size)
    plan = plan_chunks(num_latents, chunk_size, overlap, blend)

    # One chunk: every rank computes it. This costs no more time than one
    # rank computing it and needs no communication.
    # NOTE: such a rank skips the shape check in _exchange_shapes, so if
    # another rank's input gives several chunks, that rank waits in the
    # gather until the process group times out.
    parallel = group is not None and len(plan) > 1 and not sequential
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "tiled %s: input %s, %d latents, %s on rank %d of %d, chunks "
            "(processed latents, kept latents): %s",
            direction.name, tuple(x.shape), num_latents,
            "data-parallel" if parallel else "sequential", rank, world_size,
            ", ".join(f"([{c.first}, {c.stop}), [{c.keep_from}, {c.stop}))"
                      for c in plan))

    if not parallel:
        return _run_sequential(direction, vae, x, plan)
    return _run_parallel(direction, vae, x, plan,
                         (chunk_size, overlap, blend), group, rank,
                         world_size)


def tiled_decode(vae, z: torch.Tensor, *, chunk_size: Optional[int] = None,
                 overlap: int = 2, blend: int = 1,
                 sequential: bool = False) -> torch.Tensor:
    """Decode one latent video in temporal chunks spread over the ranks.

    Every rank (``get_state().world_group``) must call
    this with the same shapes and options, because the outputs are gathered
    with collectives. Without ``initialize_usp()`` or on one rank it runs
    locally. Call it inside the same autocast region as Wan's own decode.

    Args:
        vae: a ``Wan2_1_VAE`` or ``Wan2_2_VAE`` (uses ``vae.model.decode`` and
            ``vae.scale``).
        z: latents ``[C, T_lat, H, W]`` of one video.
        chunk_size: core latents per chunk. Default:
            ``ceil(T_lat / world_size)``, one chunk per rank.
        overlap: warm-up latents decoded before each chunk after the first
            (default 2). Their frames are dropped except for ``blend``.
        blend: warm-up latents whose frames are cross-faded with the
            previous chunk (default 1), ``0 <= blend <= overlap - 1``.
        sequential: run every chunk in this process, with no collective. It
            computes the reference for the data-parallel result.

    Returns:
        float32 video ``[3, 1 + 4 (T_lat - 1), H', W']``, not clamped.

    Raises:
        ValueError: ``z`` is not 4-D, or an option is out of range.
        RuntimeError: ranks called it with different shapes or options
            (detected when the plan has more than one chunk).
    """
    return _tile(_DECODE, vae, z, chunk_size, overlap, blend, sequential)


def tiled_encode(vae, video: torch.Tensor, *,
                 chunk_size: Optional[int] = None, overlap: int = 2,
                 blend: int = 1, sequential: bool = False) -> torch.Tensor:
    """Encode one video in temporal chunks spread over the ranks.

    The contract and options are those of ``tiled_decode``, counted in
    latents. Chunk ``[start, stop)`` with ``w`` warm-up latents encodes
    frames ``[4 (start - w), 1 + 4 (stop - 1))`` freshly.

    Args:
        vae: a ``Wan2_1_VAE`` or ``Wan2_2_VAE`` (uses ``vae.model.encode`` and
            ``vae.scale``).
        video: frames ``[3, T, H, W]`` of one video.

    Returns:
        float32 latents ``[C, 1 + (T - 1) // 4, h, w]``. Frames past
        ``1 + 4 (T_lat - 1)`` are dropped, as Wan drops them.
    """
    return _tile(_ENCODE, vae, video, chunk_size, overlap, blend, sequential)
