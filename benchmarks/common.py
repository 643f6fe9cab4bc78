"""Helpers that the benchmark scripts share.

- ``wait_for_quiet_machine``: wait until the 1-minute load average is low, so
  figures measured on a shared machine are comparable.
- ``wan_sdpa_attention`` and ``wan_cpu_attention``: Wan's ``flash_attention``
  asserts CUDA tensors, so the unpatched model and Wan's own sequence-parallel
  path call this SDPA function instead. It runs ``sdpa_attention``, the kernel
  that lite_boost lowers to on CPU, so every variant runs the same kernel.
- ``BenchmarkResult`` and ``Target``: what each script returns to
  ``run_all.py``, which writes RESULTS.md.

Timing rules for all scripts: one thread per rank, every variant warmed up
once, repeats interleaved (A B C A B C ...) inside one run, medians reported,
and ratios computed from those medians.
"""

import contextlib
import dataclasses
import os
import statistics
import time
import warnings
from typing import Iterator, List, Optional, Sequence

import torch

import lite_boost  # noqa: F401  (lets `import wan` work without CUDA)
from lite_boost.ops.attention import sdpa_attention

# The figures in RESULTS.md are taken when the 1-minute load average is below
# this value, or after MAX_LOAD_WAIT_S of waiting, with the load recorded.
LOAD_THRESHOLD = 1.0
MAX_LOAD_WAIT_S = 600.0


@dataclasses.dataclass
class LoadRecord:
    """The 1-minute load average before a benchmark, and how long it waited.

    Attributes:
        load: load average when the benchmark started.
        waited_s: seconds spent waiting for it to fall below the threshold.
        quiet: whether it fell below the threshold before the wait ran out.
    """

    load: float
    waited_s: float
    quiet: bool


def wait_for_quiet_machine(threshold: float = LOAD_THRESHOLD,
                           max_wait_s: float = MAX_LOAD_WAIT_S,
                           poll_s: float = 10.0) -> LoadRecord:
    """Poll ``os.getloadavg()`` until the 1-minute value is below ``threshold``.

    Gives up after ``max_wait_s`` seconds and returns the load at that time,
    so a busy machine delays the run but never blocks it.
    """
    started = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - started
        if load < threshold:
            return LoadRecord(load, waited, quiet=True)
        if waited >= max_wait_s:
            return LoadRecord(load, waited, quiet=False)
        time.sleep(poll_s)


def wan_sdpa_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0,
                       softmax_scale=None, q_scale=None, causal=False,
                       window_size=(-1, -1), deterministic=False,
                       dtype=torch.bfloat16, version=None):
    """Wan's ``flash_attention`` signature over lite_boost's ``sdpa_attention``.

    On CPU the kernel computes in q's dtype, so fp32 inputs stay fp32 and
    ``dtype`` has no effect. Arguments that Wan's DiT never passes raise.
    """
    if q_lens is not None or dropout_p or tuple(window_size) != (-1, -1):
        raise NotImplementedError(
            "wan_sdpa_attention supports only q_lens=None, dropout_p=0 and "
            f"window_size=(-1, -1), got q_lens={q_lens!r}, "
            f"dropout_p={dropout_p!r}, window_size={window_size!r}")
    return sdpa_attention(q, k, v, k_lens=k_lens, softmax_scale=softmax_scale,
                          q_scale=q_scale, causal=causal, dtype=dtype)


@contextlib.contextmanager
def wan_cpu_attention() -> Iterator[None]:
    """Bind ``wan_sdpa_attention`` wherever Wan looks up ``flash_attention``.

    ``wan.modules.model`` (the DiT) and ``wan.distributed.ulysses`` (Wan's own
    sequence parallelism) each import the function by name.
    """
    import wan.distributed.ulysses as wan_ulysses
    import wan.modules.model as wan_model

    modules = (wan_model, wan_ulysses)
    originals = [module.flash_attention for module in modules]
    for module in modules:
        module.flash_attention = wan_sdpa_attention
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.flash_attention = original


def silence_wan_cpu_warnings() -> None:
    """Hide the warnings Wan emits at every ``autocast("cuda")`` block on CPU."""
    warnings.filterwarnings("ignore", message="CUDA is not available")
    warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast")
    warnings.filterwarnings("ignore", message="User provided device_type of 'cuda'")
    warnings.filterwarnings("ignore", category=FutureWarning)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def psnr(result: torch.Tensor, reference: torch.Tensor,
         peak_to_peak: float = 2.0) -> float:
    """Return the PSNR in dB of ``result`` against ``reference``.

    ``peak_to_peak`` is the signal range: 2 for Wan's videos in [-1, 1].
    Identical tensors give infinity.
    """
    mse = (result.double() - reference.double()).square().mean().item()
    if mse == 0:
        return float("inf")
    return 10 * torch.log10(torch.tensor(peak_to_peak ** 2 / mse)).item()


@dataclasses.dataclass
class Target:
    """A speed or memory target, with the measured value and its limit.

    Attributes:
        name: what is compared, e.g. "DiT speedup P=2 over P=1, 8192 tokens".
        value: the measured figure.
        limit: the bound the figure must reach.
        at_least: True when ``value >= limit`` meets the target, False when
            ``value <= limit`` does.
    """

    name: str
    value: float
    limit: float
    at_least: bool

    @property
    def met(self) -> bool:
        if self.at_least:
            return self.value >= self.limit
        return self.value <= self.limit

    def describe(self) -> str:
        relation = ">=" if self.at_least else "<="
        verdict = "met" if self.met else "MISSED"
        return f"{self.name}: {self.value:.3f} (target {relation} {self.limit}) {verdict}"


@dataclasses.dataclass
class BenchmarkResult:
    """Figures of one benchmark script, which ``run_all.py`` collects.

    Attributes:
        name: short name, e.g. "dit".
        title: heading for RESULTS.md.
        summary: the one line the script prints.
        header, rows: a table of every figure, as strings.
        targets: the speed and memory targets that this benchmark checks.
        notes: sentences that RESULTS.md prints under the table (how a figure
            was measured, what it includes).
        load: the load average before the benchmark.
        load_after: the 1-minute load average when it finished.
        seconds: wall time of the benchmark.
    """

    name: str
    title: str
    summary: str
    header: List[str]
    rows: List[List[str]]
    targets: List[Target] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)
    load: Optional[LoadRecord] = None
    load_after: float = float("nan")
    seconds: float = float("nan")


def timed_benchmark(run, quick: bool, wait_for_load: bool) -> BenchmarkResult:
    """Run ``run(quick)`` after the load wait; record the load and wall time."""
    load = (wait_for_quiet_machine() if wait_for_load
            else LoadRecord(os.getloadavg()[0], 0.0, quiet=True))
    started = time.monotonic()
    result = run(quick)
    result.seconds = time.monotonic() - started
    result.load = load
    result.load_after = os.getloadavg()[0]
    return result


def script_main(run, description: str, argv=None) -> BenchmarkResult:
    """Command-line entry of one benchmark script: parse, run, print the summary."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repeats (a couple of minutes)")
    parser.add_argument("--wait-for-load", action="store_true",
                        help=f"wait up to {MAX_LOAD_WAIT_S:.0f} s for the 1-minute "
                             f"load average to fall below {LOAD_THRESHOLD}")
    parser.add_argument("--table", action="store_true",
                        help="also print every figure as a Markdown table")
    args = parser.parse_args(argv)
    result = timed_benchmark(run, args.quick, args.wait_for_load)
    print(result.summary, flush=True)
    if args.table:
        print(markdown_table(result.header, result.rows), flush=True)
    for target in result.targets:
        print(f"  {target.describe()}", flush=True)
    return result


def format_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def format_ratio(value: float) -> str:
    return f"{value:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
