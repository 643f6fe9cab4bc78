"""Rank bodies for the fused q/k/v all_to_all, checked against separate exchanges."""

import torch
import torch.distributed as dist

from dit_cases import CASES, build_model

# 48 tokens on a 3 x 4 x 4 grid, of which the last 3 are padding keys.
GRID = (3, 4, 4)
TOKENS = 48
SEQ_LEN = 45


class AllToAllCallCounter:
    """Count ``dist.all_to_all_single`` calls made inside the ``with`` block."""

    def __enter__(self):
        self.calls = 0
        self._original = dist.all_to_all_single

        def counted(*args, **kwargs):
            self.calls += 1
            return self._original(*args, **kwargs)

        dist.all_to_all_single = counted
        return self

    def __exit__(self, *exc_info):
        dist.all_to_all_single = self._original


def self_attention_outputs():
    """Rank body: one self-attention graph with separate and with fused exchanges.

    Returns (separate output, fused output, all_to_all calls of each, the
    unpatched module's output sliced to this rank), each for this rank's
    slice of the sequence.
    """
    from lite_boost.ops.attention import sdpa_attention
    from lite_boost.parallel import get_state
    from lite_boost.passes import attention_passes, run_passes, trace_attention
    from reference import wan_reference_attention

    state = get_state()
    world_size, rank = state.ulysses_degree, dist.get_rank()
    model = build_model(CASES[1])
    module = model.blocks[0].self_attn
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, TOKENS, module.dim, generator=generator)
    seq_lens = torch.tensor([SEQ_LEN])
    grid_sizes = torch.tensor([GRID])
    local = TOKENS // world_size
    x_local = x[:, rank * local:(rank + 1) * local]

    outputs, calls = [], []
    for fuse_qkv in (False, True):
        graph_module = trace_attention(module)
        run_passes(graph_module, attention_passes(world_size, sdpa_attention,
                                                  fuse_qkv=fuse_qkv))
        with AllToAllCallCounter() as counter:
            outputs.append(graph_module(x_local, seq_lens, grid_sizes, model.freqs))
        calls.append(counter.calls)
    with wan_reference_attention():
        reference = module(x, seq_lens, grid_sizes, model.freqs)
    return outputs[0], outputs[1], calls, reference[:, rank * local:(rank + 1) * local]


def mixed_dtype_exchange():
    """Rank body: q and k in fp32 with v in bf16, as under bf16 autocast.

    Returns (fused outputs, separate outputs, all_to_all calls of the fused one).
    """
    from lite_boost.ops.collectives import all_to_all_4d, ulysses_all_to_all_qkv

    generator = torch.Generator().manual_seed(100 + dist.get_rank())
    q, k = (torch.randn(1, 6, 4, 8, generator=generator) for _ in range(2))
    v = torch.randn(1, 6, 4, 8, generator=generator).bfloat16()
    with AllToAllCallCounter() as counter:
        fused = ulysses_all_to_all_qkv(q, k, v)
    separate = [all_to_all_4d(t, 2, 1, dist.group.WORLD) for t in (q, k, v)]
    return fused, separate, counter.calls
