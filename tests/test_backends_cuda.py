"""CUDA attention lowering on CPU: flash-attn against a reference fake, and SDPA."""

import importlib.util
import os
import sys

import pytest
import torch

from backend_cases import (BATCH, HEADS, HEAD_DIM, K_LENS, TOKENS,
                           assert_equal_after_rounding, attention_inputs, calls_of,
                           k_lens_tensor, self_attention_inputs)
from dit_cases import CASES, build_model
from fake_flash_attn import make_fake_flash_attn
from fake_torch_npu import KernelContractError, SilentTrapError
from lite_boost.ops.attention import (flash_attn_available, flash_attn_varlen_attention,
                                      key_padding_mask, sdpa_attention,
                                      select_attention_kernel)
from lite_boost.passes import attention_passes, run_passes, trace_attention
from lite_boost.passes.meta import provenance
from reference import reference_attention, wan_reference_attention


@pytest.fixture
def fake_flash(monkeypatch):
    module = make_fake_flash_attn()
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return module


@pytest.fixture
def no_flash(monkeypatch):
    # A None entry in sys.modules makes `import flash_attn` raise ImportError.
    monkeypatch.setitem(sys.modules, "flash_attn", None)


# Kernel choice.

def test_cuda_takes_flash_attn(fake_flash):
    assert flash_attn_available()
    assert select_attention_kernel("cuda", head_dim=128) is flash_attn_varlen_attention


def test_cuda_without_flash_attn(no_flash):
    assert not flash_attn_available()
    assert select_attention_kernel("cuda", head_dim=128) is sdpa_attention


def test_cuda_head_dim_above_flash_limit(fake_flash):
    assert select_attention_kernel("cuda", head_dim=320) is sdpa_attention


def test_cpu_takes_sdpa(fake_flash):
    assert select_attention_kernel("cpu", head_dim=128) is sdpa_attention


def test_unknown_device_type():
    with pytest.raises(ValueError, match="valid choices: cpu, cuda, npu"):
        select_attention_kernel("xpu")


# flash_attn_varlen_func.

@pytest.mark.parametrize("padding", sorted(K_LENS))
def test_flash_matches_sdpa(fake_flash, padding):
    q, k, v = attention_inputs(torch.bfloat16)
    k_lens = k_lens_tensor(padding)
    out = flash_attn_varlen_attention(q, k, v, k_lens=k_lens)
    expected = sdpa_attention(q.float(), k.float(), v.float(), k_lens=k_lens)
    assert out.dtype == torch.bfloat16
    assert_equal_after_rounding(out, expected)


@pytest.mark.parametrize("padding", sorted(K_LENS))
def test_flash_call_arguments(fake_flash, padding):
    q, k, v = attention_inputs(torch.bfloat16)
    flash_attn_varlen_attention(q, k, v, k_lens=k_lens_tensor(padding))
    call = fake_flash.calls[-1]
    key_lengths = K_LENS[padding] or [TOKENS, TOKENS]
    assert call.options["cu_seqlens_q"] == [0, TOKENS, 2 * TOKENS]
    assert call.options["cu_seqlens_k"] == [0, key_lengths[0], sum(key_lengths)]
    assert call.options["cu_seqlens_dtypes"] == (torch.int32, torch.int32)
    assert call.options["max_seqlen_q"] == TOKENS
    assert call.options["max_seqlen_k"] == max(key_lengths)
    assert call.shapes[1] == (sum(key_lengths), HEADS, HEAD_DIM)


def test_flash_casts_fp32_inputs(fake_flash):
    q, k, v = attention_inputs(torch.float32)
    out = flash_attn_varlen_attention(q, k, v, k_lens=torch.tensor([TOKENS, 9]),
                                      dtype=torch.float16)
    assert fake_flash.calls[-1].dtypes == [torch.float16] * 3
    assert out.dtype == torch.float32
    expected = sdpa_attention(*(t.half().float() for t in (q, k, v)),
                              k_lens=torch.tensor([TOKENS, 9]))
    torch.testing.assert_close(out, expected, rtol=2 ** -10, atol=1e-3)


def test_flash_scales(fake_flash):
    q, k, v = attention_inputs(torch.bfloat16)
    out = flash_attn_varlen_attention(q, k, v, softmax_scale=0.3, q_scale=0.5)
    expected = sdpa_attention((q * 0.5).float(), k.float(), v.float(), softmax_scale=0.3)
    assert_equal_after_rounding(out, expected)


def test_flash_in_lowered_graph(fake_flash):
    model = build_model(CASES[1])
    block = model.blocks[0]
    kernel = select_attention_kernel("cuda", head_dim=16)
    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(1, kernel))
    lowered = calls_of(graph_module, flash_attn_varlen_attention)
    assert len(lowered) == 1
    assert provenance(lowered[0])["kernel"] == "flash_attn_varlen_attention"

    x, seq_lens, grid_sizes = self_attention_inputs()
    out = graph_module(x, seq_lens, grid_sizes, model.freqs)
    with wan_reference_attention():
        eager = block.self_attn(x, seq_lens, grid_sizes, model.freqs)
    assert fake_flash.calls[-1].options["cu_seqlens_k"] == [0, 42, 84]
    tolerance = 2e-2 * eager.abs().max().item()
    assert (out - eager).abs().max().item() <= tolerance


# SDPA with a boolean key mask, the CPU kernel and CUDA's fallback.

@pytest.mark.parametrize("padding", sorted(K_LENS))
def test_sdpa_matches_fp64_reference(padding):
    q, k, v = attention_inputs(torch.float32)
    k_lens = k_lens_tensor(padding)
    out = sdpa_attention(q, k, v, k_lens=k_lens)
    torch.testing.assert_close(out, reference_attention(q, k, v, k_lens=k_lens),
                               rtol=1e-5, atol=1e-6)


def test_sdpa_mask_is_boolean_attend():
    mask = key_padding_mask(torch.tensor([TOKENS, 17]), TOKENS, torch.device("cpu"))
    assert mask.dtype == torch.bool
    assert mask.shape == (BATCH, 1, 1, TOKENS)
    assert bool(mask[1, 0, 0, :17].all())
    assert not bool(mask[1, 0, 0, 17:].any())
    assert key_padding_mask(torch.tensor([TOKENS, TOKENS]), TOKENS, torch.device("cpu")) is None


# Each misuse of flash_attn_varlen_func that the fake must reject.

def packed_inputs(dtype=torch.bfloat16):
    return [t.flatten(0, 1) for t in attention_inputs(dtype)]


def cumulative(*values):
    return torch.tensor(values, dtype=torch.int32)


def test_trap_flash_fp32(fake_flash):
    with pytest.raises(KernelContractError, match="only fp16 and bf16"):
        fake_flash.flash_attn_varlen_func(
            *packed_inputs(torch.float32), cumulative(0, TOKENS, 2 * TOKENS),
            cumulative(0, TOKENS, 2 * TOKENS), TOKENS, TOKENS)


def test_trap_flash_int64_cu_seqlens(fake_flash):
    cu_seqlens = torch.tensor([0, TOKENS, 2 * TOKENS])
    with pytest.raises(KernelContractError, match="dtype int32"):
        fake_flash.flash_attn_varlen_func(
            *packed_inputs(), cu_seqlens, cu_seqlens, TOKENS, TOKENS)


def test_trap_flash_per_batch_lengths(fake_flash):
    # Wan's k_lens as they are, without the running sum and the leading 0.
    with pytest.raises(SilentTrapError, match="not cumulative"):
        fake_flash.flash_attn_varlen_func(
            *packed_inputs(), cumulative(0, TOKENS, 2 * TOKENS),
            cumulative(TOKENS, 17), TOKENS, TOKENS)


def test_trap_flash_padding_left_in(fake_flash):
    with pytest.raises(SilentTrapError, match="padding left"):
        fake_flash.flash_attn_varlen_func(
            *packed_inputs(), cumulative(0, TOKENS, 2 * TOKENS),
            cumulative(0, TOKENS, TOKENS + 17), TOKENS, TOKENS)


def test_trap_flash_short_max_seqlen(fake_flash):
    cu_seqlens = cumulative(0, TOKENS, 2 * TOKENS)
    with pytest.raises(SilentTrapError, match="below the longest"):
        fake_flash.flash_attn_varlen_func(
            *packed_inputs(), cu_seqlens, cu_seqlens, TOKENS, 17)


# benchmarks/device_check.py, in its reduced CPU mode.

@pytest.mark.timeout(120)
def test_device_check_quick_on_cpu(monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "device_check.py")
    spec = importlib.util.spec_from_file_location("device_check", path)
    device_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_check)

    assert device_check.main(["--device", "cpu", "--quick", "--rope", "float32"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("device_check: device=cpu kernel=sdpa_attention rope=float32")
    assert summary.endswith("result=PASS")
