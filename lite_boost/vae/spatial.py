"""Spatial parallelism of the Wan VAEs: split each frame into row slabs.

``spatial_decode`` and ``spatial_encode`` give rank ``i`` of the VAE's group
(``temporal.data_parallel_layout()``) a horizontal slab of the input. They
run Wan's own ``vae.model.decode`` / ``encode`` on it while
``spatial_layers.halo_forwards`` makes every layer that mixes rows exchange
them with the neighbouring slabs, and gather the output slabs on every rank. The result equals Wan's untiled encode or decode up to
float rounding, because every output position is computed from the same
inputs as in the untiled run, and each position's time cache stays on the
rank that owns it.

Row split (``split_rows``): the inner slab boundaries are multiples of a unit.
For decode the unit is one latent row, and latent row ``r`` becomes output
rows ``[f r, f (r + 1))``, with ``f`` = 8 for Wan2.1 and 16 for Wan2.2. For
encode the unit is the encoder's total downsampling factor (8 for Wan2.1, 16
for Wan2.2 with its 2x2 patchify). Every boundary then stays on an even row
at each stride-2 layer, which keeps ``Resample``'s downsampling and
``AvgDown3D`` aligned. A frame with fewer units than ranks is split over as
many ranks as it has units. The others compute nothing and only enter the
collectives that check the inputs and gather the result.
"""

import dataclasses
import logging
from typing import List, Optional

import torch
import torch.distributed as dist

from ..ops.collectives import all_gather_single
from .halo import RowExchange
from .spatial_layers import halo_forwards
from .temporal import data_parallel_layout

logger = logging.getLogger(__name__)

# Codes of the two directions in the input check, so that ranks that call
# encode and decode at once fail instead of waiting for each other.
_DIRECTION_CODES = {"decode": 0, "encode": 1}


@dataclasses.dataclass(frozen=True)
class Slab:
    """Rows ``[start, stop)`` of the input that one rank computes."""

    start: int
    stop: int


def split_rows(num_rows: int, unit: int, world_size: int) -> List[Slab]:
    """Split rows ``[0, num_rows)`` into contiguous slabs, one per active rank.

    The rows form ``max(1, num_rows // unit)`` whole units, and the rows past
    the last whole unit join the last slab. The units are spread as evenly as
    possible over ``min(world_size, units)`` slabs, the first slabs taking one
    more when they do not divide evenly. Every inner boundary is thus a
    multiple of ``unit``.

    Example::

        >>> [(s.start, s.stop) for s in split_rows(5, 1, 2)]
        [(0, 3), (3, 5)]
        >>> [(s.start, s.stop) for s in split_rows(44, 8, 4)]
        [(0, 16), (16, 24), (24, 32), (32, 44)]
    """
    for name, value in (("num_rows", num_rows), ("unit", unit),
                        ("world_size", world_size)):
        if value < 1:
            raise ValueError(f"split_rows: {name}={value} is invalid: it "
                             "must be >= 1")
    num_units = max(1, num_rows // unit)
    num_slabs = min(world_size, num_units)
    base, extra = divmod(num_units, num_slabs)

    slabs = []
    start = 0
    for index in range(num_slabs):
        stop = start + unit * (base + (1 if index < extra else 0))
        slabs.append(Slab(start, stop))
        start = stop
    slabs[-1] = Slab(slabs[-1].start, num_rows)
    return slabs


def _is_wan2_2(vae) -> bool:
    from wan.modules import vae2_2

    return isinstance(vae, vae2_2.Wan2_2_VAE)


def encoder_downsampling(vae) -> int:
    """Return how many pixel rows of ``vae``'s input make one latent row.

    2 per downsampling ``Resample`` of the encoder, times 2 for the 2x2
    patchify that Wan2.2's ``WanVAE_.encode`` applies first.
    """
    factor = 1
    for module in vae.model.encoder.modules():
        if getattr(module, "mode", None) in ("downsample2d", "downsample3d"):
            factor *= 2
    return factor * (2 if _is_wan2_2(vae) else 1)


def _check_same_input(direction: str, x: torch.Tensor,
                      group: dist.ProcessGroup, world_size: int) -> None:
    """Raise on every rank when the ranks passed different input shapes.

    Ranks with other shapes would split other rows and wait for each other's
    halo rows until the process group times out.
    """
    row = torch.tensor([_DIRECTION_CODES[direction], *x.shape],
                       dtype=torch.int64, device=x.device)
    # gloo needs an output of world_size * numel elements with the input's
    # number of dimensions, so gather flat and view as [world_size, numel].
    table = row.new_empty(world_size * row.numel())
    all_gather_single(table, row, group,
                      issuer=f"spatial {direction} (input check)")
    rows = table.view(world_size, row.numel()).tolist()
    if any(other != rows[0] for other in rows):
        names = {code: name for name, code in _DIRECTION_CODES.items()}
        per_rank = [(names[r[0]], tuple(r[1:])) for r in rows]
        raise RuntimeError(
            f"spatial VAE {direction} was called with different inputs on "
            f"different ranks: per-rank (method, input shape) = {per_rank}. "
            "Every rank of the group must call it with the same shapes")


def _gather_slabs(direction: str, local: Optional[torch.Tensor],
                  device: torch.device, group: dist.ProcessGroup,
                  world_size: int) -> torch.Tensor:
    """Concatenate every rank's output slab ``[C, T, h, W]`` along the rows.

    Ranks without a slab pass None and still enter both gathers. The slab
    heights may differ, so the shapes are gathered first and the data is
    padded to the largest slab.
    """
    shape = tuple(local.shape) if local is not None else (0, 0, 0, 0)
    row = torch.tensor(shape, dtype=torch.int64, device=device)
    table = row.new_empty(world_size * 4)
    all_gather_single(table, row, group,
                      issuer=f"spatial {direction} (output shapes)")
    shapes = [tuple(s) for s in table.view(world_size, 4).tolist()]
    # Rank 0 always computes the top slab.
    channels, frames, _, width = shapes[0]
    heights = [s[2] for s in shapes]
    slab_numel = channels * frames * width * max(heights)

    if (local is not None and local.numel() == slab_numel
            and local.dtype == torch.float32):
        # The slab already has the padded size: send it as it is, because a
        # padded copy would be one more slab alive at the memory peak.
        send = local.reshape(-1).contiguous()
    else:
        send = torch.zeros(slab_numel, dtype=torch.float32, device=device)
        if local is not None:
            send[:local.numel()] = local.reshape(-1)
    received = send.new_empty(world_size * slab_numel)
    all_gather_single(received, send, group, issuer=f"spatial {direction}")

    # received: [world_size * slab_numel]; rank r's slab is a flattened
    # [C, T, h_r, W] at r * slab_numel.
    slabs = []
    for rank, height in enumerate(heights):
        if height == 0:
            continue
        position = rank * slab_numel
        numel = channels * frames * height * width
        slabs.append(received[position:position + numel].view(
            channels, frames, height, width))
    return torch.cat(slabs, dim=2)


def _check_height(direction: str, vae, x: torch.Tensor, unit: int) -> None:
    if direction == "encode" and _is_wan2_2(vae) and x.shape[2] % unit != 0:
        # Wan's own encoder fails on such heights too, but split over ranks
        # only the rank with the last rows would fail, and the others would
        # wait for its halo rows.
        raise ValueError(
            f"spatial encode: height {x.shape[2]} of video shape "
            f"{tuple(x.shape)} is invalid for Wan2_2_VAE: it must be a "
            f"multiple of {unit} (2x2 patchify, then three 2x downsamplings)")


def _run(direction: str, vae, x: torch.Tensor, unit: int) -> torch.Tensor:
    """Run one direction on ``x`` ``[C, T, H, W]``, split over the ranks by rows."""
    if x.dim() != 4:
        raise ValueError(
            f"spatial {direction} expects one video as a 4-D tensor "
            f"[C, T, H, W], got shape {tuple(x.shape)}. Pass the videos of a "
            "batch as separate tensors")
    run_model = vae.model.decode if direction == "decode" else vae.model.encode

    group, rank, world_size = data_parallel_layout()
    if group is not None:
        _check_same_input(direction, x, group, world_size)
    _check_height(direction, vae, x, unit)
    if group is None:
        # [C, T, H, W] -> [1, C, T, H, W] -> Wan's untiled result.
        return run_model(x.unsqueeze(0), vae.scale).squeeze(0).float()

    slabs = split_rows(x.shape[2], unit, world_size)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("spatial %s: input %s, rows per rank %s", direction,
                     tuple(x.shape), [(s.start, s.stop) for s in slabs])

    local = None
    if rank < len(slabs):
        slab = slabs[rank]
        exchange = RowExchange(group, rank, len(slabs))
        with halo_forwards(vae.model, exchange, f"spatial {direction}"):
            rows = x[:, :, slab.start:slab.stop].unsqueeze(0)
            local = run_model(rows, vae.scale).squeeze(0).float()
    return _gather_slabs(direction, local, x.device, group, world_size)


def spatial_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Decode one latent video with its rows split over the ranks.

    Every rank of the VAE's group (``temporal.data_parallel_layout()``) must
    call this with the same shape, because the ranks exchange rows. Without
    ``initialize_usp()`` or on one rank it runs Wan's own decode. Call it
    inside the same autocast region as Wan's own decode.

    Args:
        vae: a ``Wan2_1_VAE`` or ``Wan2_2_VAE``.
        z: latents ``[C, T_lat, H, W]`` of one video. Any height works; with
            fewer latent rows than ranks, the ranks past the row count idle.

    Returns:
        float32 video ``[3, 1 + 4 (T_lat - 1), s H, s W]`` with ``s`` = 8
        (Wan2.1) or 16 (Wan2.2), on every rank, not clamped.

    Raises:
        ValueError: ``z`` is not 4-D.
        RuntimeError: ranks passed different shapes.
        NotImplementedError: the model has a layer this mode cannot split.
    """
    return _run("decode", vae, z, unit=1)


def spatial_encode(vae, video: torch.Tensor) -> torch.Tensor:
    """Encode one video with its rows split over the ranks.

    The contract is that of ``spatial_decode``. Slab boundaries fall on
    multiples of the encoder's downsampling factor (8 pixel rows for Wan2.1,
    16 for Wan2.2), so a frame shorter than ranks times that factor uses
    fewer ranks.

    Args:
        vae: a ``Wan2_1_VAE`` or ``Wan2_2_VAE``.
        video: frames ``[3, T, H, W]`` of one video. For Wan2.2, ``H`` must
            be a multiple of 16, as Wan's own encoder requires.

    Returns:
        float32 latents ``[C, 1 + (T - 1) // 4, h, w]`` on every rank.

    Raises:
        ValueError: ``video`` is not 4-D, or its height does not fit Wan2.2.
    """
    return _run("encode", vae, video, unit=encoder_downsampling(vae))
