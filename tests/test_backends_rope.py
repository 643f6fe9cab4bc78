"""The float32 rope op and its optional pass, against Wan's float64 rope."""

import gc
import logging
import sys
import types

import pytest
import torch

from backend_cases import calls_of, self_attention_inputs
from dit_cases import CASES, build_model, run_model
from fake_torch_npu import make_fake_torch_npu
from lite_boost.model.dit import patch_dit, restore_dit
from lite_boost.ops import rope
from lite_boost.ops.attention import sdpa_attention
from lite_boost.ops.collectives import ulysses_all_to_all
from lite_boost.ops.rope import rope_apply_float32, rotation_tables
from lite_boost.passes import attention_passes, run_passes, trace_attention
from lite_boost.passes.lower_rope import LowerRopePass
from lite_boost.passes.meta import provenance
from reference import wan_reference_attention


def wan_freqs(head_dim):
    """Build WanModel's freqs table for ``head_dim``, as its __init__ does."""
    import wan.modules.model as wan_model

    third = head_dim // 6
    return torch.cat([wan_model.rope_params(1024, head_dim - 4 * third),
                      wan_model.rope_params(1024, 2 * third),
                      wan_model.rope_params(1024, 2 * third)], dim=1)


def wan_rope(x, grid_sizes, freqs):
    import wan.modules.model as wan_model

    return wan_model.rope_apply(x, grid_sizes, freqs)


def test_rope_error_against_wan_float64():
    # Head dim 128 as in the released Wan models, 21x30x52 latent tokens.
    grid = (21, 30, 52)
    tokens = grid[0] * grid[1] * grid[2]
    freqs = wan_freqs(128)
    x = torch.randn(1, tokens + 5, 2, 128, generator=torch.Generator().manual_seed(0))
    grid_sizes = torch.tensor([grid])

    out = rope_apply_float32(x, grid_sizes, freqs)
    expected = wan_rope(x, grid_sizes, freqs)

    assert out.dtype == torch.float32
    error = (out - expected).abs().max().item()
    assert error <= 1.2e-7 * x.abs().max().item(), error
    # Tokens past f*h*w are returned unchanged, as Wan does.
    assert torch.equal(out[:, tokens:], x[:, tokens:])


def test_rope_per_sample_grids():
    freqs = wan_freqs(16)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 50, 3, 16, generator=generator)
    grid_sizes = torch.tensor([[3, 4, 4], [2, 5, 4]])  # 48 and 40 tokens
    out = rope_apply_float32(x, grid_sizes, freqs)
    expected = wan_rope(x, grid_sizes, freqs)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(out[1, 40:], x[1, 40:])


def test_rope_bf16_input():
    freqs = wan_freqs(16)
    x = torch.randn(1, 12, 2, 16, generator=torch.Generator().manual_seed(2)).bfloat16()
    grid_sizes = torch.tensor([[1, 3, 4]])
    out = rope_apply_float32(x, grid_sizes, freqs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, wan_rope(x, grid_sizes, freqs), rtol=0, atol=1e-6)


def test_rope_grid_beyond_freqs():
    freqs = wan_freqs(16)
    x = torch.zeros(1, 1025, 1, 16)
    with pytest.raises(ValueError, match="1024 positions"):
        rope_apply_float32(x, torch.tensor([[1, 1025, 1]]), freqs)


def test_tables_cached_per_grid_and_device():
    freqs = wan_freqs(16)
    cpu = torch.device("cpu")
    first = rotation_tables(freqs, (2, 3, 4), cpu)
    assert rotation_tables(freqs, (2, 3, 4), cpu) is first
    other = rotation_tables(freqs, (2, 3, 5), cpu)
    assert other is not first
    assert other[0].shape == (30, 1, 16)
    assert other[0].dtype == torch.float32
    # Another freqs tensor with the same values has its own tables.
    assert rotation_tables(freqs.clone(), (2, 3, 4), cpu) is not first


def test_tables_bounded_and_weak():
    freqs = wan_freqs(16)
    cpu = torch.device("cpu")
    first = rotation_tables(freqs, (1, 1, 1), cpu)
    for width in range(2, rope.TABLES_PER_FREQS + 2):
        rotation_tables(freqs, (1, 1, width), cpu)
    assert len(rope._tables[freqs]) == rope.TABLES_PER_FREQS
    assert rotation_tables(freqs, (1, 1, 1), cpu) is not first

    # Tables of tensors that earlier tests dropped go away here, not below.
    gc.collect()
    entries = len(rope._tables)
    del freqs
    gc.collect()
    assert len(rope._tables) == entries - 1


def test_rope_uses_npu_rotary_mul(monkeypatch):
    fake = make_fake_torch_npu()
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    freqs = wan_freqs(16)
    x = torch.randn(2, 20, 3, 16, generator=torch.Generator().manual_seed(3))
    grid_sizes = torch.tensor([[1, 4, 4], [1, 3, 4]])
    expected = rope_apply_float32(x, grid_sizes, freqs)

    monkeypatch.setattr(rope, "npu_rotary_mul_applies", lambda x: True)
    out = rope_apply_float32(x, grid_sizes, freqs)

    assert [call.name for call in fake.calls] == ["npu_rotary_mul"] * 2
    assert fake.calls[0].options == {"rotary_mode": "interleave"}
    assert fake.calls[0].shapes == [(1, 16, 3, 16), (1, 16, 1, 16), (1, 16, 1, 16)]
    assert fake.calls[1].shapes[0] == (1, 12, 3, 16)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_npu_rotary_mul_limits():
    def stand_in(device_type, heads, head_dim):
        # torch.device("npu") needs torch_npu; the check reads only these fields.
        return types.SimpleNamespace(device=types.SimpleNamespace(type=device_type),
                                     size=lambda dim: (1, 8, heads, head_dim)[dim])

    assert rope.npu_rotary_mul_applies(stand_in("npu", 40, 128))
    assert not rope.npu_rotary_mul_applies(stand_in("cpu", 40, 128))
    assert not rope.npu_rotary_mul_applies(stand_in("npu", 1000, 128))
    assert not rope.npu_rotary_mul_applies(stand_in("npu", 40, 896))


# The pass.

@pytest.fixture
def model():
    return build_model(CASES[1])  # 12 heads of dim 16


def rope_calls(graph_module):
    import wan.modules.model as wan_model

    return calls_of(graph_module, wan_model.rope_apply)


def test_rope_pass_off_by_default(model):
    graph_module = trace_attention(model.blocks[0].self_attn)
    run_passes(graph_module, attention_passes(1, sdpa_attention))
    assert len(rope_calls(graph_module)) == 2
    assert calls_of(graph_module, rope_apply_float32) == []


def test_rope_pass_replaces_both_calls(model):
    graph_module = trace_attention(model.blocks[0].self_attn)
    run_passes(graph_module, attention_passes(1, sdpa_attention, rope="float32"))
    lowered = calls_of(graph_module, rope_apply_float32)
    assert rope_calls(graph_module) == []
    assert len(lowered) == 2
    assert {provenance(node)["pass"] for node in lowered} == {"LowerRopePass"}
    assert {provenance(node)["replaces"] for node in lowered} == {"rope_apply", "rope_apply_1"}
    assert "rope_apply_float32(" in graph_module.code


def test_rope_pass_leaves_cross_attention(model):
    graph_module = trace_attention(model.blocks[0].cross_attn)
    before = graph_module.code
    result = LowerRopePass()(graph_module)
    assert not result.modified
    assert graph_module.code == before


def test_rope_pass_runs_after_ulysses(model):
    graph_module = trace_attention(model.blocks[0].self_attn)
    run_passes(graph_module, attention_passes(2, sdpa_attention, rope="float32"))
    for node in calls_of(graph_module, rope_apply_float32):
        exchanged = node.args[0]
        assert exchanged.target is ulysses_all_to_all
        assert exchanged.kwargs == {"scatter_dim": 2, "gather_dim": 1}


def test_rope_pass_graph_matches_eager(model):
    block = model.blocks[0]
    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(1, sdpa_attention, rope="float32"))
    x, seq_lens, grid_sizes = self_attention_inputs()
    out = graph_module(x, seq_lens, grid_sizes, model.freqs)
    with wan_reference_attention():
        eager = block.self_attn(x, seq_lens, grid_sizes, model.freqs)
    tolerance = 1e-5 * eager.abs().max().item()
    assert (out - eager).abs().max().item() <= tolerance


def test_invalid_rope_choice():
    with pytest.raises(ValueError, match="valid choices"):
        attention_passes(1, sdpa_attention, rope="float16")


def test_patch_dit_with_float32_rope(single_process, caplog):
    case = CASES[1]
    with wan_reference_attention():
        expected = run_model(build_model(case), case)
    patched = build_model(case)
    with caplog.at_level(logging.INFO, logger="lite_boost.model.dit"):
        patch = patch_dit(patched, single_process, rope="float32")
    assert "rope float32" in caplog.text
    assert len(calls_of(patch.graphs["blocks.1.self_attn"], rope_apply_float32)) == 2

    out = run_model(patched, case)
    tolerance = 1e-5 * expected.abs().max().item()
    assert (out - expected).abs().max().item() <= tolerance
    assert restore_dit(patched)
