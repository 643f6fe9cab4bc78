"""Wan's 3-D rotary position embedding in float32 real arithmetic.

``wan.modules.model.rope_apply`` (PyPI ``wan22==2.2.11``) rotates each pair
``(x[2i], x[2i+1])`` of q or k as a complex number, in complex128. Ascend NPUs
run float64 and complex math off their AI cores, so that rope is slow there.
``rope_apply_float32`` computes the same rotation as real float32 arithmetic::

    out[2i]   = x[2i] * cos - x[2i+1] * sin
    out[2i+1] = x[2i] * sin + x[2i+1] * cos

which is ``x * r1 + rotate(x) * r2`` with ``rotate`` mapping each pair
``(a, b)`` to ``(-b, a)`` and ``r1``/``r2`` holding each cos/sin twice. That
is the interleave mode of ``torch_npu.npu_rotary_mul``, which runs it on NPUs
when its layout limits hold.

The angles come from Wan's own ``freqs`` table (complex128). They are turned
into float32 cos/sin tables once per (grid, device) and cached, keyed weakly
on the ``freqs`` tensor.

Error against Wan's float64 rope, measured on CPU (head dim 128, x ~ N(0, 1),
grids 21x30x52, 21x45x80 and 3x1024x4, the last reaching Wan's largest
position): max |difference| 4.8e-7, at most 1.0e-7 of max |x|.
``tests/test_backends_rope.py`` checks the first grid. Wan rounds its float64
result to float32, which alone is up to 6e-8 relative.
"""

import collections
import importlib
from typing import Dict, Tuple

import torch
from torch.utils.weak import WeakTensorKeyDictionary

# npu_rotary_mul's interleave mode (layout BSND, r1/r2 of shape [1, S, 1, D]):
# B * N < 1000 and an even D < 896.
NPU_ROTARY_MAX_BATCH_HEADS = 999
NPU_ROTARY_MAX_HEAD_DIM = 895

# Distinct grids whose tables each freqs tensor keeps, least recent dropped.
TABLES_PER_FREQS = 8

_tables: "WeakTensorKeyDictionary" = WeakTensorKeyDictionary()


def _split_sizes(half_dim: int) -> Tuple[int, int, int]:
    # Wan's split of the D/2 rotation frequencies into frame, height, width.
    return (half_dim - 2 * (half_dim // 3), half_dim // 3, half_dim // 3)


def _build_tables(freqs: torch.Tensor, grid: Tuple[int, int, int],
                  device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    frames, height, width = grid
    half_dim = freqs.size(1)
    if max(grid) > freqs.size(0):
        raise ValueError(
            f"rope grid {grid} is larger than the {freqs.size(0)} positions "
            "of Wan's freqs table")

    # Built on the CPU in complex128, as Wan does, so the device never runs
    # complex math.
    frame_freqs, height_freqs, width_freqs = freqs.detach().cpu().split(
        _split_sizes(half_dim), dim=1)
    rotations = torch.cat([
        frame_freqs[:frames].view(frames, 1, 1, -1).expand(frames, height, width, -1),
        height_freqs[:height].view(1, height, 1, -1).expand(frames, height, width, -1),
        width_freqs[:width].view(1, 1, width, -1).expand(frames, height, width, -1),
    ], dim=-1).reshape(frames * height * width, 1, half_dim)  # [L, 1, D/2]

    # [L, 1, D/2] -> [L, 1, D]: each value twice, once per element of a pair.
    cos = rotations.real.repeat_interleave(2, dim=-1)
    sin = rotations.imag.repeat_interleave(2, dim=-1)
    return (cos.to(device=device, dtype=torch.float32),
            sin.to(device=device, dtype=torch.float32))


def rotation_tables(freqs: torch.Tensor, grid: Tuple[int, int, int],
                    device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return float32 ``cos``, ``sin`` of shape ``[f*h*w, 1, D]`` for a grid.

    Cached per ``freqs`` tensor and (grid, device); a second call returns the
    same tensors.
    """
    per_freqs: Dict = _tables.get(freqs)
    if per_freqs is None:
        per_freqs = collections.OrderedDict()
        _tables[freqs] = per_freqs
    key = (tuple(grid), str(device))
    if key in per_freqs:
        per_freqs.move_to_end(key)
        return per_freqs[key]
    tables = _build_tables(freqs, grid, device)
    per_freqs[key] = tables
    if len(per_freqs) > TABLES_PER_FREQS:
        per_freqs.popitem(last=False)
    return tables


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Map each pair ``(x[2i], x[2i+1])`` of the last dim to ``(-x[2i+1], x[2i])``."""
    pairs = x.unflatten(-1, (-1, 2))  # [..., D] -> [..., D/2, 2]
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def npu_rotary_mul_applies(x: torch.Tensor) -> bool:
    """Return whether ``torch_npu.npu_rotary_mul`` takes one sample of ``x``.

    ``x`` is ``[B, S, N, D]``; each sample is passed as ``[1, S, N, D]``.
    """
    if x.device.type != "npu":
        return False
    num_heads, head_dim = x.size(2), x.size(3)
    return (num_heads <= NPU_ROTARY_MAX_BATCH_HEADS
            and head_dim <= NPU_ROTARY_MAX_HEAD_DIM and head_dim % 2 == 0)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            use_npu: bool) -> torch.Tensor:
    # x: [1, L, N, D]; cos, sin: [L, 1, D] -> [1, L, 1, D], npu_rotary_mul's
    # "1S1D" broadcast for layout BSND.
    cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    if use_npu:
        torch_npu = importlib.import_module("torch_npu")
        return torch_npu.npu_rotary_mul(x, cos, sin, rotary_mode="interleave")
    return x * cos + rotate_pairs(x) * sin


def rope_apply_float32(x: torch.Tensor, grid_sizes: torch.Tensor,
                       freqs: torch.Tensor) -> torch.Tensor:
    """Apply Wan's rope to ``x`` ``[B, S, N, D]`` in float32; a drop-in for ``rope_apply``.

    Like Wan, sample b rotates its first ``f*h*w`` tokens, from
    ``grid_sizes[b] = (f, h, w)``, keeps the tokens after them unchanged and
    returns float32. On an NPU it calls ``torch_npu.npu_rotary_mul`` when
    ``npu_rotary_mul_applies(x)``.
    """
    out = x.to(torch.float32, copy=True)
    use_npu = npu_rotary_mul_applies(out)
    for index, grid in enumerate(grid_sizes.tolist()):
        frames, height, width = grid
        length = frames * height * width
        cos, sin = rotation_tables(freqs, (frames, height, width), out.device)
        sample = out[index:index + 1, :length]  # [1, L, N, D]
        out[index:index + 1, :length] = _rotate(sample.contiguous(), cos, sin, use_npu)
    return out
