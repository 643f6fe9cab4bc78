"""VAE decode and encode: lite_boost's data-parallel temporal tiling at P=2 against P=1.

One run of two gloo ranks (one thread each) builds the real ``Wan2_2_VAE``
at tiny width (``lite_boost.tiny.tiny_vae``, encoder width 8, decoder width
16, random weights) and times, interleaved repeat by repeat:

- decode: Wan's own untiled ``vae.model.decode`` on rank 0 alone (P=1), and
  ``tiled_decode`` on both ranks with the default chunking (one chunk per
  rank) for each overlap setting;
- encode: Wan's own untiled ``vae.model.encode`` on rank 0 alone, and
  ``tiled_encode`` on both ranks with the default options.

For each overlap it reports max |difference| and PSNR against the untiled
result (videos clamped to [-1, 1] as Wan returns them, PSNR over that range of
2), and checks that the two-rank result equals ``sequential=True`` on one rank
with the same chunks, which is the result that temporal tiling defines. One
more row times ``spatial_decode``, ``ParallelManager``'s default VAE mode,
which splits every frame into slabs of rows and reproduces the untiled decode.

Usage::

    python benchmarks/bench_vae.py [--quick] [--wait-for-load]
"""

import dataclasses
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from common import (BenchmarkResult, Target, format_ms, format_ratio, median,
                    psnr, script_main, silence_wan_cpu_warnings)

LATENT_CHANNELS = 48  # Wan2.2 VAE
# Name of the row that times lite_boost's spatial mode, for comparison.
SPATIAL = "spatial (rows split)"


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """Latent size, overlap settings and repeats.

    ``num_latents`` 31 decodes to 121 frames, the frame count of Wan2.2 TI2V.
    """

    num_latents: int = 31
    latent_height: int = 8
    latent_width: int = 8
    overlaps: Tuple[int, ...] = (1, 2, 4)
    default_overlap: int = 2
    repeats: int = 3
    vae_dim: int = 8

    def blend_for(self, overlap: int) -> int:
        # lite_boost's default blend is 1; it must stay below the overlap.
        return min(1, overlap - 1)


FULL = VaeConfig()
QUICK = VaeConfig(num_latents=9, latent_height=4, latent_width=4, overlaps=(1, 2),
                  repeats=1)


def build_vae(config: VaeConfig):
    from lite_boost.tiny import tiny_vae

    with tempfile.TemporaryDirectory(prefix="lite_boost_bench_vae_") as directory:
        return tiny_vae("2.2", directory=directory, dim=config.vae_dim, seed=0)


def make_inputs(vae, config: VaeConfig, num_latents: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return random latents and their untiled decode, clamped, as the video to encode."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(LATENT_CHANNELS, num_latents, config.latent_height,
                    config.latent_width, generator=generator)
    with torch.no_grad():
        video = vae.model.decode(z.unsqueeze(0), vae.scale).squeeze(0).float().clamp(-1, 1)
    return z, video


def timed_on(world_size: int, run) -> Tuple[Optional[float], Optional[torch.Tensor]]:
    """Run ``run()`` between barriers on ``world_size`` ranks; rank 0 returns (s, output)."""
    rank = dist.get_rank()
    dist.barrier()
    if rank >= world_size:
        dist.barrier()
        return None, None
    started = time.perf_counter()
    with torch.no_grad():
        output = run()
    seconds = time.perf_counter() - started
    dist.barrier()
    return seconds, output


def decode_variants(vae, z: torch.Tensor, config: VaeConfig) -> List[tuple]:
    """Return (name, world_size, function) for every decode variant."""
    from lite_boost.vae import spatial_decode, tiled_decode

    variants = [("decode P=1 untiled", 1,
                 lambda: vae.model.decode(z.unsqueeze(0), vae.scale).squeeze(0).float())]
    for overlap in config.overlaps:
        blend = config.blend_for(overlap)
        variants.append((f"decode P=2 overlap {overlap}", 2,
                         lambda overlap=overlap, blend=blend: tiled_decode(
                             vae, z, overlap=overlap, blend=blend)))
    variants.append((f"decode P=2 {SPATIAL}", 2, lambda: spatial_decode(vae, z)))
    return variants


def encode_variants(vae, video: torch.Tensor, config: VaeConfig) -> List[tuple]:
    from lite_boost.vae import tiled_encode

    blend = config.blend_for(config.default_overlap)
    return [
        ("encode P=1 untiled", 1,
         lambda: vae.model.encode(video.unsqueeze(0), vae.scale).squeeze(0).float()),
        (f"encode P=2 overlap {config.default_overlap}", 2,
         lambda: tiled_encode(vae, video, overlap=config.default_overlap, blend=blend)),
    ]


def time_vae_on_ranks(config: VaeConfig) -> Optional[dict]:
    """Rank body: interleaved decodes and encodes; rank 0 returns times and quality."""
    silence_wan_cpu_warnings()
    vae = build_vae(config)
    # Warm-up: every variant once on 2 latents (5 frames).
    z, video = make_inputs(vae, config, num_latents=2)
    for _, world_size, run in (decode_variants(vae, z, config)
                               + encode_variants(vae, video, config)):
        timed_on(world_size, run)

    z, video = make_inputs(vae, config, config.num_latents)
    variants = decode_variants(vae, z, config) + encode_variants(vae, video, config)
    times: Dict[str, List[float]] = {name: [] for name, _, _ in variants}
    outputs: Dict[str, torch.Tensor] = {}
    for repeat in range(config.repeats):
        shift = repeat % len(variants)
        for name, world_size, run in variants[shift:] + variants[:shift]:
            seconds, output = timed_on(world_size, run)
            if seconds is not None:
                times[name].append(seconds)
                outputs[name] = output

    if dist.get_rank() != 0:
        return None
    return {"times": times, "quality": compare_outputs(vae, z, video, outputs, config),
            "frames": video.shape[1], "size": tuple(video.shape[2:])}


def compare_outputs(vae, z: torch.Tensor, video: torch.Tensor,
                    outputs: Dict[str, torch.Tensor], config: VaeConfig) -> Dict[str, dict]:
    """Return, per P=2 variant, max |diff| and PSNR against untiled and sequential runs.

    The sequential run computes the same chunks one after another in this
    process. Temporal tiling defines its result as that run's, which is
    computed for the default overlap only.
    """
    from lite_boost.vae import tiled_decode, tiled_encode

    chunk_size = -(-config.num_latents // 2)
    blend = config.blend_for(config.default_overlap)
    with torch.no_grad():
        sequential = {
            "decode": tiled_decode(vae, z, chunk_size=chunk_size,
                                   overlap=config.default_overlap, blend=blend,
                                   sequential=True),
            "encode": tiled_encode(vae, video, chunk_size=chunk_size,
                                   overlap=config.default_overlap, blend=blend,
                                   sequential=True),
        }
    quality = {}
    for name, output in outputs.items():
        direction = name.split()[0]
        if "P=2" not in name:
            continue
        untiled = outputs[f"{direction} P=1 untiled"]
        if direction == "decode":
            # Wan returns decoded videos clamped to [-1, 1].
            compared, reference = output.clamp(-1, 1), untiled.clamp(-1, 1)
            quality_db = psnr(compared, reference)
        else:
            compared, reference = output, untiled
            quality_db = float("nan")
        entry = {"max_diff": (compared - reference).abs().max().item(),
                 "psnr": quality_db, "sequential_diff": None}
        if name.endswith(f"overlap {config.default_overlap}"):
            entry["sequential_diff"] = (output - sequential[direction]).abs().max().item()
        quality[name] = entry
    return quality


def summarize(config: VaeConfig, measured: dict) -> BenchmarkResult:
    times = {name: median(values) for name, values in measured["times"].items()}
    header = ["variant", "ms", "speedup over P=1", "max |diff| vs untiled",
              "PSNR vs untiled (dB)", "max |diff| vs sequential run of the same chunks"]
    rows, targets, parts = [], [], []
    for direction in ("decode", "encode"):
        untiled_name = f"{direction} P=1 untiled"
        rows.append([untiled_name, format_ms(times[untiled_name]), "1.000", "0", "-", "-"])
        for name, quality in measured["quality"].items():
            if not name.startswith(direction):
                continue
            speedup = times[untiled_name] / times[name]
            sequential = "-"
            if quality["sequential_diff"] is not None:
                sequential = f"{quality['sequential_diff']:.1e}"
                parts.append(f"{direction} P=2 {speedup:.2f}x (max|diff| vs sequential "
                             f"{sequential})")
                if direction == "decode":
                    targets.append(Target("VAE decode speedup P=2 over P=1 (default overlap "
                                          f"{config.default_overlap})", speedup, 1.7, True))
            psnr_text = "-" if quality["psnr"] != quality["psnr"] else f"{quality['psnr']:.1f}"
            rows.append([name, format_ms(times[name]), format_ratio(speedup),
                         f"{quality['max_diff']:.3e}", psnr_text, sequential])
    frames = measured["frames"]
    height, width = measured["size"]
    notes = [
        f"Tiny real Wan2_2_VAE (width {config.vae_dim}, decoder width "
        f"{2 * config.vae_dim}, random weights), {config.num_latents} latents "
        f"{LATENT_CHANNELS}x{config.latent_height}x{config.latent_width} <-> "
        f"{frames} frames of {height}x{width}, fp32, {config.repeats} interleaved repeats.",
        "P=2 uses lite_boost's default chunking (one chunk per rank, "
        f"ceil({config.num_latents}/2) latents) and blend = min(1, overlap - 1). "
        "PSNR is over the [-1, 1] range of the clamped videos; the encode rows "
        "compare latents and give no PSNR.",
    ]
    return BenchmarkResult(
        name="vae", title="2. VAE decode and encode (temporal data parallel)",
        summary="bench_vae: " + "; ".join(parts), header=header, rows=rows,
        targets=targets, notes=notes)


def run(quick: bool) -> BenchmarkResult:
    from lite_boost.launch import run_on_ranks

    config = QUICK if quick else FULL
    measured = run_on_ranks(time_vae_on_ranks, 2, config)[0]
    return summarize(config, measured)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n\n")[0])
