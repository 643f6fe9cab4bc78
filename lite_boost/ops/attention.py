"""Attention kernels that replace Wan's ``flash_attention`` in rewritten graphs.

Every kernel takes Wan's layout, q ``[B, Lq, N, D]`` and k/v ``[B, Lk, N, D]``,
and Wan's ``k_lens``: keys at index ``k_lens[b]`` and later are padding and get
no attention weight. They return ``[B, Lq, N, D]`` in q's dtype.

``select_attention_kernel`` picks one per device type and head dim:

============  ==============================================================
device type   kernel
============  ==============================================================
cpu           ``sdpa_attention`` (boolean key mask)
cuda          ``flash_attn_varlen_attention`` when ``flash_attn`` imports and
              head_dim <= 256, else ``sdpa_attention``
npu           ``npu_fused_infer_attention`` when head_dim is a multiple of 16
              and <= 512, else ``npu_fusion_attention_varlen`` (head_dim <=
              768), else ``sdpa_attention``
============  ==============================================================

The NPU kernels live in ``lite_boost.ops.npu_attention``.
"""

import dataclasses
import importlib
import itertools
import logging
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

HALF_DTYPES = (torch.float16, torch.bfloat16)

# flash-attn 2 kernels support head dims up to 256.
FLASH_ATTN_MAX_HEAD_DIM = 256


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


@dataclasses.dataclass
class PackedBatch:
    """q, k and v packed along tokens, without the padded keys.

    Attributes:
        q, k, v: ``[total tokens, N, D]``; batch b's tokens follow batch b-1's.
        query_lengths, key_lengths: tokens per batch (Python ints).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    query_lengths: List[int]
    key_lengths: List[int]

    def cumulative_query_lengths(self) -> List[int]:
        """Return ``[Lq_0, Lq_0 + Lq_1, ...]``, without a leading 0."""
        return list(itertools.accumulate(self.query_lengths))

    def cumulative_key_lengths(self) -> List[int]:
        return list(itertools.accumulate(self.key_lengths))


def pack_batch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               k_lens: Optional[torch.Tensor]) -> PackedBatch:
    """Pack ``[B, L, N, D]`` inputs into ``[total tokens, N, D]``, dropping padded keys.

    ``k_lens`` larger than Lk are clamped to Lk. Reading ``k_lens`` waits for
    the device, as Wan's own varlen call does.
    """
    batch, num_queries, num_keys = q.size(0), q.size(1), k.size(1)
    if k_lens is None:
        key_lengths = [num_keys] * batch
    else:
        key_lengths = k_lens.clamp(max=num_keys).tolist()

    # [B, L, N, D] -> [B * L, N, D]
    q_packed = q.flatten(0, 1)
    if all(length == num_keys for length in key_lengths):
        k_packed, v_packed = k.flatten(0, 1), v.flatten(0, 1)
    else:
        k_packed = torch.cat([k_b[:n] for k_b, n in zip(k, key_lengths)])
        v_packed = torch.cat([v_b[:n] for v_b, n in zip(v, key_lengths)])
    return PackedBatch(q_packed, k_packed, v_packed,
                       [num_queries] * batch, key_lengths)


def flash_attn_varlen_attention(q: torch.Tensor, k: torch.Tensor,
                                v: torch.Tensor,
                                k_lens: Optional[torch.Tensor] = None,
                                softmax_scale: Optional[float] = None,
                                q_scale: Optional[float] = None,
                                causal: bool = False,
                                dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Attention through ``flash_attn.flash_attn_varlen_func`` (CUDA only).

    Padded keys are dropped before the call and ``k_lens`` becomes the
    cumulative key lengths ``cu_seqlens_k`` (int32, with a leading 0).
    flash-attn computes in fp16/bf16: inputs in another dtype are cast to
    ``dtype`` and the output is cast back to q's dtype. ``softmax_scale=None``
    is flash-attn's own default, ``head_dim ** -0.5``.
    """
    from flash_attn import flash_attn_varlen_func

    batch, num_queries = q.size(0), q.size(1)
    out_dtype = q.dtype
    compute_dtype = q.dtype if q.dtype in HALF_DTYPES else dtype
    if q_scale is not None:
        q = q * q_scale
    packed = pack_batch(q, k, v, k_lens)

    def cumulative(lengths: List[int]) -> torch.Tensor:
        return torch.tensor([0, *itertools.accumulate(lengths)],
                            dtype=torch.int32, device=q.device)

    out = flash_attn_varlen_func(
        packed.q.to(compute_dtype), packed.k.to(compute_dtype),
        packed.v.to(compute_dtype),
        cu_seqlens_q=cumulative(packed.query_lengths),
        cu_seqlens_k=cumulative(packed.key_lengths),
        max_seqlen_q=num_queries, max_seqlen_k=max(packed.key_lengths),
        softmax_scale=softmax_scale, causal=causal)
    # [B * Lq, N, D] -> [B, Lq, N, D]
    return out.unflatten(0, (batch, num_queries)).to(out_dtype)


def flash_attn_available() -> bool:
    """Return whether ``flash_attn`` imports; a broken install logs a warning."""
    try:
        importlib.import_module("flash_attn")
    except ModuleNotFoundError:
        return False
    except ImportError as error:
        logger.warning("flash_attn is installed but failed to import (%s); "
                       "attention falls back to SDPA", error)
        return False
    return True


def _select_cuda_kernel(head_dim: Optional[int]) -> Callable:
    if head_dim is not None and head_dim > FLASH_ATTN_MAX_HEAD_DIM:
        logger.info("head_dim %d is above flash-attn's limit of %d; using SDPA",
                    head_dim, FLASH_ATTN_MAX_HEAD_DIM)
        return sdpa_attention
    if flash_attn_available():
        return flash_attn_varlen_attention
    return sdpa_attention


def _select_npu_kernel(head_dim: Optional[int]) -> Callable:
    # Imported here because npu_attention imports this module's helpers.
    from . import npu_attention

    if head_dim is None:
        raise ValueError(
            "select_attention_kernel('npu') needs head_dim: the NPU kernels "
            "support different head dims")
    reason = npu_attention.fused_infer_unsupported_reason(head_dim)
    if reason is None:
        return npu_attention.npu_fused_infer_attention
    if npu_attention.fusion_attention_unsupported_reason(head_dim) is None:
        logger.info("npu_fused_infer_attention_score does not apply (%s); "
                    "using npu_fusion_attention in layout TND", reason)
        return npu_attention.npu_fusion_attention_varlen
    logger.info("no fused NPU attention kernel supports head_dim %d; using SDPA",
                head_dim)
    return sdpa_attention


def select_attention_kernel(device_type: str,
                            head_dim: Optional[int] = None) -> Callable:
    """Pick the kernel for a device type ("cpu", "cuda" or "npu") and head dim.

    The choice is made once, when the graphs are lowered, so a rewritten graph
    names the kernel it calls. The table in this module's docstring lists the
    rules. ``head_dim`` is required for "npu".

    Raises:
        ValueError: an unknown device type, or "npu" without ``head_dim``.
    """
    if device_type == "cpu":
        return sdpa_attention
    if device_type == "cuda":
        return _select_cuda_kernel(head_dim)
    if device_type == "npu":
        return _select_npu_kernel(head_dim)
    raise ValueError(
        f"device type {device_type!r} has no attention kernel; valid choices: "
        "cpu, cuda, npu")
