"""Peak activation memory per rank, P=2 against P=1, for the DiT forward and the VAE decode.

Measured with ``torch.profiler.profile(profile_memory=True)``: the profiler
reports every allocation and free of PyTorch's CPU allocator together with
the allocator's running total. The peak activation memory of a call is the
highest running total during the call minus the total when it started: the
most tensor memory the call held at once beyond the weights and inputs that
existed before it. Memory outside PyTorch's allocator (gloo's transport
buffers, Python objects) is not included. The running total is read through
``experimental_event_tree()``, a private profiler API of torch 2.14.

One run of two gloo ranks measures, one call each, the same variants as the
time benchmarks: the DiT of ``bench_dit`` (unpatched and lite_boost P=1 on
rank 0 alone, lite_boost P=2 and Wan's own ``use_sp`` P=2 on both ranks) and
the VAE decode of ``bench_vae`` (Wan's untiled decode on rank 0 alone,
``tiled_decode`` and ``spatial_decode`` on both ranks). For the VAE the returned video is counted,
because every rank returns the full video; its size is listed.

Usage::

    python benchmarks/bench_memory.py [--quick] [--wait-for-load]
"""

from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

import bench_dit
import bench_vae
from common import BenchmarkResult, Target, format_ratio, script_main, silence_wan_cpu_warnings, wan_cpu_attention

MIB = 2 ** 20


def peak_allocated_bytes(call: Callable[[], object]) -> int:
    """Run ``call()`` and return the peak of tensor memory it held beyond the start."""
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        # A first allocation whose event gives the running total at the start.
        torch.empty(1)
        with torch.no_grad():
            output = call()
    events = []
    stack = list(profiler.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size,
                           event.extra_fields.total_allocated))
        stack.extend(event.children)
    del output
    if not events:
        raise RuntimeError(
            "torch.profiler recorded no allocation event during the call, so the "
            "peak cannot be measured; this needs a torch build whose profiler "
            "supports profile_memory=True on CPU")
    events.sort()
    baseline = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - baseline


def measure_on(world_size: int, call: Callable[[], object]) -> Optional[int]:
    """Return the peak bytes of ``call`` on the first ``world_size`` ranks, None on the others.

    The other ranks only enter the barriers.
    """
    dist.barrier()
    peak = peak_allocated_bytes(call) if dist.get_rank() < world_size else None
    dist.barrier()
    return peak


def dit_peaks(config: bench_dit.DitConfig, tokens: int) -> Dict[str, Optional[int]]:
    with wan_cpu_attention():
        variants = bench_dit.build_variants(config)
        warmup = bench_dit.build_inputs(config, config.warmup_tokens)
        for variant in variants:
            bench_dit.run_variant(variant, warmup)
        inputs = bench_dit.build_inputs(config, tokens)
        return {variant.name: measure_on(variant.world_size,
                                         lambda variant=variant: variant.model(**inputs))
                for variant in variants}


def vae_peaks(config: bench_vae.VaeConfig) -> Dict[str, Optional[int]]:
    from lite_boost.vae import spatial_decode, tiled_decode

    vae = bench_vae.build_vae(config)
    z, video = bench_vae.make_inputs(vae, config, config.num_latents)
    output_bytes = video.nbytes
    del video
    peaks = {
        "decode P=1 untiled": measure_on(
            1, lambda: vae.model.decode(z.unsqueeze(0), vae.scale).squeeze(0).float()),
        "decode P=2 temporal": measure_on(2, lambda: tiled_decode(vae, z)),
        "decode P=2 spatial": measure_on(2, lambda: spatial_decode(vae, z)),
    }
    peaks["video bytes"] = output_bytes
    return peaks


def measure_memory_on_ranks(dit_config, tokens, vae_config) -> Dict[str, Dict[str, Optional[int]]]:
    """Rank body: peaks of every variant on this rank."""
    silence_wan_cpu_warnings()
    return {"dit": dit_peaks(dit_config, tokens), "vae": vae_peaks(vae_config)}


def summarize(tokens: int, per_rank: list) -> BenchmarkResult:
    header = ["call", "P=1 peak MiB", "P=2 peak MiB, rank 0", "P=2 peak MiB, rank 1",
              "P=2 / P=1 (max over ranks)"]
    rows, targets, parts = [], [], []

    def ratio_row(label: str, group: str, single: str, parallel: str) -> float:
        p1 = per_rank[0][group][single]
        p2 = [rank_result[group][parallel] for rank_result in per_rank]
        ratio = max(p2) / p1
        rows.append([label, f"{p1 / MIB:.1f}", f"{p2[0] / MIB:.1f}", f"{p2[1] / MIB:.1f}",
                     format_ratio(ratio)])
        return ratio

    dit_ratio = ratio_row(f"DiT forward, {tokens} tokens: lite_boost", "dit",
                          bench_dit.LITE_P1, bench_dit.LITE_P2)
    ratio_row(f"DiT forward, {tokens} tokens: unpatched P=1, Wan use_sp P=2", "dit",
              bench_dit.UNPATCHED, bench_dit.WAN_SP_P2)
    temporal_ratio = ratio_row("VAE decode: P=1 untiled, P=2 temporal", "vae",
                               "decode P=1 untiled", "decode P=2 temporal")
    spatial_ratio = ratio_row("VAE decode: P=1 untiled, P=2 spatial", "vae",
                              "decode P=1 untiled", "decode P=2 spatial")
    video_mib = per_rank[0]["vae"]["video bytes"] / MIB
    parts += [f"DiT P=2/P=1 {dit_ratio:.2f}",
              f"VAE decode P=2/P=1 temporal {temporal_ratio:.2f}, spatial {spatial_ratio:.2f}"]
    targets += [
        Target(f"DiT peak activation memory per rank P=2 / P=1, {tokens} tokens",
               dit_ratio, 0.6, False),
        Target("VAE decode peak memory per rank P=2 / P=1, temporal", temporal_ratio,
               0.6, False),
        Target("VAE decode peak memory per rank P=2 / P=1, spatial", spatial_ratio,
               0.6, False),
    ]
    notes = [
        "Peak tensor memory allocated during one call beyond what existed before "
        "it, from torch.profiler's allocation events (profile_memory=True); "
        "allocations outside PyTorch's CPU allocator are not included.",
        f"The VAE figures include the returned video ({video_mib:.1f} MiB as float32), "
        "which Wan's decode returns on one rank and lite_boost's decode on every rank.",
    ]
    return BenchmarkResult(
        name="memory", title="5. Peak activation memory per rank",
        summary="bench_memory: " + "; ".join(parts), header=header, rows=rows,
        targets=targets, notes=notes)


def run(quick: bool) -> BenchmarkResult:
    from lite_boost.launch import run_on_ranks

    dit_config = bench_dit.QUICK if quick else bench_dit.FULL
    vae_config = bench_vae.QUICK if quick else bench_vae.FULL
    tokens = dit_config.token_counts[0]
    per_rank = run_on_ranks(measure_memory_on_ranks, 2, dit_config, tokens, vae_config)
    return summarize(tokens, per_rank)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n\n")[0])
