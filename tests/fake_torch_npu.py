"""A CPU stand-in for the torch_npu operators that lite_boost calls.

Written from the torch_npu operator reference (Ascend op-plugin docs
``torch_npu-npu_fused_infer_attention_score.md``,
``torch_npu-npu_fusion_attention.md``,
``torch_npu-npu_prompt_flash_attention.md`` and
``torch_npu-npu_rotary_mul.md``), not from torch_npu's code. Each operator
checks the documented contract, then computes the documented result in
float32 and returns it in the input dtype.

What the fake models:

- ``npu_fused_infer_attention_score``: layouts BSH, BSND and BNSD; fp16/bf16
  only; contiguous tensors only; D a multiple of 16 and at most 512; N at most
  256. ``actual_seq_lengths``/``actual_seq_lengths_kv`` are per-batch int lists
  (length 1, or at least B), each at most the sequence length. ``atten_mask``
  (bool/int8/uint8): 1 masks a position out. Its page does not say so; the
  npu_prompt_flash_attention page, the branch taken for more than one query,
  pads masks with 1. The scale defaults to 1.0.
- ``npu_fusion_attention``: layouts BSH, SBH, BSND, BNSD and TND; fp16, bf16
  or fp32; D in 1..768. ``actual_seq_qlen``/``actual_seq_kvlen`` are cumulative
  sums, required in TND and ignored in every other layout. ``atten_mask``
  (bool/uint8): True masks a position out. The scale defaults to 1.0. Returns
  7 values, the output first.
- ``npu_rotary_mul``: "half" and "interleave" modes, r1/r2 broadcast as
  11SD, 1S1D or S11D.

Two kinds of misuse raise:

- ``KernelContractError``: the documentation says the kernel does not take
  it (wrong dtype, layout, limits, non-cumulative lengths in TND, ...).
- ``SilentTrapError``: the real kernel takes it and computes something the
  caller did not mean. Cases: lengths in a layout that ignores them, a scale
  left at its default of 1.0, a mask row that masks every key, and an SDPA
  key-padding mask passed unchanged (wrong polarity). These raise only with
  ``strict=True`` (the default). With ``strict=False`` the fake computes what
  the real kernel would, so a test can show the wrong result.

Features lite_boost never uses (quantization, paged KV, sparse modes, pse,
dropout) raise NotImplementedError instead of being modelled. Tensors stay on
the CPU: the fake never checks the device.

Example::

    fake = make_fake_torch_npu()
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    ...
    assert fake.calls[-1].name == "npu_fused_infer_attention_score"
"""

import dataclasses
import types
from typing import Dict, List, Optional, Sequence

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
DEFAULT_TOKENS = 2147483647

FUSED_INFER_LAYOUTS = ("BSH", "BSND", "BNSD")
FUSED_INFER_MAX_HEAD_DIM = 512
FUSED_INFER_HEAD_DIM_MULTIPLE = 16
FUSION_LAYOUTS = ("BSH", "SBH", "BSND", "BNSD", "TND")
FUSION_MAX_HEAD_DIM = 768
MAX_HEADS = 256

# Documented keyword arguments of npu_fused_infer_attention_score that the
# fake accepts only at their defaults.
FUSED_INFER_UNMODELLED_TENSORS = (
    "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2",
    "quant_scale2", "quant_offset2", "antiquant_scale", "antiquant_offset",
    "block_table", "query_padding_size", "kv_padding_size",
    "key_antiquant_scale", "key_antiquant_offset", "value_antiquant_scale",
    "value_antiquant_offset", "key_shared_prefix", "value_shared_prefix",
    "actual_shared_prefix_len", "query_rope", "key_rope",
    "key_rope_antiquant_scale")
FUSED_INFER_UNMODELLED_DEFAULTS = {
    "pre_tokens": DEFAULT_TOKENS, "next_tokens": DEFAULT_TOKENS,
    "num_key_value_heads": 0, "sparse_mode": 0, "inner_precise": 0,
    "block_size": 0, "antiquant_mode": 0, "softmax_lse_flag": False,
    "key_antiquant_mode": 0, "value_antiquant_mode": 0}


class KernelContractError(RuntimeError):
    """The documentation says the real kernel does not take this call."""


class SilentTrapError(RuntimeError):
    """The real kernel takes this call but computes something else than meant."""


@dataclasses.dataclass
class Call:
    """One operator call: its name, tensor shapes and non-tensor arguments."""

    name: str
    shapes: List[tuple]
    dtypes: List[torch.dtype]
    options: Dict[str, object]


def record_call(calls: List[Call], name: str, tensors: Sequence[torch.Tensor],
                options: Dict[str, object]) -> None:
    plain = {key: value for key, value in options.items()
             if not isinstance(value, torch.Tensor)}
    calls.append(Call(name, [tuple(t.shape) for t in tensors],
                      [t.dtype for t in tensors], plain))


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       scale: float, masked_out: Optional[torch.Tensor],
                       strict: bool, kernel: str) -> torch.Tensor:
    """Attention in float32 on ``[B, N, S, D]``; ``masked_out`` broadcasts to scores."""
    scores = torch.einsum("bnqd,bnkd->bnqk", q.float(), k.float()) * scale
    if masked_out is not None:
        masked_out = masked_out.expand_as(scores)
        if bool(masked_out.all(dim=-1).any()):
            if strict:
                raise SilentTrapError(
                    f"{kernel}: a mask row masks out every key (True/1 masks "
                    "a position out here, the opposite of SDPA's boolean "
                    "mask); the kernel returns undefined values for it")
        scores = scores.masked_fill(masked_out, float("-inf"))
    weights = scores.softmax(dim=-1).nan_to_num(0.0)
    return torch.einsum("bnqk,bnkd->bnqd", weights, v.float())


def _check_mask_dtype(kernel: str, mask: torch.Tensor, allowed: tuple) -> None:
    if mask.dtype not in allowed:
        raise KernelContractError(
            f"{kernel}: atten_mask has dtype {mask.dtype}; it takes "
            f"{allowed} (no additive float mask), with True/1 masking a "
            "position out")


def _check_mask_polarity(kernel: str, mask: torch.Tensor, strict: bool) -> None:
    """Raise on a mask that keeps only padding: an SDPA key mask passed as is.

    SDPA's boolean key-padding mask is True for the first k_len keys (attend)
    and False for the padding after them. Here True masks a position out, so
    that mask would keep only the padding. A row that masks out a leading run
    of keys and keeps the rest, the same for every query, is taken as that
    mistake.
    """
    if not strict:
        return
    masked_out = mask.bool()
    rows = masked_out.reshape(-1, masked_out.size(-2), masked_out.size(-1))
    for row_block in rows:
        if not bool((row_block == row_block[:1]).all()):
            continue  # differs between queries: not a key-padding mask
        row = row_block[0]
        kept = int(row.logical_not().sum())
        leading = int(row.int().cumprod(0).sum())
        if 0 < leading < row.numel() and leading + kept == row.numel():
            raise SilentTrapError(
                f"{kernel}: atten_mask masks out the first {leading} keys and "
                "keeps the rest, which is SDPA's key-padding mask (True = "
                "attend) passed unchanged; here True masks a position out")


def _check_int_list(kernel: str, name: str, lengths: object) -> List[int]:
    if isinstance(lengths, torch.Tensor) or not all(
            isinstance(n, int) for n in lengths):
        raise TypeError(
            f"{kernel}: {name} must be a list of Python ints (SymInt[]), got "
            f"{type(lengths).__name__}")
    return list(lengths)


def _per_batch_lengths(kernel: str, name: str, lengths: object, batch: int,
                       sequence: int) -> List[int]:
    lengths = _check_int_list(kernel, name, lengths)
    if len(lengths) == 1:
        lengths = lengths * batch
    elif len(lengths) >= batch:
        lengths = lengths[:batch]
    else:
        raise KernelContractError(
            f"{kernel}: {name} has {len(lengths)} values for batch {batch}; "
            "it takes 1 or at least B")
    for length in lengths:
        if not 0 <= length <= sequence:
            raise KernelContractError(
                f"{kernel}: {name} value {length} is outside 0..{sequence} "
                f"(per-batch lengths; cumulative sums are for layout TND "
                f"only): {lengths}")
    return lengths


def _length_mask(lengths: Optional[List[int]], size: int) -> Optional[torch.Tensor]:
    """Return True where index >= length, ``[B, size]``; None without lengths."""
    if lengths is None:
        return None
    index = torch.arange(size)
    return index[None, :] >= torch.tensor(lengths)[:, None]


def _to_bnsd(t: torch.Tensor, layout: str, num_heads: int) -> torch.Tensor:
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        return t.unflatten(2, (num_heads, -1)).transpose(1, 2)
    if layout == "SBH":
        return t.unflatten(2, (num_heads, -1)).permute(1, 2, 0, 3)
    raise AssertionError(layout)


def _from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        return t.transpose(1, 2).flatten(2)
    if layout == "SBH":
        return t.permute(2, 0, 1, 3).flatten(2)
    raise AssertionError(layout)


def _heads_of(t: torch.Tensor, layout: str, num_heads: int) -> int:
    if layout == "BNSD":
        return t.size(1)
    if layout in ("BSND", "TND"):
        return t.size(-2)
    return num_heads


def _masked_positions(mask: Optional[torch.Tensor],
                      kv_lengths: Optional[List[int]],
                      kv_size: int) -> Optional[torch.Tensor]:
    """Combine an atten_mask and key lengths into one mask, True = masked out.

    The result broadcasts to the scores ``[B, N, Sq, Skv]``.
    """
    masked_out = None
    if mask is not None:
        masked_out = mask.bool()
        while masked_out.dim() < 4:
            masked_out = masked_out.unsqueeze(0)
    key_padding = _length_mask(kv_lengths, kv_size)
    if key_padding is not None:
        key_padding = key_padding[:, None, None, :]
        masked_out = key_padding if masked_out is None else masked_out | key_padding
    return masked_out


def make_fake_torch_npu(strict: bool = True,
                        scale_keyword: str = "scale") -> types.ModuleType:
    """Return a module to install as ``torch_npu``.

    Args:
        strict: raise SilentTrapError on calls the real kernels accept but
            compute differently from what was meant.
        scale_keyword: name of npu_fused_infer_attention_score's scale
            argument: "scale" (torch_npu 7.x reference) or "scale_value"
            (6.0 reference). The other name raises TypeError, as the real
            binding does for unknown keywords.
    """
    module = types.ModuleType("torch_npu")
    module.__doc__ = "CPU stand-in for torch_npu (tests/fake_torch_npu.py)"
    module.calls = []
    module.strict = strict

    def npu_fused_infer_attention_score(query, key, value, *, atten_mask=None,
                                        actual_seq_lengths=None,
                                        actual_seq_lengths_kv=None,
                                        num_heads=1, input_layout="BSH",
                                        **options):
        kernel = "npu_fused_infer_attention_score"
        scale = options.pop(scale_keyword, None)
        for name, value_given in options.items():
            if name in FUSED_INFER_UNMODELLED_TENSORS:
                if value_given is not None:
                    raise NotImplementedError(f"fake {kernel}: {name} is not modelled")
            elif name in FUSED_INFER_UNMODELLED_DEFAULTS:
                if value_given != FUSED_INFER_UNMODELLED_DEFAULTS[name]:
                    raise NotImplementedError(
                        f"fake {kernel}: {name}={value_given!r} is not modelled")
            else:
                raise TypeError(
                    f"{kernel}() got an unexpected keyword argument {name!r}")
        record_call(module.calls, kernel, (query, key, value),
                    dict(actual_seq_lengths=actual_seq_lengths,
                         actual_seq_lengths_kv=actual_seq_lengths_kv,
                         num_heads=num_heads, input_layout=input_layout,
                         scale=scale, atten_mask=atten_mask is not None))

        if input_layout not in FUSED_INFER_LAYOUTS:
            raise NotImplementedError(
                f"fake {kernel}: layout {input_layout!r} is not modelled; "
                f"modelled: {FUSED_INFER_LAYOUTS}")
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if tensor.dtype not in HALF_DTYPES:
                raise KernelContractError(
                    f"{kernel}: {name} has dtype {tensor.dtype}; it takes "
                    "float16 or bfloat16")
            if not tensor.is_contiguous():
                raise KernelContractError(
                    f"{kernel}: {name} is not contiguous; the kernel does "
                    "not take non-contiguous tensors")
        if key.shape != value.shape:
            raise KernelContractError(
                f"{kernel}: key {tuple(key.shape)} and value "
                f"{tuple(value.shape)} must have the same shape")
        expected_dims = 3 if input_layout == "BSH" else 4
        if query.dim() != expected_dims:
            raise KernelContractError(
                f"{kernel}: layout {input_layout} takes {expected_dims}-D "
                f"tensors, got query {tuple(query.shape)}")
        heads = _heads_of(query, input_layout, num_heads)
        if heads != num_heads:
            raise KernelContractError(
                f"{kernel}: num_heads={num_heads} but query has {heads} heads")
        if num_heads > MAX_HEADS:
            raise KernelContractError(f"{kernel}: {num_heads} heads > {MAX_HEADS}")

        q, k, v = (_to_bnsd(t, input_layout, num_heads) for t in (query, key, value))
        batch, _, q_size, head_dim = q.shape
        kv_size = k.size(2)
        if head_dim % FUSED_INFER_HEAD_DIM_MULTIPLE or head_dim > FUSED_INFER_MAX_HEAD_DIM:
            raise KernelContractError(
                f"{kernel}: head dim {head_dim} must be a multiple of "
                f"{FUSED_INFER_HEAD_DIM_MULTIPLE} and at most "
                f"{FUSED_INFER_MAX_HEAD_DIM} for fp16/bf16 inputs")

        if scale is None:
            if strict:
                raise SilentTrapError(
                    f"{kernel}: {scale_keyword} not given; the kernel then "
                    f"scales by 1.0, not head_dim ** -0.5 = {head_dim ** -0.5:.4g}")
            scale = 1.0
        if atten_mask is not None:
            _check_mask_dtype(kernel, atten_mask, (torch.bool, torch.int8, torch.uint8))
            _check_mask_polarity(kernel, atten_mask, strict)
        if actual_seq_lengths is not None:
            q_lengths = _per_batch_lengths(
                kernel, "actual_seq_lengths", actual_seq_lengths, batch, q_size)
            if min(q_lengths) < q_size:
                raise NotImplementedError(
                    f"fake {kernel}: query lengths below Sq are not modelled")
        kv_lengths = None
        if actual_seq_lengths_kv is not None:
            kv_lengths = _per_batch_lengths(
                kernel, "actual_seq_lengths_kv", actual_seq_lengths_kv, batch, kv_size)

        masked_out = _masked_positions(atten_mask, kv_lengths, kv_size)
        out = _softmax_attention(q, k, v, scale, masked_out, strict, kernel)
        out = _from_bnsd(out, input_layout).to(query.dtype).contiguous()
        return out, torch.zeros(1)

    def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None,
                             padding_mask=None, atten_mask=None, scale=None,
                             keep_prob=1.0, pre_tockens=DEFAULT_TOKENS,
                             next_tockens=DEFAULT_TOKENS, inner_precise=0,
                             prefix=None, actual_seq_qlen=None,
                             actual_seq_kvlen=None, sparse_mode=0,
                             gen_mask_parallel=True, sync=False):
        # scale=None stands for "not given"; the documented default is 1.0.
        kernel = "npu_fusion_attention"
        record_call(module.calls, kernel, (query, key, value),
                    dict(head_num=head_num, input_layout=input_layout, scale=scale,
                         actual_seq_qlen=actual_seq_qlen,
                         actual_seq_kvlen=actual_seq_kvlen,
                         atten_mask=atten_mask is not None))

        unmodelled = {"pse": pse is not None, "prefix": prefix is not None,
                      "keep_prob": keep_prob != 1.0, "sparse_mode": sparse_mode != 0,
                      "pre_tockens/next_tockens": (pre_tockens, next_tockens)
                      != (DEFAULT_TOKENS, DEFAULT_TOKENS)}
        for name, is_set in unmodelled.items():
            if is_set:
                raise NotImplementedError(f"fake {kernel}: {name} is not modelled")
        if padding_mask is not None:
            raise KernelContractError(f"{kernel}: padding_mask is not supported")
        if input_layout not in FUSION_LAYOUTS:
            raise KernelContractError(
                f"{kernel}: layout {input_layout!r} is invalid; valid: {FUSION_LAYOUTS}")
        dtypes = {query.dtype, key.dtype, value.dtype}
        if len(dtypes) != 1 or query.dtype not in (*HALF_DTYPES, torch.float32):
            raise KernelContractError(
                f"{kernel}: query, key and value must share one dtype of "
                f"float16, bfloat16, float32; got {sorted(map(str, dtypes))}")
        if key.shape != value.shape:
            raise KernelContractError(f"{kernel}: key and value shapes differ")
        heads = _heads_of(query, input_layout, head_num)
        if heads != head_num or head_num > MAX_HEADS:
            raise KernelContractError(
                f"{kernel}: head_num={head_num}, query has {heads} heads "
                f"(at most {MAX_HEADS})")
        head_dim = query.size(-1)
        if input_layout in ("BSH", "SBH"):
            head_dim //= head_num
        if not 1 <= head_dim <= FUSION_MAX_HEAD_DIM:
            raise KernelContractError(
                f"{kernel}: head dim {head_dim} is outside 1..{FUSION_MAX_HEAD_DIM}")

        if scale is None:
            if strict:
                raise SilentTrapError(
                    f"{kernel}: scale not given; the kernel then scales by "
                    f"1.0, not head_dim ** -0.5 = {head_dim ** -0.5:.4g}")
            scale = 1.0
        if atten_mask is not None:
            _check_mask_dtype(kernel, atten_mask, (torch.bool, torch.uint8))
            _check_mask_polarity(kernel, atten_mask, strict)

        if input_layout == "TND":
            out = _fusion_varlen(query, key, value, scale, atten_mask,
                                 actual_seq_qlen, actual_seq_kvlen, strict, kernel)
        else:
            if actual_seq_qlen is not None or actual_seq_kvlen is not None:
                if strict:
                    raise SilentTrapError(
                        f"{kernel}: actual_seq_qlen/actual_seq_kvlen are honoured "
                        f"only in layout TND; with {input_layout} the kernel "
                        "ignores them and attends to every key")
            q, k, v = (_to_bnsd(t, input_layout, head_num) for t in (query, key, value))
            masked_out = _masked_positions(atten_mask, None, k.size(2))
            out = _softmax_attention(q, k, v, scale, masked_out, strict, kernel)
            out = _from_bnsd(out, input_layout)
        out = out.to(query.dtype)
        # attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, numels
        return out, torch.zeros(1), torch.zeros(1), torch.zeros(1), 0, 0, 0

    def npu_rotary_mul(input, r1, r2, rotary_mode="half"):
        kernel = "npu_rotary_mul"
        record_call(module.calls, kernel, (input, r1, r2), dict(rotary_mode=rotary_mode))
        if rotary_mode not in ("half", "interleave"):
            raise KernelContractError(
                f"{kernel}: rotary_mode {rotary_mode!r}; valid: half, interleave")
        for name, tensor in (("input", input), ("r1", r1), ("r2", r2)):
            if tensor.dim() != 4:
                raise KernelContractError(f"{kernel}: {name} must be 4-D")
            if tensor.dtype not in (*HALF_DTYPES, torch.float32):
                raise KernelContractError(f"{kernel}: {name} dtype {tensor.dtype}")
        if r1.shape != r2.shape:
            raise KernelContractError(f"{kernel}: r1 and r2 shapes differ")
        head_dim = input.size(-1)
        if head_dim % 2 or head_dim >= 896:
            raise KernelContractError(
                f"{kernel}: D={head_dim} must be even and below 896")
        if rotary_mode == "interleave":
            _check_interleave_broadcast(kernel, input, r1)
        if rotary_mode == "half":
            first, second = input.chunk(2, dim=-1)
            rotated = torch.cat((-second, first), dim=-1)
        else:
            pairs = input.unflatten(-1, (-1, 2))
            rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        out = r1.float() * input.float() + r2.float() * rotated.float()
        return out.to(input.dtype)

    module.npu_fused_infer_attention_score = npu_fused_infer_attention_score
    module.npu_fusion_attention = npu_fusion_attention
    module.npu_rotary_mul = npu_rotary_mul
    return module


def _cumulative_lengths(kernel: str, name: str, lengths: object,
                        total: int) -> List[int]:
    if lengths is None:
        raise KernelContractError(
            f"{kernel}: layout TND needs both actual_seq_qlen and "
            f"actual_seq_kvlen; {name} is missing")
    lengths = _check_int_list(kernel, name, lengths)
    previous = 0
    for value in lengths:
        if value < previous:
            raise KernelContractError(
                f"{kernel}: {name}={lengths} is not non-decreasing; TND takes "
                "cumulative sums ([2, 5] for lengths 2 and 3), not per-batch "
                "lengths")
        previous = value
    if not lengths or lengths[-1] != total:
        raise KernelContractError(
            f"{kernel}: {name}={lengths} must end at the {total} packed "
            "tokens (cumulative sums, padding dropped)")
    return lengths


def _fusion_varlen(query, key, value, scale, atten_mask, actual_seq_qlen,
                   actual_seq_kvlen, strict, kernel):
    q_ends = _cumulative_lengths(kernel, "actual_seq_qlen", actual_seq_qlen, query.size(0))
    kv_ends = _cumulative_lengths(kernel, "actual_seq_kvlen", actual_seq_kvlen, key.size(0))
    if len(q_ends) != len(kv_ends):
        raise KernelContractError(
            f"{kernel}: actual_seq_qlen has {len(q_ends)} sequences, "
            f"actual_seq_kvlen {len(kv_ends)}")
    outputs = []
    q_bounds = zip([0, *q_ends[:-1]], q_ends)
    kv_bounds = zip([0, *kv_ends[:-1]], kv_ends)
    for (q_start, q_end), (kv_start, kv_end) in zip(q_bounds, kv_bounds):
        # [T_b, N, D] -> [1, N, T_b, D]
        q, k, v = (t[start:end].transpose(0, 1)[None] for t, start, end in (
            (query, q_start, q_end), (key, kv_start, kv_end), (value, kv_start, kv_end)))
        masked_out = None
        if atten_mask is not None:
            # Varlen takes an SS mask of (max Sq, max Skv); sequence b uses its corner.
            masked_out = atten_mask.bool()[:q_end - q_start, :kv_end - kv_start]
        out = _softmax_attention(q, k, v, scale, masked_out, strict, kernel)
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs)


def _check_interleave_broadcast(kernel: str, input: torch.Tensor,
                                r: torch.Tensor) -> None:
    """Interleave mode takes r of 11SD (BNSD), 1S1D (BSND) or S11D (SBND), B*N < 1000."""
    batch_heads = {
        (1, 1, input.size(2), input.size(3)): input.size(0) * input.size(1),  # BNSD
        (1, input.size(1), 1, input.size(3)): input.size(0) * input.size(2),  # BSND
        (input.size(0), 1, 1, input.size(3)): input.size(1) * input.size(2),  # SBND
    }
    shape = tuple(r.shape)
    if shape not in batch_heads:
        raise KernelContractError(
            f"{kernel}: in interleave mode r1/r2 must broadcast as 11SD, 1S1D "
            f"or S11D; got {shape} for input {tuple(input.shape)}")
    if batch_heads[shape] >= 1000:
        raise KernelContractError(f"{kernel}: interleave mode needs B * N < 1000")


class FakeNpuRuntime:
    """Replacement for ``torch.npu`` that records ``set_device`` calls.

    Install it with ``torch.npu = FakeNpuRuntime(...)`` in a process that also
    renamed the PrivateUse1 backend to "npu", so that ``torch.device("npu", i)``
    is valid. That rename cannot be undone, so do both in a subprocess.
    """

    def __init__(self, device_count: int = 8):
        self._device_count = device_count
        self.current = 0
        self.set_device_calls: List[int] = []

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self._device_count

    def set_device(self, index: int) -> None:
        if not 0 <= index < self._device_count:
            raise RuntimeError(f"invalid NPU index {index}")
        self.set_device_calls.append(index)
        self.current = index

    def current_device(self) -> int:
        return self.current


__all__ = ["Call", "FakeNpuRuntime", "KernelContractError", "SilentTrapError",
           "make_fake_torch_npu"]
