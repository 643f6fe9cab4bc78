"""Rank bodies for the hybrid (CFG x Ulysses x ring) tests."""

import torch

from dit_cases import DitCase, build_inputs, build_model

HEAD_COUNTS = (4, 6, 12)


def hybrid_case(num_heads: int) -> DitCase:
    # 30 tokens padded by Wan to 31: divisible by none of 2, 4, 6, 8.
    return DitCase("t2v", num_heads, (2, 6, 10), 31, seed=7 + num_heads)


def factorisations(world_size: int, num_heads: int):
    """Every (cfg, ulysses, ring) with product world_size that can run."""
    from lite_boost.parallel.planner import candidate_degrees

    return candidate_degrees(num_heads, world_size, guidance=True)


def negative_context():
    return [torch.randn(9, 32, generator=torch.Generator().manual_seed(9))]


def guidance_calls(model, case: DitCase, mismatch: bool = False, steps: int = 2):
    """Wan's call pattern for guided steps: prompt, then negative prompt.

    CFG parallel starts at the second step, after it has seen the pair. With
    ``mismatch``, the second step's negative call gets other latents, so CFG
    parallel must notice and compute it instead of reusing its result.
    """
    inputs = build_inputs(case)
    null = negative_context()
    outputs = []
    with torch.no_grad():
        for step in range(steps):
            x = [u + step for u in inputs["x"]]
            outputs.append(model(x, inputs["t"], inputs["context"], case.seq_len)[0])
            if mismatch and step == 1:
                x = [u * 0.5 for u in x]
            outputs.append(model(x, inputs["t"], null, case.seq_len)[0])
    return outputs


def run_factorisations(world_size: int):
    """Rank body: every factorisation for every head count, then restore."""
    import lite_boost
    from lite_boost.parallel import ParallelManager, configure_degrees

    results = {}
    for num_heads in HEAD_COUNTS:
        case = hybrid_case(num_heads)
        for degrees in factorisations(world_size, num_heads):
            configure_degrees(*degrees)
            model = ParallelManager(build_model(case), guidance=degrees[0] == 2)
            # Without CFG every call runs the same way: one step is enough.
            steps = 2 if degrees[0] == 2 else 1
            results[(num_heads, degrees)] = guidance_calls(model, case, steps=steps)
            lite_boost.restore(model)
    return results


def run_cfg_fallback():
    """Rank body at P=2 with CFG: a mismatched negative call falls back."""
    from lite_boost.parallel import ParallelManager, configure_degrees

    configure_degrees(2, 1, 1)
    case = hybrid_case(4)
    model = ParallelManager(build_model(case), guidance=True)
    outputs = guidance_calls(model, case, mismatch=True)
    forward = vars(model)["forward"]
    return outputs, forward.parallel_steps, forward.fallbacks


def run_planned_generate():
    """Rank body: a guided generate() with the degrees the planner picks."""
    from generate_cases import CASES, generate
    from lite_boost.parallel import ParallelManager, get_state
    from lite_boost.tiny import tiny_pipeline

    case = CASES[2]  # WanT2V, two experts, guidance on
    pipe = ParallelManager(tiny_pipeline(case.kind, seed=3),
                           vae_chunk_size=case.vae_chunk_size)
    video = generate(case, pipeline=pipe)
    # At world size 1 no CFG forward is installed.
    steps = [getattr(vars(model).get("forward"), "parallel_steps", 0)
             for model in (pipe.low_noise_model, pipe.high_noise_model)]
    return video, get_state().degrees, steps
