"""Compare the spatial and temporal VAE modes with Wan's untiled encode and decode.

One launch of ``--nproc`` gloo ranks on 127.0.0.1 (one thread per rank) runs,
for each direction and each repeat, in a rotating order:

- ``untiled``: Wan's own ``Wan2_x_VAE.decode`` / ``encode`` on rank 0 alone,
  while the other ranks wait in a barrier (the P=1 baseline);
- ``temporal``: ``patch_vae(mode="temporal")`` with its default chunking;
- ``spatial``: ``patch_vae(mode="spatial")``.

Reported per mode: the median over repeats of the wall time of the slowest
rank; the speed-up, which is the median over repeats of the untiled time
divided by the mode's time in the same repeat; the median CPU seconds of the
busiest rank (``time.process_time``, all threads of the process), which a
loaded machine disturbs less than wall time; the peak resident memory added
during the call on each rank; and the max |difference| and PSNR against the
untiled output.

Peak memory comes from a second launch of fresh ranks, which run one warm-up
call and one measured call per mode. At their start, ``mallopt`` sets glibc
to serve every block of 64 KiB or more with its own ``mmap`` and to return
freed memory at once, so the resident set follows the live tensors instead
of keeping freed heap pages. (Set after the timed calls instead, it
overstated the peaks by up to 2x, because the heap was already fragmented.)
The figure is Linux's ``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs`` before the call, minus ``VmRSS`` before the call.
It counts everything the call allocated, including the buffers of the
gathers and the output.

The VAE is the real ``Wan2_1_VAE`` / ``Wan2_2_VAE`` with tiny widths and
random weights (``lite_boost.tiny.tiny_vae``). Real Wan VAEs are 12 to 20
times wider, so they spend a larger share of the time computing and a smaller
share communicating than these runs.

Usage::

    python benchmarks/vae_modes.py                       # print the table
    python benchmarks/vae_modes.py --results benchmarks/RESULTS.md
"""

import argparse
import ctypes
import ctypes.util
import dataclasses
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

import lite_boost  # noqa: F401  (lets `import wan` work without CUDA)
from lite_boost.launch import run_on_ranks

MODES = ("untiled", "temporal", "spatial")
DIRECTIONS = ("decode", "encode")
LATENT_CHANNELS = {"2.1": 16, "2.2": 48}
SPATIAL_STRIDE = {"2.1": 8, "2.2": 16}

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Options:
    version: str
    dim: int
    frames: int
    height: int
    width: int
    repeats: int
    nproc: int
    directions: tuple
    seed: int = 0

    @property
    def latent_frames(self) -> int:
        return 1 + (self.frames - 1) // 4

    def inputs(self) -> Dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        stride = SPATIAL_STRIDE[self.version]
        latents = torch.randn(LATENT_CHANNELS[self.version], self.latent_frames,
                              self.height // stride, self.width // stride,
                              generator=generator)
        video = torch.rand(3, self.frames, self.height, self.width,
                           generator=generator) * 2 - 1
        return {"decode": latents, "encode": video}


@dataclasses.dataclass
class Run:
    """One timed call of one mode on one rank."""

    direction: str
    mode: str
    repeat: int
    seconds: float
    cpu_seconds: float
    output: Optional[torch.Tensor]


# Per rank: (direction, mode) -> peak resident memory one call added, in
# KiB, or None where it could not be measured.
PeakMemory = Dict[tuple, Optional[int]]


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    library = ctypes.CDLL(name)
    if not hasattr(library, "mallopt") or not hasattr(library, "malloc_trim"):
        return None
    return library


def _return_freed_memory_at_once() -> bool:
    """Make glibc unmap freed blocks of 64 KiB or more; False where unsupported."""
    glibc = _glibc()
    if glibc is None:
        return False
    return bool(glibc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
                and glibc.mallopt(_M_TRIM_THRESHOLD, 0))


def _peak_kib_of_call(call: Callable[[], object]) -> Optional[int]:
    """Return the resident memory that ``call()`` added at its peak, in KiB."""
    glibc = _glibc()
    if glibc is not None:
        glibc.malloc_trim(0)
    baseline_kib = _status_kib("VmRSS")
    if baseline_kib is None or not _reset_peak_rss():
        call()
        return None
    call()
    return _status_kib("VmHWM") - baseline_kib


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM to the current VmRSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _call(vae, direction: str, mode: str, x: torch.Tensor) -> torch.Tensor:
    from lite_boost.vae import patch_vae

    if mode == "untiled":
        # The class's method, which the instance attributes of patch_vae
        # do not reach.
        method = type(vae).decode if direction == "decode" else type(vae).encode
        return method(vae, [x])[0]
    patch_vae(vae, mode=mode)
    method = vae.decode if direction == "decode" else vae.encode
    return method([x])[0]


def _build(options: Options):
    from lite_boost.tiny import tiny_vae
    from lite_boost.vae.temporal import data_parallel_layout

    group, rank, _ = data_parallel_layout()
    vae = tiny_vae(options.version, directory=tempfile.mkdtemp(prefix="bench_"),
                   dim=options.dim, seed=options.seed)
    return group, rank, vae, options.inputs()


def _measure_memory(options: Options) -> PeakMemory:
    """Rank body: the peak memory of one call per mode, after a warm-up call."""
    import torch.distributed as dist

    measurable = _return_freed_memory_at_once()
    group, rank, vae, inputs = _build(options)
    peak_kib = {}
    for direction in options.directions:
        for mode in MODES:
            dist.barrier(group=group)
            if mode == "untiled" and rank != 0:
                continue
            _call(vae, direction, mode, inputs[direction])
            peak = _peak_kib_of_call(
                lambda: _call(vae, direction, mode, inputs[direction]))
            peak_kib[(direction, mode)] = peak if measurable else None
    dist.barrier(group=group)
    return peak_kib


def _measure_time(options: Options) -> List[Run]:
    """Rank body: the timed calls, in rotating order, after a warm-up call per mode."""
    import torch.distributed as dist

    group, rank, vae, inputs = _build(options)

    # One untimed call per mode, so that first-call costs are not measured.
    for direction in options.directions:
        for mode in MODES:
            if mode != "untiled" or rank == 0:
                _call(vae, direction, mode, inputs[direction])
            dist.barrier(group=group)

    runs = []
    for repeat in range(options.repeats):
        # Rotate the order so that a change in the machine's load hits every
        # mode alike.
        order = MODES[repeat % len(MODES):] + MODES[:repeat % len(MODES)]
        for direction in options.directions:
            for mode in order:
                dist.barrier(group=group)
                if mode == "untiled" and rank != 0:
                    continue
                started = time.perf_counter()
                cpu_started = time.process_time()
                output = _call(vae, direction, mode, inputs[direction])
                cpu_seconds = time.process_time() - cpu_started
                seconds = time.perf_counter() - started
                keep = output if repeat == 0 and rank == 0 else None
                runs.append(Run(direction, mode, repeat, seconds, cpu_seconds,
                                keep))
    dist.barrier(group=group)
    return runs


def _psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    # Decoded frames lie in [-1, 1], a peak-to-peak range of 2.
    mse = (output - reference).double().pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4 / mse)


def summarize(options: Options, per_rank: List[List[Run]],
              peaks_per_rank: List[PeakMemory]) -> List[dict]:
    rows = []
    for direction in options.directions:
        reference = next(r.output for r in per_rank[0]
                         if r.direction == direction and r.mode == "untiled"
                         and r.output is not None)
        untiled_slowest = None
        for mode in MODES:
            # Slowest rank per repeat, then the median over repeats.
            slowest, busiest = [], []
            for repeat in range(options.repeats):
                runs = [r for runs in per_rank for r in runs
                        if (r.direction, r.mode, r.repeat) == (direction, mode, repeat)]
                slowest.append(max(r.seconds for r in runs))
                busiest.append(max(r.cpu_seconds for r in runs))
            if mode == "untiled":
                untiled_slowest = slowest
            speedups = [u / m for u, m in zip(untiled_slowest, slowest)]

            peaks = [peaks.get((direction, mode)) for peaks in peaks_per_rank]

            output = next(r.output for r in per_rank[0]
                          if (r.direction, r.mode) == (direction, mode)
                          and r.output is not None)
            difference = (output - reference).abs().max().item()
            rows.append(dict(
                direction=direction, mode=mode,
                seconds=statistics.median(slowest),
                spread=(min(slowest), max(slowest)),
                speedup=statistics.median(speedups),
                cpu_seconds=statistics.median(busiest), peaks=peaks,
                max_difference=difference,
                relative_difference=difference / reference.abs().max().item(),
                psnr=_psnr(output, reference) if direction == "decode" else None))
    return rows


def _format_mib(kib: Optional[int]) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def format_table(options: Options, rows: List[dict]) -> str:
    lines = [
        "| direction | mode | time (s), median [min, max] | speed-up vs untiled | "
        "CPU s, busiest rank | "
        + " | ".join(f"peak MiB rank {r}" for r in range(options.nproc))
        + " | max abs diff | max diff / max abs ref | PSNR (dB) |",
        "|" + "---|" * (8 + options.nproc),
    ]
    for row in rows:
        low, high = row["spread"]
        psnr = row["psnr"]
        if psnr is None:
            psnr_text = "-"
        elif math.isinf(psnr):
            psnr_text = "inf"
        else:
            psnr_text = f"{psnr:.1f}"
        lines.append(
            f"| {row['direction']} | {row['mode']} | {row['seconds']:.2f} "
            f"[{low:.2f}, {high:.2f}] | {row['speedup']:.2f} | "
            f"{row['cpu_seconds']:.2f} | "
            + " | ".join(_format_mib(p) for p in row["peaks"])
            + f" | {row['max_difference']:.2e} | {row['relative_difference']:.2e} "
            f"| {psnr_text} |")
    return "\n".join(lines)


def results_section(options: Options, table: str, load_before, load_after,
                    wall_seconds: float) -> str:
    stride = SPATIAL_STRIDE[options.version]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return "\n".join([
        f"## VAE modes, {datetime.date.today().isoformat()}",
        "",
        f"- Command: `{command}`",
        f"- Wan{options.version} VAE (`wan22==2.2.11`), tiny width: encoder dim "
        f"{options.dim}, random weights, float32.",
        f"- Input: {options.frames} frames of {options.height}x{options.width} "
        f"pixels, latents [{LATENT_CHANNELS[options.version]}, "
        f"{options.latent_frames}, {options.height // stride}, "
        f"{options.width // stride}].",
        f"- {options.nproc} gloo ranks on 127.0.0.1, one thread each; untiled on "
        f"rank 0 alone. {options.repeats} timed repeats per mode, order "
        "rotated each repeat, after one untimed call.",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores, load average (1 min) "
        f"{load_before:.1f} before and {load_after:.1f} after; the cores are "
        "shared with other test runs. Whole run: "
        f"{wall_seconds:.0f} s.",
        "- Time: wall time of the slowest rank per repeat. Speed-up: median of "
        "the per-repeat ratios untiled / mode. CPU s: process CPU time of the "
        "busiest rank, median over repeats. Peak MiB: resident "
        "memory one call added at its peak (VmHWM minus VmRSS before the "
        "call, in fresh ranks with glibc set to unmap freed blocks of 64 KiB "
        "or more; see the script's docstring).",
        "",
        table,
        "",
    ])


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", choices=("2.1", "2.2"), default="2.2",
                        help="Wan VAE version (default 2.2)")
    parser.add_argument("--dim", type=int, default=8,
                        help="encoder width of the tiny VAE (default 8; Wan2.2 "
                        "uses 160)")
    parser.add_argument("--frames", type=int, default=17,
                        help="video frames, 4n+1 (default 17)")
    parser.add_argument("--height", type=int, default=192,
                        help="frame height in pixels (default 192)")
    parser.add_argument("--width", type=int, default=192,
                        help="frame width in pixels (default 192)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per mode (default 5)")
    parser.add_argument("--nproc", type=int, default=2,
                        help="ranks for the parallel modes (default 2)")
    parser.add_argument("--directions", default="decode,encode",
                        help="comma-separated subset of decode,encode")
    parser.add_argument("--results", metavar="PATH",
                        help="append a dated section to this Markdown file")
    args = parser.parse_args(argv)

    directions = tuple(d for d in args.directions.split(",") if d)
    invalid = [d for d in directions if d not in DIRECTIONS]
    if invalid or not directions:
        parser.error(f"--directions {args.directions!r} is invalid: use a "
                     f"comma-separated subset of {DIRECTIONS}")
    stride = SPATIAL_STRIDE[args.version]
    if args.height % stride or args.width % stride:
        parser.error(f"--height and --width must be multiples of {stride} for "
                     f"the Wan{args.version} VAE")
    options = Options(args.version, args.dim, args.frames, args.height,
                      args.width, args.repeats, args.nproc, directions)
    return options, args.results


def main(argv=None) -> None:
    options, results_path = parse_options(argv)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    per_rank = run_on_ranks(_measure_time, options.nproc, options)
    peaks_per_rank = run_on_ranks(_measure_memory, options.nproc, options)
    wall_seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    rows = summarize(options, per_rank, peaks_per_rank)
    table = format_table(options, rows)
    section = results_section(options, table, load_before, load_after,
                              wall_seconds)
    print(section)
    if results_path:
        with open(results_path, "a", encoding="utf-8") as results:
            results.write("\n" + section)


if __name__ == "__main__":
    main()
