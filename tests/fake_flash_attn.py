"""A CPU stand-in for ``flash_attn.flash_attn_varlen_func`` (flash-attn 2.x).

Written from that function's docstring (flash_attn/flash_attn_interface.py in
Dao-AILab/flash-attention), not from its kernels:

- q ``(total_q, nheads, headdim)``, k and v ``(total_k, nheads_k, headdim)``,
  with nheads divisible by nheads_k; fp16 or bf16 only; head dim at most 256.
- ``cu_seqlens_q``/``cu_seqlens_k``: ``(batch_size + 1,)`` int32 cumulative
  lengths, starting at 0, used to index into the packed tensors.
- ``max_seqlen_q``/``max_seqlen_k``: the longest sequence of the batch.
- ``softmax_scale`` defaults to ``1 / sqrt(headdim)``.
- ``causal=True`` aligns the mask to the bottom-right corner.

``KernelContractError`` marks calls that flash-attn rejects (a dtype other
than fp16/bf16, int64 cu_seqlens, mixed dtypes, head dim above 256).
``SilentTrapError`` marks calls it takes without checking the values and
then reads the wrong rows: per-batch lengths given as cu_seqlens, a last
cumulative length that is not the packed token count (padding left in), a
max_seqlen below the longest sequence. They raise only with ``strict=True``.
Dropout, local windows, softcapping and ALiBi raise NotImplementedError.
"""

import types

import torch

from fake_torch_npu import KernelContractError, SilentTrapError, record_call

HALF_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


def _check_cumulative(name: str, cu_seqlens: torch.Tensor, total: int,
                      strict: bool) -> list:
    if cu_seqlens.dtype != torch.int32:
        raise KernelContractError(
            f"flash_attn_varlen_func: {name} must have dtype int32, got "
            f"{cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise KernelContractError(
            f"flash_attn_varlen_func: {name} must be 1-D with batch_size + 1 "
            f"values, got shape {tuple(cu_seqlens.shape)}")
    values = cu_seqlens.tolist()
    cumulative = values[0] == 0 and all(b >= a for a, b in zip(values, values[1:]))
    if strict and not cumulative:
        raise SilentTrapError(
            f"flash_attn_varlen_func: {name}={values} is not cumulative from "
            "0; the kernel would index the packed tokens with it anyway")
    if strict and values[-1] != total:
        raise SilentTrapError(
            f"flash_attn_varlen_func: {name} ends at {values[-1]} but "
            f"{total} tokens are packed; padding left in the packed tensor "
            "shifts every later sequence")
    return values


def make_fake_flash_attn(strict: bool = True) -> types.ModuleType:
    """Return a module to install as ``flash_attn``; see the module docstring."""
    module = types.ModuleType("flash_attn")
    module.__version__ = "2.0.0+fake"
    module.calls = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k,
                               max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False,
                               window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False,
                               return_attn_probs=False, block_table=None):
        kernel = "flash_attn_varlen_func"
        record_call(module.calls, kernel, (q, k, v),
                dict(cu_seqlens_q=cu_seqlens_q.tolist(),
                     cu_seqlens_k=cu_seqlens_k.tolist(),
                     cu_seqlens_dtypes=(cu_seqlens_q.dtype, cu_seqlens_k.dtype),
                     max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                     softmax_scale=softmax_scale, causal=causal))
        unmodelled = {"dropout_p": dropout_p != 0.0,
                      "window_size": tuple(window_size) != (-1, -1),
                      "softcap": softcap != 0.0, "alibi_slopes": alibi_slopes is not None,
                      "return_attn_probs": return_attn_probs,
                      "block_table": block_table is not None}
        for name, is_set in unmodelled.items():
            if is_set:
                raise NotImplementedError(f"fake {kernel}: {name} is not modelled")

        if q.dtype not in HALF_DTYPES:
            raise KernelContractError(
                f"{kernel}: FlashAttention takes only fp16 and bf16, got {q.dtype}")
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise KernelContractError(f"{kernel}: q, k and v must share one dtype")
        if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape:
            raise KernelContractError(
                f"{kernel}: q must be (total_q, nheads, headdim) and k, v "
                f"(total_k, nheads_k, headdim); got {tuple(q.shape)}, "
                f"{tuple(k.shape)}, {tuple(v.shape)}")
        head_dim = q.size(-1)
        if head_dim > MAX_HEAD_DIM or k.size(-1) != head_dim:
            raise KernelContractError(
                f"{kernel}: head dim {head_dim} (at most {MAX_HEAD_DIM}, same for q and k)")
        if q.size(1) % k.size(1):
            raise KernelContractError(f"{kernel}: nheads must be divisible by nheads_k")

        q_bounds = _check_cumulative("cu_seqlens_q", cu_seqlens_q, q.size(0), strict)
        k_bounds = _check_cumulative("cu_seqlens_k", cu_seqlens_k, k.size(0), strict)
        if len(q_bounds) != len(k_bounds):
            raise KernelContractError(f"{kernel}: cu_seqlens_q and cu_seqlens_k differ in batch size")
        q_lengths = [b - a for a, b in zip(q_bounds, q_bounds[1:])]
        k_lengths = [b - a for a, b in zip(k_bounds, k_bounds[1:])]
        if strict and (max(q_lengths) > max_seqlen_q or max(k_lengths) > max_seqlen_k):
            raise SilentTrapError(
                f"{kernel}: max_seqlen_q={max_seqlen_q}, max_seqlen_k="
                f"{max_seqlen_k} are below the longest sequences "
                f"({max(q_lengths)}, {max(k_lengths)}); the kernel would skip keys")

        scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
        group = q.size(1) // k.size(1)
        out = torch.empty_like(q)
        for b in range(len(q_lengths)):
            q_b = q[q_bounds[b]:q_bounds[b + 1]].float()  # [Lq, N, D]
            k_b = k[k_bounds[b]:k_bounds[b + 1]].float().repeat_interleave(group, dim=1)
            v_b = v[k_bounds[b]:k_bounds[b + 1]].float().repeat_interleave(group, dim=1)
            scores = torch.einsum("qnd,knd->nqk", q_b, k_b) * scale
            if causal:
                # Bottom-right aligned: query i attends to keys j <= i + Lk - Lq.
                offset = k_b.size(0) - q_b.size(0)
                allowed = torch.ones(q_b.size(0), k_b.size(0), dtype=torch.bool).tril(offset)
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = scores.softmax(dim=-1).nan_to_num(0.0)
            out[q_bounds[b]:q_bounds[b + 1]] = torch.einsum(
                "nqk,knd->qnd", weights, v_b).to(q.dtype)
        return out

    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module
