"""Attention kernels for Ascend NPUs, through torch_npu's fused operators.

torch_npu is imported when a kernel runs, never when this module is imported,
so lite_boost imports on hosts without it (importing torch_npu without the
CANN toolkit fails).

Both kernels follow the torch_npu operator reference (Ascend op-plugin docs,
``torch_npu-npu_fused_infer_attention_score.md`` and
``torch_npu-npu_fusion_attention.md``):

- ``npu_fused_infer_attention``: ``npu_fused_infer_attention_score``, the
  inference kernel. Layout BSND, which is Wan's own ``[B, S, N, D]``. In this
  layout ``actual_seq_lengths_kv`` contains one key length per batch, not
  cumulative sums. The kernel takes only fp16/bf16 and rejects non-contiguous
  tensors. It needs a head dim that is a multiple of 16 and at most 512, and
  at most 256 heads.
- ``npu_fusion_attention_varlen``: ``npu_fusion_attention`` in layout TND,
  the fallback for other head dims (up to 768). The padded keys are dropped
  and both ``actual_seq_qlen`` and ``actual_seq_kvlen`` hold cumulative sums.
  The kernel honours those lists only in layout TND: with BNSD and the other
  layouts it ignores them and attends to the padding.

Both kernels default to ``scale=1.0``, so the scale is always passed
(``head_dim ** -0.5`` unless Wan's call sets ``softmax_scale``). No mask is
passed, because the lengths cover Wan's key padding. A torch_npu mask would
mean the opposite of SDPA's (True masks a position out).
"""

import functools
import importlib
import logging
from typing import List, Optional

import torch

from .attention import HALF_DTYPES, pack_batch

logger = logging.getLogger(__name__)

FUSED_INFER_HEAD_DIM_MULTIPLE = 16
FUSED_INFER_MAX_HEAD_DIM = 512
FUSION_MAX_HEAD_DIM = 768
# Both kernels accept at most 256 query heads.
MAX_HEADS = 256
# npu_fusion_attention in layout TND: at most 1024 sequences per call.
FUSION_VARLEN_MAX_BATCH = 1024


def fused_infer_unsupported_reason(head_dim: int) -> Optional[str]:
    """Return why npu_fused_infer_attention_score cannot take ``head_dim``, or None."""
    if head_dim % FUSED_INFER_HEAD_DIM_MULTIPLE != 0:
        return (f"head_dim {head_dim} is not a multiple of "
                f"{FUSED_INFER_HEAD_DIM_MULTIPLE}")
    if head_dim > FUSED_INFER_MAX_HEAD_DIM:
        return f"head_dim {head_dim} is above {FUSED_INFER_MAX_HEAD_DIM}"
    return None


def fusion_attention_unsupported_reason(head_dim: int) -> Optional[str]:
    """Return why npu_fusion_attention cannot take ``head_dim``, or None."""
    if not 1 <= head_dim <= FUSION_MAX_HEAD_DIM:
        return f"head_dim {head_dim} is outside 1..{FUSION_MAX_HEAD_DIM}"
    return None


@functools.lru_cache(maxsize=1)
def fused_infer_scale_keyword() -> str:
    """Return the name of npu_fused_infer_attention_score's scale argument.

    The torch_npu 7.x reference names it ``scale``; the 6.0.RC3 and 6.0.0
    references name it ``scale_value``. The operator schema that the installed
    torch_npu registers under ``torch.ops.npu`` names the one it takes.
    """
    try:
        schema = torch.ops.npu.npu_fused_infer_attention_score.default._schema
    except (AttributeError, RuntimeError):
        return "scale"
    names = {argument.name for argument in schema.arguments}
    return "scale_value" if "scale_value" in names else "scale"


def _import_torch_npu():
    return importlib.import_module("torch_npu")


def _check_heads(kernel: str, num_heads: int) -> None:
    if num_heads > MAX_HEADS:
        raise ValueError(
            f"{kernel}: {num_heads} heads is above the kernel's limit of "
            f"{MAX_HEADS}; use sdpa_attention")


def _per_batch_key_lengths(k_lens: Optional[torch.Tensor],
                           num_keys: int) -> Optional[List[int]]:
    """Return ``k_lens`` as a list of ints for BSND, or None when no key is padding."""
    if k_lens is None:
        return None
    lengths = k_lens.clamp(max=num_keys).tolist()
    if all(length == num_keys for length in lengths):
        return None
    return lengths


def npu_fused_infer_attention(q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor,
                              k_lens: Optional[torch.Tensor] = None,
                              softmax_scale: Optional[float] = None,
                              q_scale: Optional[float] = None,
                              causal: bool = False,
                              dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Attention through ``torch_npu.npu_fused_infer_attention_score`` in layout BSND.

    Inputs that are not fp16/bf16 are cast to ``dtype``, as Wan's
    ``flash_attention`` does. The output is cast back to q's dtype.

    Raises:
        ValueError: the head dim or head count is outside the kernel's limits,
            or ``dtype`` is not fp16/bf16.
        NotImplementedError: ``causal=True`` (Wan's DiT never passes it).
    """
    if causal:
        raise NotImplementedError(
            "npu_fused_infer_attention supports causal=False only")
    batch, num_queries, num_heads, head_dim = q.shape
    reason = fused_infer_unsupported_reason(head_dim)
    if reason is not None:
        raise ValueError(
            f"npu_fused_infer_attention_score: {reason}; use "
            "npu_fusion_attention_varlen")
    _check_heads("npu_fused_infer_attention_score", num_heads)
    compute_dtype = q.dtype if q.dtype in HALF_DTYPES else dtype
    if compute_dtype not in HALF_DTYPES:
        raise ValueError(
            f"npu_fused_infer_attention_score computes in fp16 or bf16; got "
            f"dtype={dtype} for {q.dtype} inputs")

    torch_npu = _import_torch_npu()
    out_dtype = q.dtype
    if q_scale is not None:
        q = q * q_scale
    # After the Ulysses all_to_all q, k and v can be views, and the kernel
    # rejects non-contiguous tensors.
    q, k, v = (t.to(compute_dtype).contiguous() for t in (q, k, v))
    scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5

    out, _ = torch_npu.npu_fused_infer_attention_score(
        q, k, v, num_heads=num_heads, input_layout="BSND",
        actual_seq_lengths_kv=_per_batch_key_lengths(k_lens, k.size(1)),
        **{fused_infer_scale_keyword(): scale})
    return out.to(out_dtype)  # BSND: [B, Lq, N, D], Wan's layout


def npu_fusion_attention_varlen(q: torch.Tensor, k: torch.Tensor,
                                v: torch.Tensor,
                                k_lens: Optional[torch.Tensor] = None,
                                softmax_scale: Optional[float] = None,
                                q_scale: Optional[float] = None,
                                causal: bool = False,
                                dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Attention through ``torch_npu.npu_fusion_attention`` in layout TND.

    The padded keys are dropped and the lengths passed as cumulative sums
    (``[3, 5]`` for key lengths 3 and 2). Inputs that are not fp16/bf16 are
    cast to ``dtype``; this kernel also computes in fp32 when ``dtype`` is
    fp32. The output is cast back to q's dtype.

    Raises:
        ValueError: the head dim, head count, batch size or ``dtype`` is
            outside the kernel's limits.
        NotImplementedError: ``causal=True`` (Wan's DiT never passes it).
    """
    if causal:
        raise NotImplementedError(
            "npu_fusion_attention_varlen supports causal=False only")
    batch, num_queries, num_heads, head_dim = q.shape
    reason = fusion_attention_unsupported_reason(head_dim)
    if reason is not None:
        raise ValueError(f"npu_fusion_attention: {reason}; use sdpa_attention")
    _check_heads("npu_fusion_attention", num_heads)
    if batch > FUSION_VARLEN_MAX_BATCH:
        raise ValueError(
            f"npu_fusion_attention in layout TND takes at most "
            f"{FUSION_VARLEN_MAX_BATCH} sequences; got a batch of {batch}")
    compute_dtype = q.dtype if q.dtype in HALF_DTYPES else dtype
    if compute_dtype not in (*HALF_DTYPES, torch.float32):
        raise ValueError(
            f"npu_fusion_attention computes in fp16, bf16 or fp32; got "
            f"dtype={dtype} for {q.dtype} inputs")

    torch_npu = _import_torch_npu()
    out_dtype = q.dtype
    if q_scale is not None:
        q = q * q_scale
    packed = pack_batch(q, k, v, k_lens)
    scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5

    out = torch_npu.npu_fusion_attention(
        packed.q.to(compute_dtype).contiguous(),
        packed.k.to(compute_dtype).contiguous(),
        packed.v.to(compute_dtype).contiguous(),
        head_num=num_heads, input_layout="TND", scale=scale,
        actual_seq_qlen=packed.cumulative_query_lengths(),
        actual_seq_kvlen=packed.cumulative_key_lengths())[0]
    # TND: [B * Lq, N, D] -> [B, Lq, N, D]
    return out.unflatten(0, (batch, num_queries)).to(out_dtype)
