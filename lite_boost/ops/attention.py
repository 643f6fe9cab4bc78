"""Attention kernels that replace Wan's ``flash_attention`` in rewritten graphs.

Every kernel takes Wan's layout, q ``[B, Lq, N, D]`` and k/v ``[B, Lk, N, D]``,
and Wan's ``k_lens``: keys at index ``k_lens[b]`` and later are padding and get
no attention weight. They return ``[B, Lq, N, D]`` in q's dtype.
"""

import importlib
import importlib.util
from typing import Callable, Optional

import torch
import torch.nn.functional as F

HALF_DTYPES = (torch.float16, torch.bfloat16)


def key_padding_mask(k_lens: Optional[torch.Tensor], num_keys: int,
                     device: torch.device) -> Optional[torch.Tensor]:
    """Return SDPA's boolean mask ``[B, 1, 1, Lk]`` (True = attend), or None.

    None when no key is padding, so SDPA can take its unmasked fast path.
    """
    if k_lens is None:
        return None
    k_lens = k_lens.to(device=device, dtype=torch.long)
    if bool((k_lens >= num_keys).all()):
        return None
    key_index = torch.arange(num_keys, device=device)
    attend = key_index[None, :] < k_lens[:, None]  # [B, Lk]
    return attend[:, None, None, :]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   k_lens: Optional[torch.Tensor] = None,
                   softmax_scale: Optional[float] = None,
                   q_scale: Optional[float] = None,
                   causal: bool = False,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Attention through ``torch.nn.functional.scaled_dot_product_attention``.

    On CUDA, inputs that are not fp16/bf16 are cast to ``dtype`` first, as
    Wan's ``flash_attention`` does. Elsewhere the kernel computes in q's dtype
    (fp32 stays fp32 on CPU). k and v are cast to the compute dtype too,
    because Wan hands over fp32 q and k (rope's output) next to a bf16 v under
    autocast. The output has q's dtype.
    """
    out_dtype = q.dtype
    compute_dtype = q.dtype
    if q.is_cuda and dtype is not None and q.dtype not in HALF_DTYPES:
        compute_dtype = dtype
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    if q_scale is not None:
        q = q * q_scale
    mask = key_padding_mask(k_lens, k.size(1), k.device)
    # [B, L, N, D] -> [B, N, L, D], SDPA's layout.
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).to(out_dtype)  # [B, N, Lq, D] -> [B, Lq, N, D]


def flash_attn_varlen_attention(q: torch.Tensor, k: torch.Tensor,
                                v: torch.Tensor,
                                k_lens: Optional[torch.Tensor] = None,
                                softmax_scale: Optional[float] = None,
                                q_scale: Optional[float] = None,
                                causal: bool = False,
                                dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Attention through ``flash_attn.flash_attn_varlen_func`` (CUDA only).

    Padded keys are dropped before the call and ``k_lens`` becomes the
    cumulative key lengths. flash-attn computes in fp16/bf16: inputs in another
    dtype are cast to ``dtype`` and the output is cast back to q's dtype.
    """
    from flash_attn import flash_attn_varlen_func

    batch, num_queries, num_keys = q.size(0), q.size(1), k.size(1)
    out_dtype = q.dtype
    if q_scale is not None:
        q = q * q_scale

    def to_half(t):
        return t if t.dtype in HALF_DTYPES else t.to(dtype)

    if k_lens is None:
        k_lens = torch.full((batch,), num_keys, dtype=torch.int32)
    k_lens = k_lens.to(device=q.device, dtype=torch.int32)
    q_lens = torch.full((batch,), num_queries, dtype=torch.int32, device=q.device)

    # [B, L, N, D] -> [total tokens, N, D], without the padded keys.
    q_packed = to_half(q.flatten(0, 1))
    k_packed = to_half(torch.cat([k_b[:n] for k_b, n in zip(k, k_lens.tolist())]))
    v_packed = to_half(torch.cat([v_b[:n] for v_b, n in zip(v, k_lens.tolist())]))
    zero = k_lens.new_zeros(1)
    cu_seqlens_q = torch.cat([zero, q_lens.cumsum(0, dtype=torch.int32)])
    cu_seqlens_k = torch.cat([zero, k_lens.cumsum(0, dtype=torch.int32)])

    out = flash_attn_varlen_func(
        q_packed, k_packed, v_packed,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=num_queries, max_seqlen_k=int(k_lens.max()),
        softmax_scale=softmax_scale, causal=causal)
    return out.unflatten(0, (batch, num_queries)).to(out_dtype)


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def select_attention_kernel(device_type: str) -> Callable:
    """Pick the kernel for a device type: "cpu", "cuda" or "npu".

    CUDA takes flash-attn's varlen kernel when ``flash_attn`` is importable and
    SDPA otherwise; CPU takes SDPA.
    """
    if device_type == "cuda" and flash_attn_available():
        return flash_attn_varlen_attention
    if device_type in ("cpu", "cuda"):
        return sdpa_attention
    if device_type == "npu":
        # NOTE: SDPA runs on torch_npu too, but the fused NPU kernels
        # (npu_fused_infer_attention_score) are not wired in yet.
        return sdpa_attention
    raise ValueError(
        f"device type {device_type!r} has no attention kernel; valid choices: "
        "cpu, cuda, npu")
