"""Run the benchmarks of lite_boost's speed and memory targets and record them.

``make bench`` runs this script. It runs, in order:

1. ``bench_dit.py``: DiT forward, lite_boost P=1 and P=2 against the
   unpatched model and Wan's own sequence parallelism;
2. ``bench_vae.py``: VAE decode and encode, temporal tiling at P=2 against P=1;
3. ``bench_e2e.py``: end-to-end ``generate()`` at P=2 against P=1;
4. ``bench_bytes.py``: bytes moved per self-attention layer;
5. ``bench_memory.py``: peak activation memory per rank.

It prints one summary line per benchmark and one line per target. Before
each benchmark, a full run waits until the 1-minute load average is below 1.0.
After 10 minutes it goes on and records the load. Without waiting, a full run
takes about 20 minutes on two cores. It replaces its own section of
benchmarks/RESULTS.md and leaves the other sections as they are. ``--quick``
runs reduced sizes in a few minutes, does not wait and writes no file unless
``--output`` is given.

The exit status is 0 when every benchmark ran, whether or not the targets
were met: the targets depend on the machine.

Usage::

    python benchmarks/run_all.py [--quick] [--only dit,vae] [--output PATH]
"""

import argparse
import datetime
import os
import platform
import sys
import time
from typing import List, Optional

import torch

import bench_bytes
import bench_dit
import bench_e2e
import bench_memory
import bench_vae
from common import BenchmarkResult, markdown_table, timed_benchmark

BENCHMARKS = {
    "dit": bench_dit.run,
    "vae": bench_vae.run,
    "e2e": bench_e2e.run,
    "bytes": bench_bytes.run,
    "memory": bench_memory.run,
}

RESULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
SECTION_BEGIN = "<!-- section written by benchmarks/run_all.py: begin -->"
SECTION_END = "<!-- section written by benchmarks/run_all.py: end -->"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render_section(results: List[BenchmarkResult], command: str, started: datetime.datetime,
                   total_seconds: float) -> str:
    lines = [
        SECTION_BEGIN,
        f"## Targets on {started:%Y-%m-%d}",
        "",
        f"- Command: `{command}` (`make bench` runs it without arguments).",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; total time {total_seconds / 60:.1f} min.",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores ({cpu_model()}), one thread per rank, gloo on 127.0.0.1.",
        "- Load: the 1-minute load average before and after each benchmark; before "
        "each one the script waited up to 10 minutes for it to fall below 1.0.",
        "",
        markdown_table(
            ["target", "measured", "limit", "met"],
            [[target.name, f"{target.value:.3f}",
              (">= " if target.at_least else "<= ") + f"{target.limit}",
              "yes" if target.met else "**no**"]
             for result in results for target in result.targets]),
        "",
    ]
    for result in results:
        load = result.load
        lines += [
            f"### {result.title}",
            "",
            f"`{result.summary}`",
            "",
            f"Load {load.load:.2f} before (waited {load.waited_s:.0f} s"
            f"{'' if load.quiet else ', still above 1.0'}), {result.load_after:.2f} "
            f"after; {result.seconds:.0f} s.",
            "",
            markdown_table(result.header, result.rows),
            "",
        ]
        lines += [f"- {note}" for note in result.notes]
        lines.append("")
    lines.append(SECTION_END)
    return "\n".join(lines) + "\n"


def write_section(path: str, section: str) -> None:
    """Replace this script's section of ``path``, or append it when there is none."""
    try:
        with open(path, encoding="utf-8") as results_file:
            text = results_file.read()
    except FileNotFoundError:
        text = "# Benchmark results\n"
    begin, end = text.find(SECTION_BEGIN), text.find(SECTION_END)
    if begin >= 0 and end > begin:
        rest = text[end + len(SECTION_END):].lstrip("\n")
        text = text[:begin] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w", encoding="utf-8") as results_file:
        results_file.write(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes and repeats, no load wait (a few minutes)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated benchmarks to run (default: all of "
                             f"{', '.join(BENCHMARKS)})")
    parser.add_argument("--output", default=None,
                        help=f"file to write the results section to (default: "
                             f"{os.path.relpath(RESULTS_PATH)} for a full run of all "
                             "benchmarks, none for --quick)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"run_all: unknown benchmark(s) {unknown}; valid names: "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2

    output: Optional[str] = args.output
    if output is None and not args.quick and names == list(BENCHMARKS):
        output = RESULTS_PATH
    started = datetime.datetime.now(datetime.timezone.utc)
    started_monotonic = time.monotonic()
    results = []
    for name in names:
        result = timed_benchmark(BENCHMARKS[name], args.quick,
                                 wait_for_load=not args.quick)
        print(result.summary, flush=True)
        for target in result.targets:
            print(f"  {target.describe()}", flush=True)
        results.append(result)

    if output:
        arguments = argv if argv is not None else sys.argv[1:]
        command = " ".join(["python benchmarks/run_all.py", *arguments])
        write_section(output, render_section(
            results, command, started, time.monotonic() - started_monotonic))
        print(f"run_all: wrote {output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
