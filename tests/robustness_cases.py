"""Rank bodies for the robustness tests (module-level, so ranks can import them)."""

import time

import torch
import torch.distributed as dist

from dit_cases import build_inputs, build_model, run_model, DitCase
from generate_cases import CASES as GENERATE_CASES, generate

# Two videos of different sizes in one batch (Wan's list input).
BATCH_CASE = DitCase("t2v", 4, (2, 6, 8), 40, seed=21)


def batch_inputs():
    generator = torch.Generator().manual_seed(5)
    x = [torch.randn(16, 2, 6, 8, generator=generator),    # 24 tokens
         torch.randn(16, 3, 4, 10, generator=generator)]   # 30 tokens
    # Wan expands a 1-D t with t.expand(t.size(0), seq_len), which works only
    # for batch 1, so a batch passes per-token timesteps [B, seq_len].
    t = (torch.rand(2, 1, generator=generator) * 1000).expand(2, 31).contiguous()
    context = [torch.randn(5, 32, generator=generator),
               torch.randn(11, 32, generator=generator)]
    return {"x": x, "t": t, "context": context, "seq_len": 31}


def run_batch(model):
    with torch.no_grad():
        return model(**batch_inputs())


def resolution_calls():
    """Two calls at other sizes and frame counts on one patched pipeline."""
    import dataclasses

    first = GENERATE_CASES[0]
    return [first, dataclasses.replace(first, size=(64, 96), frame_num=9)]


def parallel_behaviour():
    """Rank body at P=2: seed=-1, new resolution, batch input, rank mismatch."""
    from lite_boost.debug import rewritten_graphs
    from lite_boost.parallel import ParallelManager, get_state
    from lite_boost.tiny import tiny_pipeline

    results = {}

    # seed=-1: every rank must end with the same video.
    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3), vae_chunk_size=2)
    results["random_seed_video"] = pipe.generate(
        "a prompt", size=(64, 64), frame_num=5, sampling_steps=2, seed=-1,
        offload_model=False)

    # A new resolution and frame count on the same patched pipeline.
    graphs_before = len(rewritten_graphs(pipe.model))
    hooks_before = len(vars(pipe.model)["_lite_boost_dit_patch"].hooks.handles)
    results["resolution_videos"] = [generate(case, pipeline=pipe)
                                    for case in resolution_calls()]
    results["graphs_after"] = (len(rewritten_graphs(pipe.model)) - graphs_before,
                               len(vars(pipe.model)["_lite_boost_dit_patch"].hooks.handles)
                               - hooks_before)

    # Two videos of different sizes in one raw WanModel call.
    results["batch"] = run_batch(ParallelManager(build_model(BATCH_CASE)))

    # Different inputs on different ranks: every rank raises.
    case = DitCase("t2v", 4, (2, 6, 8), 24, seed=1)
    model = ParallelManager(build_model(case))
    inputs = build_inputs(case)
    inputs["x"] = [inputs["x"][0] + get_state().rank]
    try:
        with torch.no_grad():
            model(**inputs)
        results["mismatch_error"] = None
    except RuntimeError as error:
        results["mismatch_error"] = str(error)
    return results


def heads_not_divisible():
    """Rank body at P=3 with 4 heads: the error comes before any collective."""
    from lite_boost.parallel import ParallelManager

    entered = []
    for name in ("all_to_all_single", "all_gather_into_tensor", "all_gather_single",
                 "broadcast", "all_reduce", "barrier"):
        original = getattr(dist, name)
        setattr(dist, name, lambda *a, _name=name, _original=original, **k:
                (entered.append(_name), _original(*a, **k))[1])
    model = build_model(DitCase("t2v", 4, (2, 6, 8), 24, seed=1))
    try:
        ParallelManager(model)
        message = None
    except ValueError as error:
        message = str(error)
    patched = "_lite_boost_dit_patch" in vars(model)
    return message, entered, patched


def collective_timeout():
    """Rank body at P=2: rank 1 never enters the all_to_all of rank 0."""
    from lite_boost.ops.collectives import CollectiveError, ulysses_all_to_all
    from lite_boost.parallel import get_state

    if get_state().rank == 1:
        time.sleep(12)
        return None
    started = time.monotonic()
    try:
        ulysses_all_to_all(torch.ones(1, 4, 2, 8), scatter_dim=2, gather_dim=1)
        message = None
    except CollectiveError as error:
        message = str(error)
    return message, time.monotonic() - started
