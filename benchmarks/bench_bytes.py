"""Bytes that collectives move per self-attention layer, against the Ulysses minimum.

Two gloo ranks run the DiT of ``bench_dit`` (lite_boost P=2, then Wan's own
``use_sp`` path) twice each, inside ``CollectiveCounter``, which records the
bytes every collective call sends from the rank. Calls made while a
``self_attn`` module runs count as self-attention; the rest are listed
separately:

- the sequence all_gather after the DiT head (every forward);
- lite_boost's input check, one small all_gather at the first forward only
  (the first forward's bytes minus the second's).

The Ulysses minimum for one self-attention layer, per rank, is
``4 * B * (S / P) * H * D * dtype_size * (P - 1) / P``: q, k and v go out
scattered by heads and the output comes back, and each rank keeps 1/P of
every tensor.

Usage::

    python benchmarks/bench_bytes.py [--quick] [--wait-for-load]
"""

import copy
from typing import Dict, Optional

import torch
import torch.distributed as dist

from bench_dit import (FULL, QUICK, DitConfig, bind_wan_sequence_parallel,
                       build_inputs, build_model)
from collective_counter import CollectiveCounter
from common import BenchmarkResult, Target, script_main, silence_wan_cpu_warnings, wan_cpu_attention

SELF_ATTENTION = "self-attention"
FP32_BYTES = 4


def ulysses_minimum_bytes(config: DitConfig, tokens: int, world_size: int) -> int:
    """Bytes one rank must send per self-attention layer (batch 1, fp32)."""
    head_dim = config.dim // config.num_heads
    local_tokens = tokens // world_size
    return (4 * local_tokens * config.num_heads * head_dim * FP32_BYTES
            * (world_size - 1) // world_size)


def count_forward(model: torch.nn.Module, inputs: dict) -> Dict[str, object]:
    """Run two forwards under the counter; return bytes and calls by phase."""
    counter = CollectiveCounter()
    handles = counter.set_phase_during(
        [block.self_attn for block in model.blocks], SELF_ATTENTION)
    try:
        with counter, torch.no_grad():
            model(**inputs)
            first = list(counter.calls)
            counter.calls.clear()
            model(**inputs)
            second = list(counter.calls)
    finally:
        for handle in handles:
            handle.remove()
    return {
        "first_bytes": counter.bytes_by_phase(first),
        "second_bytes": counter.bytes_by_phase(second),
        "second_calls": counter.calls_by_phase(second),
        "second_names": sorted({call.name for call in second}),
    }


def count_bytes_on_ranks(config: DitConfig, tokens: int) -> Optional[dict]:
    """Rank body: count lite_boost's and Wan's collectives; rank 0 returns them."""
    from lite_boost.model.dit import patch_dit
    from lite_boost.parallel import get_state

    silence_wan_cpu_warnings()
    with wan_cpu_attention():
        base = build_model(config)
        lite = copy.deepcopy(base)
        patch_dit(lite, get_state())
        wan_sp = copy.deepcopy(base)
        bind_wan_sequence_parallel(wan_sp)
        inputs = build_inputs(config, tokens)
        counts = {"lite_boost P=2": count_forward(lite, inputs),
                  "Wan use_sp P=2": count_forward(wan_sp, inputs)}
    return counts if dist.get_rank() == 0 else None


def summarize(config: DitConfig, tokens: int, counts: dict) -> BenchmarkResult:
    world_size = 2
    minimum = ulysses_minimum_bytes(config, tokens, world_size)
    header = ["variant", "bytes per self-attn layer", "Ulysses minimum", "ratio",
              "calls per self-attn layer", "other bytes per forward (head gather)",
              "first-call extra bytes (input check)", "collectives"]
    rows, targets, parts = [], [], []
    for name, count in counts.items():
        layer_bytes = count["second_bytes"].get(SELF_ATTENTION, 0) / config.num_layers
        layer_calls = count["second_calls"].get(SELF_ATTENTION, 0) / config.num_layers
        other = count["second_bytes"].get("other", 0)
        first_total = sum(count["first_bytes"].values())
        second_total = sum(count["second_bytes"].values())
        ratio = layer_bytes / minimum
        rows.append([name, f"{layer_bytes:.0f}", str(minimum), f"{ratio:.3f}",
                     f"{layer_calls:g}", str(other), str(first_total - second_total),
                     ", ".join(count["second_names"])])
        parts.append(f"{name} {layer_bytes / 1e6:.2f} MB/layer ({ratio:.3f}x min, "
                     f"{layer_calls:g} calls)")
        if name.startswith("lite_boost"):
            targets.append(Target(f"bytes per self-attention layer / Ulysses minimum, "
                                  f"{tokens} tokens", ratio, 1.0, False))
    notes = [
        f"{tokens} tokens, P={world_size}, batch 1, {config.num_heads} heads of "
        f"dim {config.dim // config.num_heads}, fp32; bytes sent by rank 0 "
        "(both ranks send the same).",
        "Minimum: 4 * B * (S/P) * H * D * 4 bytes * (P-1)/P per layer. Counted "
        "by wrapping torch.distributed's collectives (benchmarks/collective_counter.py).",
        "The head gather and the first-call input check are not part of the "
        "per-layer figure; they are listed in their own columns.",
    ]
    return BenchmarkResult(
        name="bytes", title="4. Bytes moved per self-attention layer",
        summary=f"bench_bytes: minimum {minimum / 1e6:.2f} MB/layer; " + "; ".join(parts),
        header=header, rows=rows, targets=targets, notes=notes)


def run(quick: bool) -> BenchmarkResult:
    from lite_boost.launch import run_on_ranks

    config = QUICK if quick else FULL
    tokens = 2048 if quick else config.token_counts[0]
    counts = run_on_ranks(count_bytes_on_ranks, 2, config, tokens)[0]
    return summarize(config, tokens, counts)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n\n")[0])
