"""Ring attention over the ring group, and rope for a ring rank's block.

After the Ulysses all_to_all, each rank of a ring group holds one block of
the sequence, ``[B, S/R, H/U, D]`` for ring index r, covering tokens
``[r * S/R, (r + 1) * S/R)``. ``ring_attention`` passes the key/value blocks
around the ring in R - 1 steps. At each step it attends the local queries to
the block it holds and merges the partial result with the log-sum-exp (LSE)
of the attention scores:

    lse = logaddexp(lse_a, lse_b)
    out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)

which equals attention over the concatenated keys. Keys past ``k_lens`` are
masked in every step; a block with no valid key for a batch element has
LSE -inf and contributes nothing. The next block's transfer runs while the
current one is computed.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist

from ..parallel.state import get_state, ring_rank
from .collectives import run_collective


def _math_attention_with_lse(q, k, v, key_valid, scale):
    # q: [B, H, Lq, D], k/v: [B, H, Lk, D], key_valid: [B, Lk].
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, H, Lq]
    weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    return torch.matmul(weights, v.float()), lse


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       key_valid: torch.Tensor,
                       scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention and its LSE per query, in layout ``[B, H, L, D]``.

    Returns ``(out [B, H, Lq, D], lse [B, H, Lq])`` in float32. On CPU this is
    torch's flash-attention-for-CPU kernel, which returns the LSE itself;
    elsewhere the scores are computed explicitly.
    NOTE: the CUDA and NPU fused kernels that return the LSE
    (flash_attn with return_attn_probs, npu_fusion_attention's softmax
    statistics) are not wired in yet, so those devices take the explicit path.
    """
    if q.device.type == "cpu":
        additive = torch.zeros(key_valid.shape, dtype=q.dtype, device=q.device)
        additive = additive.masked_fill(~key_valid, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=additive[:, None, None, :], scale=scale)
        out, lse = out.float(), lse.float()
    else:
        out, lse = _math_attention_with_lse(q, k, v, key_valid, scale)

    # The CPU kernel reports LSE 0 for a row whose keys are all masked.
    has_key = key_valid.any(dim=-1)[:, None, None]  # [B, 1, 1]
    lse = torch.where(has_key, lse, torch.full_like(lse, float("-inf")))
    out = torch.where(has_key[..., None], out, torch.zeros_like(out))
    return out, lse


def merge_partial_attention(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions over disjoint key sets (see module doc)."""
    lse = torch.logaddexp(lse_a, lse_b)
    # Rows with no valid key in either part keep LSE -inf and weight 0.
    empty = torch.isneginf(lse)
    safe = torch.where(empty, torch.zeros_like(lse), lse)
    weight_a = torch.where(empty, torch.zeros_like(lse), torch.exp(lse_a - safe))
    weight_b = torch.where(empty, torch.zeros_like(lse), torch.exp(lse_b - safe))
    return out_a * weight_a[..., None] + out_b * weight_b[..., None], lse


def _start_ring_transfer(send: torch.Tensor, receive: torch.Tensor,
                         group: dist.ProcessGroup, rank: int, size: int):
    next_rank = dist.get_global_rank(group, (rank + 1) % size)
    previous_rank = dist.get_global_rank(group, (rank - 1) % size)
    operations = [dist.P2POp(dist.isend, send, next_rank, group),
                  dist.P2POp(dist.irecv, receive, previous_rank, group)]
    return run_collective(dist.batch_isend_irecv, "ring_attention", operations)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   k_lens: Optional[torch.Tensor] = None,
                   softmax_scale: Optional[float] = None,
                   q_scale: Optional[float] = None,
                   causal: bool = False,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Attention of this ring rank's queries over every rank's keys.

    Takes and returns Wan's layout: q/k/v ``[B, S/R, N, D]`` -> ``[B, S/R, N, D]``
    in q's dtype. ``k_lens`` are global key lengths, as Wan passes them.
    """
    if causal:
        raise NotImplementedError("ring_attention supports only causal=False")
    state = get_state()
    group, size = state.ring_group, state.ring_degree
    rank = ring_rank()
    out_dtype = q.dtype
    block = k.size(1)
    scale = softmax_scale if softmax_scale is not None else q.size(-1) ** -0.5
    if q_scale is not None:
        q = q * q_scale

    # [B, L, N, D] -> [B, N, L, D]; k and v travel together, [2, B, L, N, D].
    query = q.transpose(1, 2).to(k.dtype)
    key_value = torch.stack([k, v]).contiguous()
    lengths = None if k_lens is None else k_lens.to(device=q.device, dtype=torch.long)

    out = lse = None
    for step in range(size):
        source = (rank - step) % size
        transfer = None
        if step < size - 1:
            received = torch.empty_like(key_value)
            transfer = _start_ring_transfer(key_value, received, group, rank, size)

        key_index = source * block + torch.arange(block, device=q.device)
        if lengths is None:
            key_valid = torch.ones(q.size(0), block, dtype=torch.bool, device=q.device)
        else:
            key_valid = key_index[None, :] < lengths[:, None]
        block_out, block_lse = attention_with_lse(
            query, key_value[0].transpose(1, 2), key_value[1].transpose(1, 2),
            key_valid, scale)
        if out is None:
            out, lse = block_out, block_lse
        else:
            out, lse = merge_partial_attention(out, lse, block_out, block_lse)

        if transfer is not None:
            for work in transfer:
                run_collective(work.wait, "ring_attention (waiting for the next block)")
            key_value = received

    return out.transpose(1, 2).to(out_dtype)  # [B, N, L, D] -> [B, L, N, D]


def rope_apply_ring(x: torch.Tensor, grid_sizes: torch.Tensor,
                    freqs: torch.Tensor) -> torch.Tensor:
    """Wan's ``rope_apply`` for the block of tokens this ring rank holds.

    ``x`` is ``[B, S/R, N, D]``, tokens ``[r * S/R, (r + 1) * S/R)`` of ring
    index r. The rotation of each token is Wan's own, computed the same way
    in float64/complex128, so the result equals Wan's rope on the whole
    sequence, sliced. Tokens past ``f * h * w`` are left unchanged, as Wan
    does.
    """
    length = x.size(1)
    offset = ring_rank() * length
    heads, half = x.size(2), x.size(3) // 2
    freqs = freqs.split([half - 2 * (half // 3), half // 3, half // 3], dim=1)

    output = []
    for index, (frames, height, width) in enumerate(grid_sizes.tolist()):
        tokens = frames * height * width
        count = max(0, min(offset + length, tokens) - offset)
        if count == 0:
            output.append(x[index].to(torch.float64))
            continue
        rotation = torch.cat([
            freqs[0][:frames].view(frames, 1, 1, -1).expand(frames, height, width, -1),
            freqs[1][:height].view(1, height, 1, -1).expand(frames, height, width, -1),
            freqs[2][:width].view(1, 1, width, -1).expand(frames, height, width, -1),
        ], dim=-1).reshape(tokens, 1, -1)[offset:offset + count]
        rotated = torch.view_as_complex(
            x[index, :count].to(torch.float64).reshape(count, heads, -1, 2))
        rotated = torch.view_as_real(rotated * rotation).flatten(2)
        output.append(torch.cat([rotated, x[index, count:]]))
    return torch.stack(output).float()
