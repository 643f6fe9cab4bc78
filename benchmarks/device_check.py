"""Check lite_boost's CUDA path on one GPU: kernel, patched forward and its cost.

Four steps, sized to finish in under 5 minutes on one GPU:

1. lowering: the attention kernel that ``select_attention_kernel("cuda")``
   picks (flash-attn's varlen kernel when ``flash_attn`` imports, SDPA with a
   boolean key mask otherwise) on bf16 inputs, against fp32 SDPA on the same
   values, with and without padded keys, for self- and cross-attention shapes;
2. forward: a patched WanModel on one rank against the unpatched model, both
   under bf16 autocast with fp32 weights, as Wan's pipelines run them;
3. speed: patched/unpatched forward time at one rank for a mid-size DiT
   (median of interleaved repeats);
4. one summary line, ``device_check: ...``, and exit status 1 when a check fails.

The unpatched model calls Wan's own ``flash_attention`` when ``flash_attn``
imports. Without it, Wan's function cannot run, so a stand-in with the same
contract (bf16 cast, keys past ``k_lens`` masked) is bound in its place.

``--device cpu --quick`` runs the same steps with tiny sizes on the CPU, in
fp32: Wan's blocks assert fp32 modulation tensors, which CPU bf16 autocast
would break, and Wan's ``autocast("cuda")`` regions do nothing on the CPU.

Usage::

    python benchmarks/device_check.py                         # one CUDA GPU
    python benchmarks/device_check.py --device cpu --quick    # smoke run
"""

import argparse
import contextlib
import copy
import dataclasses
import statistics
import sys
import time
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

import lite_boost  # noqa: F401  (lets `import wan` work without CUDA)
from lite_boost.model.dit import patch_dit
from lite_boost.ops.attention import HALF_DTYPES, select_attention_kernel
from lite_boost.parallel import destroy_usp, initialize_usp
from lite_boost.tiny import tiny_dit

# Pass limits: max |error| of the bf16 kernel against fp32 SDPA (outputs are
# O(0.1), bf16 keeps 8 bits), and max |difference| / max |unpatched output|
# of the forward.
LOWERING_TOLERANCE = 2e-2
FORWARD_TOLERANCE = 3e-2


@dataclasses.dataclass(frozen=True)
class DitSize:
    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    text_dim: int
    text_len: int
    latent_shape: Tuple[int, int, int]  # (F, H, W) of a 16-channel latent

    @property
    def tokens(self) -> int:
        frames, height, width = self.latent_shape
        return frames * (height // 2) * (width // 2)


# Mid-size: the 1.3B Wan2.1 model's width and heads (head dim 128) with 10 of
# its 30 layers, on the latent of 81 frames at 832x480 (32760 tokens).
FULL_SIZE = DitSize(dim=1536, num_heads=12, num_layers=10, ffn_dim=8960,
                    text_dim=4096, text_len=512, latent_shape=(21, 60, 104))
QUICK_SIZE = DitSize(dim=256, num_heads=4, num_layers=2, ffn_dim=512,
                     text_dim=32, text_len=16, latent_shape=(3, 16, 16))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def masked_sdpa_fp32(q, k, v, k_lens):
    """fp32 attention on ``[B, L, N, D]`` with keys past ``k_lens`` masked."""
    attend = torch.arange(k.size(1), device=k.device)[None, :] < k_lens[:, None]
    out = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2),
        attn_mask=attend[:, None, None, :])
    return out.transpose(1, 2)


def check_lowering(kernel: Callable, device: torch.device, quick: bool) -> float:
    """Return the max |error| of ``kernel`` in bf16 against fp32 SDPA."""
    tokens, heads, head_dim = (256, 4, 64) if quick else (4096, 12, 128)
    generator = torch.Generator(device=device).manual_seed(0)
    worst = 0.0
    # Self-attention (keys = tokens) and cross-attention (512 text keys).
    for keys, lengths in ((tokens, (tokens, tokens)), (tokens, (tokens, tokens * 3 // 4)),
                          (512, (512, 300))):
        shape_q = (2, tokens, heads, head_dim)
        shape_k = (2, keys, heads, head_dim)
        q = torch.randn(shape_q, generator=generator, device=device).bfloat16()
        k = torch.randn(shape_k, generator=generator, device=device).bfloat16()
        v = torch.randn(shape_k, generator=generator, device=device).bfloat16()
        k_lens = torch.tensor(lengths, device=device)
        out = kernel(q, k, v, k_lens=k_lens)
        expected = masked_sdpa_fp32(q, k, v, k_lens)
        worst = max(worst, (out.float() - expected).abs().max().item())
    return worst


def wan_contract_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0,
                           softmax_scale=None, q_scale=None, causal=False,
                           window_size=(-1, -1), deterministic=False,
                           dtype=torch.bfloat16, version=None):
    """Stand-in for Wan's ``flash_attention`` where flash-attn is missing.

    Same contract: q, k, v cast to ``dtype`` unless already fp16/bf16, keys
    past ``k_lens`` get no weight, output in q's dtype. Only the arguments
    Wan's DiT passes are supported.
    """
    if q_lens is not None or causal or tuple(window_size) != (-1, -1):
        raise NotImplementedError("wan_contract_attention: unsupported arguments")
    out_dtype = q.dtype
    q, k, v = (t if t.dtype in HALF_DTYPES else t.to(dtype) for t in (q, k, v))
    q, k = q.to(v.dtype), k.to(v.dtype)
    if q_scale is not None:
        q = q * q_scale
    mask = None
    if k_lens is not None and bool((k_lens < k.size(1)).any()):
        attend = torch.arange(k.size(1), device=k.device)[None, :] < k_lens.to(k.device)[:, None]
        mask = attend[:, None, None, :]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, scale=softmax_scale)
    return out.transpose(1, 2).to(out_dtype)


@contextlib.contextmanager
def unpatched_attention(device: torch.device):
    """Bind the stand-in as Wan's attention unless Wan's own can run."""
    import wan.modules.attention as wan_attention
    import wan.modules.model as wan_model

    own = device.type == "cuda" and (wan_attention.FLASH_ATTN_2_AVAILABLE
                                     or wan_attention.FLASH_ATTN_3_AVAILABLE)
    original = wan_model.flash_attention
    if not own:
        wan_model.flash_attention = wan_contract_attention
    try:
        yield "wan flash_attention" if own else "wan_contract_attention (SDPA)"
    finally:
        wan_model.flash_attention = original


def build_inputs(size: DitSize, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(1)
    x = [torch.randn(16, *size.latent_shape, generator=generator).to(device)]
    context = [torch.randn(size.text_len, size.text_dim, generator=generator).to(device)]
    t = torch.tensor([500.0], device=device)
    return {"x": x, "t": t, "context": context, "seq_len": size.tokens}


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.amp.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_forward(model, inputs: dict, device: torch.device) -> Tuple[torch.Tensor, float]:
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast_for(device):
        out = model(**inputs)[0]
    synchronize(device)
    return out.float(), time.perf_counter() - start


@dataclasses.dataclass
class ForwardResult:
    relative_error: float
    patched_seconds: float
    unpatched_seconds: float
    reference: str

    @property
    def time_ratio(self) -> float:
        return self.patched_seconds / self.unpatched_seconds


def check_forward(size: DitSize, device: torch.device, state, rope: Optional[str],
                  warmup: int, repeats: int) -> ForwardResult:
    """Compare and time a patched DiT against an unpatched copy."""
    unpatched = tiny_dit("t2v", in_dim=16, out_dim=16, dim=size.dim,
                         num_heads=size.num_heads, num_layers=size.num_layers,
                         ffn_dim=size.ffn_dim, text_dim=size.text_dim,
                         text_len=size.text_len, freq_dim=256, seed=0)
    patched = copy.deepcopy(unpatched)
    unpatched.to(device)
    patched.to(device)
    patch_dit(patched, state, rope=rope)
    inputs = build_inputs(size, device)

    with unpatched_attention(device) as reference:
        for _ in range(warmup):
            run_forward(unpatched, inputs, device)
            run_forward(patched, inputs, device)
        patched_times: List[float] = []
        unpatched_times: List[float] = []
        for _ in range(repeats):
            # Interleaved, so drifts in clock or load hit both alike.
            expected, seconds = run_forward(unpatched, inputs, device)
            unpatched_times.append(seconds)
            out, seconds = run_forward(patched, inputs, device)
            patched_times.append(seconds)

    relative_error = ((out - expected).abs().max() / expected.abs().max()).item()
    return ForwardResult(relative_error, statistics.median(patched_times),
                         statistics.median(unpatched_times), reference)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="device to check (default: cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 2 repeats, for a smoke run")
    parser.add_argument("--rope", choices=("float32",), default=None,
                        help="also lower Wan's rope to lite_boost's float32 rope")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed forwards of each model (default: 2 quick, 5 full)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: CUDA is not available; use --device cpu --quick",
              file=sys.stderr)
        return 2
    size = QUICK_SIZE if args.quick else FULL_SIZE
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = 1 if args.quick else 2
    torch.manual_seed(0)

    state = initialize_usp(backend="nccl" if args.device == "cuda" else "gloo")
    device = state.device
    try:
        head_dim = size.dim // size.num_heads
        kernel = select_attention_kernel(device.type, head_dim=head_dim)
        lowering_error = check_lowering(kernel, device, args.quick)
        forward = check_forward(size, device, state, args.rope, warmup, repeats)
    finally:
        destroy_usp()

    passed = (lowering_error <= LOWERING_TOLERANCE
              and forward.relative_error <= FORWARD_TOLERANCE)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else "cpu").replace(" ", "_")
    print(f"device_check: device={device_name} kernel={kernel.__name__} "
          f"rope={args.rope or 'wan'} lowering_max_abs_err={lowering_error:.2e} "
          f"forward_rel_err={forward.relative_error:.2e} "
          f"time_ratio={forward.time_ratio:.3f} "
          f"patched_s={forward.patched_seconds:.4f} "
          f"unpatched_s={forward.unpatched_seconds:.4f} tokens={size.tokens} "
          f"layers={size.num_layers} dim={size.dim} "
          f"reference='{forward.reference}' result={'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
