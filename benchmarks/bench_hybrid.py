"""Hybrid parallel degrees: the planner's pick against the alternatives.

1. P=4 with 6 heads, so Ulysses alone cannot use the 4 ranks: every
   (cfg, ulysses, ring) that can run, with and without guidance.
2. CFG parallel against plain Ulysses at P=2 (8 heads, guidance on).

Each variant runs guided denoising steps in Wan's call pattern (prompt, then
negative prompt, same latents and timestep) on a WanModel patched with those
degrees. Reported per variant: median ms per step (the slowest rank) and the
bytes one rank sends per step, counted in the collectives. On this 2-core
machine, 4 ranks share 2 cores, so the times compare variants at the same P
and say nothing about scaling.

Usage: python benchmarks/bench_hybrid.py [--quick]
"""

import argparse
import statistics
import sys
import time

import torch

import lite_boost  # noqa: F401  (lets `import wan` work without CUDA)
from lite_boost.launch import run_on_ranks

FRAMES, HEIGHT, WIDTH = 16, 32, 32  # latent grid: 16 * 16 * 16 = 4096 tokens


def build_case(num_heads: int, quick: bool):
    from lite_boost.tiny import tiny_dit

    frames = 4 if quick else FRAMES
    model = tiny_dit("t2v", in_dim=16, out_dim=16, dim=64 * num_heads,
                     num_heads=num_heads, num_layers=2, ffn_dim=128 * num_heads, seed=0)
    generator = torch.Generator().manual_seed(1)
    x = [torch.randn(16, frames, HEIGHT, WIDTH, generator=generator)]
    seq_len = frames * (HEIGHT // 2) * (WIDTH // 2)
    t = torch.tensor([500.0])
    prompt = [torch.randn(12, 32, generator=generator)]
    negative = [torch.randn(9, 32, generator=generator)]
    return model, x, t, prompt, negative, seq_len


def count_sent_bytes(counter: dict):
    """Wrap the collectives lite_boost calls to count bytes one rank sends."""
    import torch.distributed as dist

    def all_to_all_single(output, input, *args, **kwargs):
        size = dist.get_world_size(kwargs.get("group"))
        counter["bytes"] += input.numel() * input.element_size() * (size - 1) // size
        return original_all_to_all(output, input, *args, **kwargs)

    def all_gather_single(output, input, *args, **kwargs):
        size = dist.get_world_size(kwargs.get("group"))
        counter["bytes"] += input.numel() * input.element_size() * (size - 1)
        return original_gather(output, input, *args, **kwargs)

    def batch_isend_irecv(operations):
        counter["bytes"] += sum(op.tensor.numel() * op.tensor.element_size()
                                for op in operations if op.op is dist.isend)
        return original_batch(operations)

    original_all_to_all = dist.all_to_all_single
    original_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    original_batch = dist.batch_isend_irecv
    dist.all_to_all_single = all_to_all_single
    dist.batch_isend_irecv = batch_isend_irecv
    if hasattr(dist, "all_gather_single"):
        dist.all_gather_single = all_gather_single
    else:
        dist.all_gather_into_tensor = all_gather_single


def time_variants(variants, num_heads: int, guidance: bool, steps: int, quick: bool):
    """Rank body: patch one model per variant and time guided steps."""
    import torch.distributed as dist

    from lite_boost.parallel import ParallelManager, configure_degrees

    counter = {"bytes": 0}
    count_sent_bytes(counter)
    results = {}
    for degrees in variants:
        configure_degrees(*degrees)
        model, x, t, prompt, negative, seq_len = build_case(num_heads, quick)
        ParallelManager(model, guidance=guidance)
        durations, sent = [], []
        with torch.no_grad():
            for step in range(steps + 1):  # step 0 warms up and finds the pair
                dist.barrier()
                counter["bytes"] = 0
                started = time.perf_counter()
                model(x, t, prompt, seq_len)
                if guidance:
                    model(x, t, negative, seq_len)
                durations.append(time.perf_counter() - started)
                sent.append(counter["bytes"])
        results[degrees] = (durations[1:], sent[-1])
        lite_boost.restore(model)
    return results


def summarize(per_rank, variants):
    rows = []
    for degrees in variants:
        slowest = [max(rank[degrees][0][i] for rank in per_rank)
                   for i in range(len(per_rank[0][degrees][0]))]
        sent = max(rank[degrees][1] for rank in per_rank)
        rows.append((degrees, statistics.median(slowest) * 1000, sent))
    return rows


def run(quick: bool = False) -> list:
    from lite_boost.parallel.planner import candidate_degrees, plan_degrees

    steps = 2 if quick else 4
    lines = []
    for world_size, num_heads, guidance in ((4, 6, False), (4, 6, True), (2, 8, True)):
        variants = candidate_degrees(num_heads, world_size, guidance)
        if world_size == 2:
            variants = [(2, 1, 1), (1, 2, 1)]  # CFG parallel vs plain Ulysses
        pick = plan_degrees(num_heads, world_size, guidance).degrees
        per_rank = run_on_ranks(time_variants, world_size, variants, num_heads,
                                guidance, steps, quick)
        rows = summarize(per_rank, variants)
        pick_ms = next(ms for degrees, ms, _ in rows if degrees == pick)
        lines.append(f"P={world_size}, {num_heads} heads, guidance "
                     f"{'on' if guidance else 'off'}; planner pick {pick}")
        for degrees, ms, sent in rows:
            marker = " (pick)" if degrees == pick else ""
            lines.append(f"  cfg {degrees[0]} x ulysses {degrees[1]} x ring "
                         f"{degrees[2]}: {ms:8.1f} ms/step, {sent / 1e6:7.2f} MB "
                         f"sent per rank per step, time vs pick "
                         f"{ms / pick_ms:5.2f}x{marker}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1024 tokens and 2 steps instead of 4096 and 4")
    args = parser.parse_args(argv)
    for line in run(quick=args.quick):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
