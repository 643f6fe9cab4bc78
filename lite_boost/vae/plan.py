"""Temporal chunk plans for the Wan VAE, and its latent-to-frame arithmetic.

Both Wan VAEs (``wan/modules/vae2_1.py`` and ``vae2_2.py`` in PyPI
``wan22==2.2.11``) are causal in time with a temporal stride of 4. Frame 0 is
encoded alone into latent 0, and frames ``[4i - 3, 4i + 1)`` into latent
``i >= 1``. Decoding reverses this: latent 0 gives 1 frame and every later
latent gives 4, so ``n`` latents decode to ``1 + 4 (n - 1)`` frames.

A fresh encode or decode that starts at latent ``k > 0`` treats latent ``k`` as
a first frame (a one-frame image). A chunk after the first therefore runs
``warmup`` latents before its core and drops their output, except the last
``blend`` of them, which are cross-faded with the previous chunk. This module
only computes the plan. It contains no tensor code.
"""

import dataclasses
import math
from typing import List, Optional

TEMPORAL_STRIDE = 4
"""Frames per latent after latent 0, in both Wan2.1 and Wan2.2 VAEs."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One temporal chunk of a plan, in latent indices.

    Attributes:
        index: position of the chunk in the plan.
        start: first latent of the core range ``[start, stop)``.
        stop: end of the core range (exclusive).
        warmup: latents processed before ``start``, so the fresh encode or
            decode covers ``[start - warmup, stop)``.
        blend: latents before ``start`` whose output is kept and cross-faded
            with the previous chunk's output; ``0 <= blend <= warmup``.
    """

    index: int
    start: int
    stop: int
    warmup: int
    blend: int

    @property
    def first(self) -> int:
        """First latent that the fresh encode or decode processes."""
        return self.start - self.warmup

    @property
    def keep_from(self) -> int:
        """First latent whose output this chunk contributes."""
        return self.start - self.blend


def num_decoded_frames(num_latents: int) -> int:
    """Return how many frames a Wan VAE decodes from ``num_latents`` latents."""
    return frame_offset(num_latents)


def num_encoded_latents(num_frames: int) -> int:
    """Return how many latents a Wan VAE encodes from ``num_frames`` frames.

    Frames past ``1 + 4 (n - 1)`` do not fill a latent and are dropped.
    """
    return 1 + (num_frames - 1) // TEMPORAL_STRIDE


def frame_offset(latent: int) -> int:
    """Return the index of the first frame that belongs to ``latent``.

    ``frame_offset(n)`` for ``n`` latents is also the number of frames they
    decode to, so ``[frame_offset(a), frame_offset(b))`` are the frames of
    latents ``[a, b)``.
    """
    if latent == 0:
        return 0
    return TEMPORAL_STRIDE * latent - (TEMPORAL_STRIDE - 1)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}={value!r} is invalid: expected an int, got "
            f"{type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}={value} is invalid: it must be >= {minimum}")


def check_options(chunk_size: Optional[int], overlap: int, blend: int) -> None:
    """Validate tiling options that do not depend on the input length.

    Raises:
        TypeError: an option is not an int (``chunk_size`` may be None).
        ValueError: ``chunk_size < 1``, ``overlap < 0``, ``blend < 0`` or
            ``blend >= overlap`` (``blend`` must be 0 when ``overlap`` is 0).
    """
    if chunk_size is not None:
        _check_int("chunk_size", chunk_size, 1)
    _check_int("overlap", overlap, 0)
    _check_int("blend", blend, 0)
    if blend > max(overlap - 1, 0):
        raise ValueError(
            f"blend={blend} is invalid for overlap={overlap}: valid range is "
            f"0 <= blend <= overlap - 1 = {max(overlap - 1, 0)}, because the "
            "first warm-up latent of a chunk is decoded as a one-frame image "
            "and cannot be blended")


def default_chunk_size(num_latents: int, world_size: int) -> int:
    """Return ``ceil(num_latents / world_size)``: one chunk per rank at most."""
    _check_int("num_latents", num_latents, 1)
    _check_int("world_size", world_size, 1)
    return math.ceil(num_latents / world_size)


def plan_chunks(num_latents: int, chunk_size: int, overlap: int = 2,
                blend: int = 1) -> List[Chunk]:
    """Split ``num_latents`` latents into temporal chunks.

    The core ranges partition ``[0, num_latents)`` in order, each of
    ``chunk_size`` latents except a shorter last one. A chunk that starts at
    ``start > 0`` gets ``warmup = min(overlap, start)`` latents before its
    core and keeps the output of ``min(blend, warmup)`` of them for blending.

    Args:
        num_latents: latent frames of the input, >= 1.
        chunk_size: core latents per chunk, >= 1.
        overlap: warm-up latents before each chunk after the first. It must be
            >= 1 when there is more than one chunk, because without warm-up
            latent ``start`` would be decoded as a one-frame image and the
            frame count would be wrong.
        blend: warm-up latents whose output is blended with the previous
            chunk, ``0 <= blend <= overlap - 1``.

    Returns:
        The chunks in order of ``start``.

    Raises:
        TypeError: an argument is not an int.
        ValueError: an argument is out of its range (the message names the
            value and the valid range).

    Example::

        >>> [(c.start, c.stop, c.warmup, c.blend) for c in plan_chunks(5, 2, 2, 1)]
        [(0, 2, 0, 0), (2, 4, 2, 1), (4, 5, 2, 1)]
    """
    _check_int("num_latents", num_latents, 1)
    check_options(chunk_size, overlap, blend)
    _check_int("chunk_size", chunk_size, 1)

    num_chunks = math.ceil(num_latents / chunk_size)
    if num_chunks > 1 and overlap < 1:
        raise ValueError(
            f"overlap={overlap} is invalid with {num_chunks} chunks "
            f"(num_latents={num_latents}, chunk_size={chunk_size}): a chunk "
            "after the first needs overlap >= 1 warm-up latent, because a "
            "fresh decode treats its first latent as a one-frame image. Use "
            f"overlap >= 1 or chunk_size >= {num_latents}")

    chunks = []
    for index in range(num_chunks):
        start = index * chunk_size
        stop = min(start + chunk_size, num_latents)
        warmup = min(overlap, start)
        chunks.append(Chunk(index=index, start=start, stop=stop,
                            warmup=warmup, blend=min(blend, warmup)))
    return chunks


def chunks_of_rank(plan: List[Chunk], rank: int,
                   world_size: int) -> List[Chunk]:
    """Return the chunks that ``rank`` runs: chunk ``i`` goes to rank ``i % world_size``.

    Chunk 0 always goes to rank 0, and ranks past ``len(plan) - 1`` get none.
    """
    return plan[rank::world_size]
