"""DiT forward: lite_boost at P=1 and P=2 against the unpatched model and Wan's own SP.

One run of two gloo ranks (one thread each) times four variants of the same
WanModel (dim 512, 8 heads, 4 layers, fp32, random weights), interleaved
repeat by repeat:

- ``unpatched``: Wan's model on rank 0 alone, with ``wan_sdpa_attention``
  bound as its ``flash_attention``;
- ``lite_boost P=1``: the model patched for one rank (no collective), on
  rank 0 alone;
- ``lite_boost P=2``: the model patched for both ranks;
- ``Wan use_sp P=2``: Wan's ``sp_dit_forward`` and ``sp_attn_forward`` (from
  ``wan.distributed.sequence_parallel``) bound as in ``WanTI2V`` with
  ``use_sp=True``, with ``dtype=torch.float32`` so that q, k and v stay fp32,
  and the same SDPA kernel bound in ``wan.distributed.ulysses``.

While rank 0 runs a one-rank variant, rank 1 waits in a barrier, which uses
no CPU on gloo. The P=1 variants therefore see a machine as idle as the P=2
ones. ``--quick`` times 4096 tokens twice instead of 8192 and 16384 tokens.

Usage::

    python benchmarks/bench_dit.py [--quick] [--wait-for-load]
"""

import copy
import dataclasses
import functools
import time
import types
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from common import (BenchmarkResult, Target, format_ms, format_ratio, median,
                    script_main, silence_wan_cpu_warnings, wan_cpu_attention)

# Latent frames of 64 x 64 latents, 1024 tokens each after Wan's 1x2x2 patches.
LATENT_HEIGHT = 64
LATENT_WIDTH = 64
TOKENS_PER_FRAME = (LATENT_HEIGHT // 2) * (LATENT_WIDTH // 2)
LATENT_CHANNELS = 16

UNPATCHED = "unpatched"
LITE_P1 = "lite_boost P=1"
LITE_P2 = "lite_boost P=2"
WAN_SP_P2 = "Wan use_sp P=2"


@dataclasses.dataclass(frozen=True)
class DitConfig:
    """Model size and the token counts to time.

    text_len 512 is Wan's own context length; the text embedding width is
    kept small because the text encoder is not part of the DiT forward.
    """

    dim: int = 512
    num_heads: int = 8
    num_layers: int = 4
    ffn_dim: int = 2048
    freq_dim: int = 256
    text_dim: int = 64
    text_len: int = 512
    token_counts: Tuple[int, ...] = (8192, 16384)
    repeats: Tuple[int, ...] = (5, 3)
    warmup_tokens: int = 1024


FULL = DitConfig()
QUICK = DitConfig(token_counts=(4096,), repeats=(2,))


def build_model(config: DitConfig) -> torch.nn.Module:
    from lite_boost.tiny import tiny_dit

    return tiny_dit("t2v", in_dim=LATENT_CHANNELS, out_dim=LATENT_CHANNELS,
                    dim=config.dim, num_heads=config.num_heads,
                    num_layers=config.num_layers, ffn_dim=config.ffn_dim,
                    text_dim=config.text_dim, text_len=config.text_len,
                    freq_dim=config.freq_dim, seed=0)


def build_inputs(config: DitConfig, tokens: int, seed: int = 1) -> dict:
    """Return WanModel.forward arguments for a t2v latent of ``tokens`` tokens."""
    if tokens % TOKENS_PER_FRAME != 0:
        raise ValueError(
            f"tokens={tokens} is not a multiple of {TOKENS_PER_FRAME}, the "
            f"tokens of one {LATENT_HEIGHT}x{LATENT_WIDTH} latent frame")
    generator = torch.Generator().manual_seed(seed)
    frames = tokens // TOKENS_PER_FRAME
    x = [torch.randn(LATENT_CHANNELS, frames, LATENT_HEIGHT, LATENT_WIDTH,
                     generator=generator)]
    context = [torch.randn(config.text_len, config.text_dim, generator=generator)]
    return {"x": x, "t": torch.tensor([500.0]), "context": context, "seq_len": tokens}


def single_rank_state(state):
    """Return a copy of ``state`` for a single process: degree 1, no groups.

    The P=1 variant is patched with it inside the two-rank run, so its graphs
    are those of a single-process ``ParallelManager`` run: no collective and
    no sequence-sharding hooks.
    """
    changes = {"world_size": 1, "rank": 0, "ulysses_degree": 1}
    for field in dataclasses.fields(state):
        if field.name.endswith("_group"):
            changes[field.name] = None
    return dataclasses.replace(state, **changes)


def bind_wan_sequence_parallel(model: torch.nn.Module) -> None:
    """Bind Wan's own sequence-parallel forwards as ``use_sp=True`` does, in fp32."""
    from wan.distributed.sequence_parallel import sp_attn_forward, sp_dit_forward

    for block in model.blocks:
        # sp_attn_forward casts q, k and v to `dtype`, bfloat16 by default.
        block.self_attn.forward = functools.partial(
            sp_attn_forward, block.self_attn, dtype=torch.float32)
    model.forward = types.MethodType(sp_dit_forward, model)


@dataclasses.dataclass
class Variant:
    name: str
    model: torch.nn.Module
    world_size: int


def build_variants(config: DitConfig) -> List[Variant]:
    from lite_boost.model.dit import patch_dit
    from lite_boost.parallel import get_state

    state = get_state()
    unpatched = build_model(config)
    lite_p1 = copy.deepcopy(unpatched)
    patch_dit(lite_p1, single_rank_state(state))
    lite_p2 = copy.deepcopy(unpatched)
    patch_dit(lite_p2, state)
    wan_sp = copy.deepcopy(unpatched)
    bind_wan_sequence_parallel(wan_sp)
    return [Variant(UNPATCHED, unpatched, 1), Variant(LITE_P1, lite_p1, 1),
            Variant(LITE_P2, lite_p2, 2), Variant(WAN_SP_P2, wan_sp, 2)]


def run_variant(variant: Variant, inputs: dict) -> Tuple[Optional[float], Optional[torch.Tensor]]:
    """Run one forward between two barriers; return (seconds, output) on rank 0.

    Ranks outside a one-rank variant only enter the barriers.
    """
    rank = dist.get_rank()
    dist.barrier()
    if variant.world_size == 1 and rank != 0:
        dist.barrier()
        return None, None
    started = time.perf_counter()
    with torch.no_grad():
        output = variant.model(**inputs)[0]
    seconds = time.perf_counter() - started
    dist.barrier()
    return seconds, output


def time_dit_on_ranks(config: DitConfig) -> Optional[dict]:
    """Rank body: interleaved forwards of every variant; rank 0 returns the times.

    Returns ``{"times": {tokens: {variant: [seconds, ...]}}, "errors":
    {tokens: {variant: max|diff| / max|unpatched|}}}`` on rank 0, None on
    rank 1.
    """
    silence_wan_cpu_warnings()
    with wan_cpu_attention():
        variants = build_variants(config)
        warmup_inputs = build_inputs(config, config.warmup_tokens)
        for variant in variants:
            run_variant(variant, warmup_inputs)

        times: Dict[int, Dict[str, List[float]]] = {}
        errors: Dict[int, Dict[str, float]] = {}
        for tokens, repeats in zip(config.token_counts, config.repeats):
            inputs = build_inputs(config, tokens)
            times[tokens] = {variant.name: [] for variant in variants}
            outputs = {}
            for repeat in range(repeats):
                # Rotate the order so no variant always runs first.
                shift = repeat % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    seconds, output = run_variant(variant, inputs)
                    if seconds is not None:
                        times[tokens][variant.name].append(seconds)
                        outputs[variant.name] = output
            if dist.get_rank() == 0:
                reference = outputs[UNPATCHED]
                scale = reference.abs().max().item()
                errors[tokens] = {
                    name: (output - reference).abs().max().item() / scale
                    for name, output in outputs.items()}
    if dist.get_rank() != 0:
        return None
    return {"times": times, "errors": errors}


def summarize(config: DitConfig, measured: dict) -> BenchmarkResult:
    header = ["tokens", "repeats", "unpatched ms", "lite P=1 ms", "lite P=2 ms",
              "Wan SP P=2 ms", "speedup P=2 (vs unpatched)", "speedup P=2 (vs lite P=1)",
              "efficiency", "lite P=2 / Wan P=2", "lite P=1 / unpatched",
              "max rel. diff lite P=2", "max rel. diff Wan P=2"]
    rows, targets, parts = [], [], []
    for tokens in config.token_counts:
        medians = {name: median(values) for name, values in measured["times"][tokens].items()}
        errors = measured["errors"][tokens]
        speedup = medians[UNPATCHED] / medians[LITE_P2]
        speedup_lite = medians[LITE_P1] / medians[LITE_P2]
        over_wan = medians[LITE_P2] / medians[WAN_SP_P2]
        p1_overhead = medians[LITE_P1] / medians[UNPATCHED]
        rows.append([str(tokens), str(len(measured["times"][tokens][UNPATCHED])),
                     format_ms(medians[UNPATCHED]), format_ms(medians[LITE_P1]),
                     format_ms(medians[LITE_P2]), format_ms(medians[WAN_SP_P2]),
                     format_ratio(speedup), format_ratio(speedup_lite),
                     format_ratio(speedup / 2), format_ratio(over_wan),
                     format_ratio(p1_overhead), f"{errors[LITE_P2]:.1e}",
                     f"{errors[WAN_SP_P2]:.1e}"])
        parts.append(f"{tokens} tokens: P=2 {speedup:.2f}x, eff {speedup / 2:.2f}, "
                     f"lite/Wan {over_wan:.3f}, P=1 patched/unpatched {p1_overhead:.3f}")
        targets += [
            Target(f"DiT speedup P=2 over unpatched P=1, {tokens} tokens", speedup, 1.85, True),
            Target(f"DiT lite_boost P=2 / Wan use_sp P=2, {tokens} tokens", over_wan, 1.0, False),
            Target(f"DiT patched P=1 / unpatched, {tokens} tokens", p1_overhead, 1.03, False),
        ]
    notes = [
        f"Model: WanModel t2v, dim {config.dim}, {config.num_heads} heads, "
        f"{config.num_layers} layers, ffn {config.ffn_dim}, text_len "
        f"{config.text_len}, fp32, random weights; latents "
        f"{LATENT_CHANNELS}x(tokens/{TOKENS_PER_FRAME})x{LATENT_HEIGHT}x{LATENT_WIDTH}.",
        "Each figure is the median of the interleaved repeats; ratios are "
        "ratios of medians. Efficiency is the speedup over the unpatched "
        "model divided by 2.",
        "Max rel. diff: max |output - unpatched output| / max |unpatched output|.",
    ]
    return BenchmarkResult(
        name="dit", title="1. DiT forward", summary="bench_dit: " + "; ".join(parts),
        header=header, rows=rows, targets=targets, notes=notes)


def run(quick: bool) -> BenchmarkResult:
    from lite_boost.launch import run_on_ranks

    config = QUICK if quick else FULL
    measured = run_on_ranks(time_dit_on_ranks, 2, config)[0]
    return summarize(config, measured)


if __name__ == "__main__":
    script_main(run, __doc__.split("\n\n")[0])
