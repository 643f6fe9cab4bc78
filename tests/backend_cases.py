"""Inputs and checks shared by the device-backend tests (tests/test_backends_*.py)."""

import torch

BATCH, TOKENS, HEADS, HEAD_DIM = 2, 24, 3, 32
# Wan's k_lens per case: None (no padding) or the valid keys of each batch.
K_LENS = {"unpadded": None, "padded": [TOKENS, 17]}


def attention_inputs(dtype=torch.float32, head_dim=HEAD_DIM, keys=TOKENS, seed=0):
    """Return q ``[B, TOKENS, N, D]`` and k, v ``[B, keys, N, D]`` in ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(BATCH, TOKENS, HEADS, head_dim, generator=generator)
    k = torch.randn(BATCH, keys, HEADS, head_dim, generator=generator)
    v = torch.randn(BATCH, keys, HEADS, head_dim, generator=generator)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def k_lens_tensor(name):
    lengths = K_LENS[name]
    return None if lengths is None else torch.tensor(lengths)


def assert_equal_after_rounding(actual, expected_fp32):
    """Check that ``actual`` equals ``expected_fp32`` rounded to actual's dtype.

    Both sides are computed in fp32 and rounded once, so they differ only
    where fp32 noise straddles a rounding boundary: by at most one ulp, in at
    most 1% of the values.
    """
    expected = expected_fp32.to(actual.dtype).float()
    difference = (actual.float() - expected).abs()
    one_ulp = torch.finfo(actual.dtype).eps * expected.abs()
    assert bool((difference <= one_ulp + 1e-30).all()), difference.max().item()
    assert (difference == 0).float().mean().item() >= 0.99


def calls_of(graph_module, target):
    return [n for n in graph_module.graph.nodes
            if n.op == "call_function" and n.target is target]


def self_attention_inputs(batch=2, tokens=45, dim=192):
    """x, seq_lens and grid_sizes for a self-attention module of width ``dim``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, dim, generator=generator)
    return x, torch.tensor([tokens - 3] * batch), torch.tensor([[3, 3, 5]] * batch)
