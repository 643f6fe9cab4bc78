"""``lite-boost inspect``: patch the tiny pipeline on N ranks and dump its graphs.

Builds a tiny ``WanTI2V`` (``lite_boost.tiny``), patches it on N gloo ranks on
the CPU, runs ``generate()`` for one step so that the first forward records
the shapes, and writes the dump. No checkpoint is needed.
"""

import dataclasses
import os
from typing import List

from ..launch import run_on_ranks

# The graph whose diff and node table the README excerpt shows.
EXCERPT_GRAPH = "blocks.0.self_attn"


@dataclasses.dataclass(frozen=True)
class InspectOptions:
    nproc: int = 2
    # 160x96 pixels and 9 frames give 3 latent frames of 5x3 tokens: 45
    # tokens, which 2 and 4 ranks must pad.
    width: int = 160
    height: int = 96
    frame_num: int = 9
    # 6 heads divide by 1, 2, 3 and 6 ranks.
    dit_dim: int = 96
    dit_heads: int = 6
    dit_layers: int = 2
    seed: int = 0
    output_dir: str = os.path.join("lite_boost_out", "inspect")


@dataclasses.dataclass
class InspectResult:
    """Rank 0's view of the run: the report text and what it wrote."""

    summary: str
    excerpt_diff: str
    excerpt_table: str
    written: List[str]


def inspect_on_this_rank(options: InspectOptions) -> InspectResult:
    """Rank body: build and patch the tiny pipeline, run one step, write the dump."""
    from ..demo import _silence_cpu_warnings
    from ..parallel import ParallelManager
    from ..tiny import tiny_pipeline
    from .report import inspect

    _silence_cpu_warnings()
    pipe = tiny_pipeline("ti2v", seed=options.seed, dim=options.dit_dim,
                         num_heads=options.dit_heads, num_layers=options.dit_layers)
    ParallelManager(pipe)
    pipe.generate("a red fox running through fresh snow",
                  size=(options.width, options.height), frame_num=options.frame_num,
                  sampling_steps=1, seed=options.seed, offload_model=False)

    report = inspect(pipe)
    written = report.write(options.output_dir)
    graph = report.graph(EXCERPT_GRAPH)
    return InspectResult(summary=str(report), excerpt_diff=graph.diff,
                         excerpt_table=graph.table(), written=written)


def run_inspect(options: InspectOptions) -> InspectResult:
    """Run ``inspect_on_this_rank`` on ``options.nproc`` gloo ranks; return rank 0's result."""
    # A fixed Ulysses degree keeps every rank on one sequence, so the dump
    # shows the all_to_all rewrite at any --nproc.
    init_kwargs = {"backend": "gloo", "ulysses_degree": options.nproc}
    return run_on_ranks(inspect_on_this_rank, options.nproc, options,
                        init_kwargs=init_kwargs)[0]


def command_line(options: InspectOptions) -> str:
    """Return the ``lite-boost inspect`` command for ``options``, without --output-dir."""
    defaults = InspectOptions()
    words = ["lite-boost", "inspect"]
    for field in dataclasses.fields(InspectOptions):
        value = getattr(options, field.name)
        if field.name != "output_dir" and value != getattr(defaults, field.name):
            words += [f"--{field.name.replace('_', '-')}", str(value)]
    return " ".join(words)


def readme_excerpt(options: InspectOptions, result: InspectResult) -> str:
    """Return the Markdown excerpt that README.md shows, from a real run."""
    folder = f"model/{EXCERPT_GRAPH}"
    return "\n".join([
        "```text",
        f"$ {command_line(options)}",
        result.summary,
        "```",
        "",
        f"`{folder}/diff.patch`:",
        "",
        "```diff",
        result.excerpt_diff.rstrip("\n"),
        "```",
        "",
        f"The node table in `{folder}/summary.md` (shapes of rank 0's slice):",
        "",
        "```text",
        result.excerpt_table,
        "```",
    ]) + "\n"
