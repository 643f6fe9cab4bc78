"""End-to-end ``generate()`` of the tiny Wan2.2 TI2V pipeline, P=2 against P=1.

The pipeline is the demo's (``lite_boost.tiny.tiny_pipeline("ti2v")``: real
``WanTI2V``, DiT, scheduler and Wan2.2 VAE code, random weights, a stand-in
text encoder) with more frames and steps. Two kinds of runs alternate,
``repeats`` times each:

- a one-process run that times Wan's unpatched ``generate()``, with
  ``wan_sdpa_attention`` bound as its attention (``bench_dit`` compares
  lite_boost at P=1 with the unpatched DiT);
- two two-process runs (one thread each) that time the pipeline patched by
  ``ParallelManager``: once with its defaults (the degrees that its planner
  picks and its default VAE mode), once with ``vae_parallel="temporal"``,
  the VAE mode that the demo uses.

Every run first calls ``generate()`` once with 1 step and 5 frames, so
one-time costs (the first-call input check, lazy initialisation) are not
timed. The speedup is the median P=1 unpatched time over the median P=2 time.

Usage::

    python benchmarks/bench_e2e.py [--quick] [--wait-for-load]
"""

import dataclasses
import time
from typing import Dict, List, Optional

import torch

from common import (BenchmarkResult, Target, format_ratio, median, script_main,
                    silence_wan_cpu_warnings, wan_cpu_attention)

PROMPT = "a red fox running through fresh snow"

UNPATCHED = "unpatched P=1"
DEFAULTS = "lite_boost P=2, defaults"
TEMPORAL = "lite_boost P=2, temporal VAE"


@dataclasses.dataclass(frozen=True)
class E2eConfig:
    """Pipeline sizes: the demo's DiT (dim 384, 12 heads, 4 layers) at larger sizes."""

    width: int = 384
    height: int = 384
    frame_num: int = 81
    sampling_steps: int = 20
    dit_dim: int = 384
    dit_heads: int = 12
    dit_layers: int = 4
    repeats: int = 2
    seed: int = 0


FULL = E2eConfig()
QUICK = E2eConfig(width=256, height=256, frame_num=9, sampling_steps=3, repeats=1)


def build_pipeline(config: E2eConfig):
    from lite_boost.tiny import tiny_pipeline

    return tiny_pipeline("ti2v", seed=config.seed, dim=config.dit_dim,
                         num_heads=config.dit_heads, num_layers=config.dit_layers)


def generate(pipe, config: E2eConfig, *, frame_num=None, sampling_steps=None) -> torch.Tensor:
    return pipe.generate(PROMPT, size=(config.width, config.height),
                         frame_num=frame_num or config.frame_num,
                         sampling_steps=sampling_steps or config.sampling_steps,
                         seed=config.seed, offload_model=False)


def timed_generate(pipe, config: E2eConfig) -> float:
    started = time.perf_counter()
    generate(pipe, config)
    return time.perf_counter() - started


def warm_up(pipe, config: E2eConfig) -> None:
    generate(pipe, config, frame_num=5, sampling_steps=1)


def time_single_process(config: E2eConfig) -> Dict[str, float]:
    """Rank body of a one-process run: Wan's unpatched pipeline."""
    silence_wan_cpu_warnings()
    with wan_cpu_attention():
        pipe = build_pipeline(config)
        warm_up(pipe, config)
        return {UNPATCHED: timed_generate(pipe, config)}


def time_two_processes(config: E2eConfig, vae_parallel: Optional[str]) -> Dict[str, object]:
    """Rank body of a two-process run: ``ParallelManager(pipe, vae_parallel=...)``."""
    from lite_boost.parallel import ParallelManager, get_state
    from lite_boost.vae import tiling_options

    silence_wan_cpu_warnings()
    with wan_cpu_attention():
        pipe = ParallelManager(build_pipeline(config), vae_parallel=vae_parallel)
        warm_up(pipe, config)
        seconds = timed_generate(pipe, config)
    return {"seconds": seconds, "degrees": get_state().degrees,
            "vae_mode": tiling_options(pipe.vae).mode}


def summarize(config: E2eConfig, times: Dict[str, List[float]], setups: dict) -> BenchmarkResult:
    medians = {name: median(values) for name, values in times.items()}
    baseline = medians[UNPATCHED]
    speedup = baseline / medians[DEFAULTS]
    speedup_temporal = baseline / medians[TEMPORAL]
    header = ["variant", "s per generate()", "speedup over unpatched P=1",
              "degrees (cfg, ulysses, ring)", "VAE mode"]
    rows = [[UNPATCHED, f"{baseline:.2f}", "1.000", "-", "Wan's untiled"]]
    for name in (DEFAULTS, TEMPORAL):
        rows.append([name, f"{medians[name]:.2f}", format_ratio(baseline / medians[name]),
                     str(setups[name]["degrees"]), setups[name]["vae_mode"]])
    notes = [
        f"Tiny WanTI2V (DiT dim {config.dit_dim}, {config.dit_heads} heads, "
        f"{config.dit_layers} layers; VAE width 8), {config.width}x{config.height}, "
        f"{config.frame_num} frames, {config.sampling_steps} steps with guidance, "
        f"fp32, {len(times[UNPATCHED])} runs of each kind, alternating; the time of "
        "a two-process run is that of its slower rank.",
    ]
    return BenchmarkResult(
        name="e2e", title="3. End-to-end generate()",
        summary=(f"bench_e2e: P=2 {speedup:.2f}x over unpatched P=1 with "
                 f"ParallelManager's defaults, {speedup_temporal:.2f}x with the temporal "
                 f"VAE ({baseline:.1f} s -> {medians[DEFAULTS]:.1f} s, "
                 f"{medians[TEMPORAL]:.1f} s)"),
        header=header, rows=rows,
        targets=[Target("end-to-end speedup P=2 over unpatched P=1, ParallelManager "
                        "defaults", speedup, 1.6, True),
                 Target("end-to-end speedup P=2 over unpatched P=1, temporal VAE",
                        speedup_temporal, 1.6, True)],
        notes=notes)


def run(quick: bool) -> BenchmarkResult:
    from lite_boost.launch import run_on_ranks

    config = QUICK if quick else FULL
    times: Dict[str, List[float]] = {UNPATCHED: [], DEFAULTS: [], TEMPORAL: []}
    setups = {}
    # Wan's sampling loop draws a tqdm progress bar on every rank.
    quiet = {"TQDM_DISABLE": "1"}
    for _ in range(config.repeats):
        single = run_on_ranks(time_single_process, 1, config, env=quiet)[0]
        times[UNPATCHED].append(single[UNPATCHED])
        for name, vae_parallel in ((DEFAULTS, None), (TEMPORAL, "temporal")):
            per_rank = run_on_ranks(time_two_processes, 2, config, vae_parallel, env=quiet)
            # Both ranks return the same video; the slower rank's time counts.
            times[name].append(max(rank["seconds"] for rank in per_rank))
            setups[name] = per_rank[0]
    return summarize(config, times, setups)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n\n")[0])
