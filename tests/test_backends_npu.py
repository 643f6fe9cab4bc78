"""NPU attention lowering on CPU, against the reference fake of torch_npu."""

import logging
import sys

import pytest
import torch

from backend_cases import (BATCH, HEADS, HEAD_DIM, K_LENS, TOKENS,
                           assert_equal_after_rounding, attention_inputs, calls_of,
                           k_lens_tensor, self_attention_inputs)
from dit_cases import CASES, build_model
from fake_torch_npu import KernelContractError, SilentTrapError, make_fake_torch_npu
from lite_boost.ops import npu_attention
from lite_boost.ops.attention import sdpa_attention, select_attention_kernel
from lite_boost.ops.npu_attention import (npu_fused_infer_attention,
                                          npu_fusion_attention_varlen)
from lite_boost.passes import attention_passes, run_passes, trace_attention
from lite_boost.passes.meta import provenance
from reference import wan_reference_attention


@pytest.fixture
def fake_npu(monkeypatch):
    module = make_fake_torch_npu()
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    return module


# Kernel choice.

@pytest.mark.parametrize("head_dim, expected", [
    (16, npu_fused_infer_attention),
    (128, npu_fused_infer_attention),
    (512, npu_fused_infer_attention),
    (72, npu_fusion_attention_varlen),
    (528, npu_fusion_attention_varlen),
    (768, npu_fusion_attention_varlen),
    (800, sdpa_attention),
])
def test_npu_kernel_by_head_dim(head_dim, expected):
    assert select_attention_kernel("npu", head_dim=head_dim) is expected


def test_npu_kernel_needs_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        select_attention_kernel("npu")


def test_npu_fallback_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="lite_boost.ops.attention"):
        select_attention_kernel("npu", head_dim=72)
    assert "not a multiple of 16" in caplog.text
    assert "npu_fusion_attention in layout TND" in caplog.text


def test_select_does_not_import_torch_npu(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    select_attention_kernel("npu", head_dim=128)
    assert "torch_npu" not in sys.modules


# npu_fused_infer_attention_score.

@pytest.mark.parametrize("padding", sorted(K_LENS))
def test_fused_infer_matches_sdpa(fake_npu, padding):
    q, k, v = attention_inputs(torch.bfloat16)
    k_lens = k_lens_tensor(padding)
    out = npu_fused_infer_attention(q, k, v, k_lens=k_lens)
    expected = sdpa_attention(q.float(), k.float(), v.float(), k_lens=k_lens)
    assert out.dtype == torch.bfloat16
    assert_equal_after_rounding(out, expected)


@pytest.mark.parametrize("padding", sorted(K_LENS))
def test_fused_infer_call_arguments(fake_npu, padding):
    q, k, v = attention_inputs(torch.bfloat16)
    npu_fused_infer_attention(q, k, v, k_lens=k_lens_tensor(padding))
    call = fake_npu.calls[-1]
    assert call.name == "npu_fused_infer_attention_score"
    assert call.options["input_layout"] == "BSND"
    assert call.options["num_heads"] == HEADS
    assert call.options["scale"] == HEAD_DIM ** -0.5
    expected_lengths = None if padding == "unpadded" else K_LENS[padding]
    assert call.options["actual_seq_lengths_kv"] == expected_lengths
    assert call.options["actual_seq_lengths"] is None
    assert not call.options["atten_mask"]


def test_fused_infer_casts_fp32_to_bf16(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    out = npu_fused_infer_attention(q, k, v, k_lens=torch.tensor([TOKENS, 5]))
    assert fake_npu.calls[-1].dtypes == [torch.bfloat16] * 3
    assert out.dtype == torch.float32
    expected = sdpa_attention(*(t.bfloat16().float() for t in (q, k, v)),
                              k_lens=torch.tensor([TOKENS, 5]))
    torch.testing.assert_close(out, expected, rtol=2 ** -7, atol=1e-3)


def test_fused_infer_makes_inputs_contiguous(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16)
    # [B, N, L, D] storage seen as [B, L, N, D]: the views are not contiguous.
    q_view, k_view, v_view = (t.transpose(1, 2).contiguous().transpose(1, 2)
                              for t in (q, k, v))
    assert not q_view.is_contiguous()
    out = npu_fused_infer_attention(q_view, k_view, v_view)
    assert torch.equal(out, npu_fused_infer_attention(q, k, v))


def test_fused_infer_scales(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16)
    out = npu_fused_infer_attention(q, k, v, softmax_scale=0.3, q_scale=0.5)
    assert fake_npu.calls[-1].options["scale"] == 0.3
    expected = sdpa_attention((q * 0.5).float(), k.float(), v.float(), softmax_scale=0.3)
    assert_equal_after_rounding(out, expected)


def test_fused_infer_rejects_head_dim_72(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16, head_dim=72)
    with pytest.raises(ValueError, match="npu_fusion_attention_varlen"):
        npu_fused_infer_attention(q, k, v)
    assert fake_npu.calls == []


def test_fused_infer_rejects_causal(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16)
    with pytest.raises(NotImplementedError, match="causal"):
        npu_fused_infer_attention(q, k, v, causal=True)


def test_scale_keyword_from_schema():
    npu_attention.fused_infer_scale_keyword.cache_clear()
    try:
        # No torch_npu operator is registered here, so the 7.x name is used.
        assert npu_attention.fused_infer_scale_keyword() == "scale"
    finally:
        npu_attention.fused_infer_scale_keyword.cache_clear()


def test_scale_value_keyword_release(monkeypatch):
    old_release = make_fake_torch_npu(scale_keyword="scale_value")
    monkeypatch.setitem(sys.modules, "torch_npu", old_release)
    q, k, v = attention_inputs(torch.bfloat16)
    with pytest.raises(TypeError, match="'scale'"):
        npu_fused_infer_attention(q, k, v)

    monkeypatch.setattr(npu_attention, "fused_infer_scale_keyword",
                        lambda: "scale_value")
    out = npu_fused_infer_attention(q, k, v)
    assert old_release.calls[-1].options["scale"] == HEAD_DIM ** -0.5
    assert_equal_after_rounding(out, sdpa_attention(q.float(), k.float(), v.float()))


# npu_fusion_attention, layout TND.

@pytest.mark.parametrize("padding", sorted(K_LENS))
def test_fusion_varlen_matches_sdpa_fp32(fake_npu, padding):
    q, k, v = attention_inputs(torch.float32, head_dim=72)
    k_lens = k_lens_tensor(padding)
    out = npu_fusion_attention_varlen(q, k, v, k_lens=k_lens, dtype=torch.float32)
    expected = sdpa_attention(q, k, v, k_lens=k_lens)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", sorted(K_LENS))
def test_fusion_varlen_call_arguments(fake_npu, padding):
    q, k, v = attention_inputs(torch.bfloat16, head_dim=72)
    npu_fusion_attention_varlen(q, k, v, k_lens=k_lens_tensor(padding))
    call = fake_npu.calls[-1]
    key_lengths = K_LENS[padding] or [TOKENS, TOKENS]
    assert call.name == "npu_fusion_attention"
    assert call.options["input_layout"] == "TND"
    assert call.options["head_num"] == HEADS
    assert call.options["scale"] == 72 ** -0.5
    assert call.options["actual_seq_qlen"] == [TOKENS, 2 * TOKENS]
    assert call.options["actual_seq_kvlen"] == [key_lengths[0], sum(key_lengths)]
    assert call.shapes[1] == (sum(key_lengths), HEADS, 72)


def test_fusion_varlen_bf16_matches_sdpa(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16, head_dim=72)
    k_lens = torch.tensor([9, TOKENS])
    out = npu_fusion_attention_varlen(q, k, v, k_lens=k_lens)
    expected = sdpa_attention(q.float(), k.float(), v.float(), k_lens=k_lens)
    assert_equal_after_rounding(out, expected)


def test_fusion_varlen_cross_attention_lengths(fake_npu):
    # Cross-attention: 24 queries against 7 text keys, 5 of them valid in batch 1.
    q, k, v = attention_inputs(torch.float32, keys=7)
    k_lens = torch.tensor([7, 5])
    out = npu_fusion_attention_varlen(q, k, v, k_lens=k_lens, dtype=torch.float32)
    torch.testing.assert_close(out, sdpa_attention(q, k, v, k_lens=k_lens),
                               rtol=1e-5, atol=1e-6)


# The lowered graph.

@pytest.fixture
def block():
    return build_model(CASES[1]).blocks[0]  # 12 heads of dim 16


def test_graph_calls_fused_infer(fake_npu, block):
    model = build_model(CASES[1])
    kernel = select_attention_kernel("npu", head_dim=16)
    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(1, kernel))

    lowered = calls_of(graph_module, npu_fused_infer_attention)
    assert len(lowered) == 1
    assert provenance(lowered[0])["kernel"] == "npu_fused_infer_attention"
    assert "npu_fused_infer_attention(" in graph_module.code

    x, seq_lens, grid_sizes = self_attention_inputs()
    out = graph_module(x, seq_lens, grid_sizes, model.freqs)
    with wan_reference_attention():
        eager = block.self_attn(x, seq_lens, grid_sizes, model.freqs)
    assert [call.name for call in fake_npu.calls] == ["npu_fused_infer_attention_score"]
    assert fake_npu.calls[0].options["actual_seq_lengths_kv"] == [42, 42]
    # Wan's fp32 q, k, v go through the kernel in bf16.
    tolerance = 2e-2 * eager.abs().max().item()
    assert (out - eager).abs().max().item() <= tolerance


def test_graph_cross_attention_npu(fake_npu, block):
    graph_module = trace_attention(block.cross_attn)
    run_passes(graph_module, attention_passes(1, npu_fusion_attention_varlen))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 45, 192, generator=generator)
    context = torch.randn(2, 16, 192, generator=generator)
    context_lens = torch.tensor([16, 11])
    out = graph_module(x, context, context_lens)
    with wan_reference_attention():
        eager = block.cross_attn(x, context, context_lens)
    call = fake_npu.calls[-1]
    assert call.name == "npu_fusion_attention"
    assert call.options["actual_seq_kvlen"] == [16, 27]
    tolerance = 2e-2 * eager.abs().max().item()
    assert (out - eager).abs().max().item() <= tolerance


# Each misuse of the torch_npu kernels that the fake must reject.

def bnsd(t):
    return t.transpose(1, 2).contiguous()  # [B, L, N, D] -> [B, N, L, D]


def test_trap_lengths_with_bnsd(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    with pytest.raises(SilentTrapError, match="only in layout TND"):
        fake_npu.npu_fusion_attention(
            bnsd(q), bnsd(k), bnsd(v), HEADS, "BNSD", scale=0.2,
            actual_seq_qlen=[TOKENS, 2 * TOKENS], actual_seq_kvlen=[TOKENS, TOKENS + 17])


def test_trap_lengths_with_bnsd_ignored():
    # What the real kernel does: the lengths are dropped, padding gets weight.
    lenient = make_fake_torch_npu(strict=False)
    q, k, v = attention_inputs(torch.float32)
    out = lenient.npu_fusion_attention(
        bnsd(q), bnsd(k), bnsd(v), HEADS, "BNSD", scale=HEAD_DIM ** -0.5,
        actual_seq_qlen=[TOKENS, 2 * TOKENS], actual_seq_kvlen=[TOKENS, TOKENS + 17])[0]
    unmasked = bnsd(sdpa_attention(q, k, v))
    masked = bnsd(sdpa_attention(q, k, v, k_lens=torch.tensor([TOKENS, 17])))
    torch.testing.assert_close(out, unmasked, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, masked, atol=1e-3)


def test_trap_per_batch_lengths_in_tnd(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    packed = [t.flatten(0, 1) for t in (q, k, v)]
    with pytest.raises(KernelContractError, match="cumulative"):
        fake_npu.npu_fusion_attention(
            *packed, HEADS, "TND", scale=0.2,
            actual_seq_qlen=[TOKENS, TOKENS], actual_seq_kvlen=[TOKENS, TOKENS])


def test_trap_tnd_needs_both_lengths(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    packed = [t.flatten(0, 1) for t in (q, k, v)]
    with pytest.raises(KernelContractError, match="actual_seq_qlen is missing"):
        fake_npu.npu_fusion_attention(
            *packed, HEADS, "TND", scale=0.2, actual_seq_kvlen=[TOKENS, 2 * TOKENS])


def test_trap_tnd_with_padding_left_in(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    packed = [t.flatten(0, 1) for t in (q, k, v)]  # padded keys still there
    with pytest.raises(KernelContractError, match="must end at the 48"):
        fake_npu.npu_fusion_attention(
            *packed, HEADS, "TND", scale=0.2,
            actual_seq_qlen=[TOKENS, 2 * TOKENS], actual_seq_kvlen=[TOKENS, TOKENS + 17])


def sdpa_key_mask(k_lens):
    """SDPA's boolean key-padding mask [B, 1, 1, Lk], True = attend."""
    return torch.arange(TOKENS)[None, :] < torch.tensor(k_lens)[:, None]


@pytest.mark.parametrize("kernel", ["fusion", "fused_infer"])
def test_trap_sdpa_mask_polarity(fake_npu, kernel):
    q, k, v = attention_inputs(torch.bfloat16)
    mask = sdpa_key_mask([TOKENS, 17])[:, None, None, :]
    with pytest.raises(SilentTrapError, match="True masks a position out"):
        if kernel == "fusion":
            fake_npu.npu_fusion_attention(
                bnsd(q), bnsd(k), bnsd(v), HEADS, "BNSD", scale=0.2, atten_mask=mask)
        else:
            fake_npu.npu_fused_infer_attention_score(
                q, k, v, num_heads=HEADS, input_layout="BSND", scale=0.2,
                atten_mask=mask)


def test_trap_sdpa_mask_without_padding(fake_npu):
    # SDPA's all-True mask masks out every key here.
    q, k, v = attention_inputs(torch.float32)
    mask = torch.ones(BATCH, 1, TOKENS, TOKENS, dtype=torch.bool)
    with pytest.raises(SilentTrapError, match="masks out every key"):
        fake_npu.npu_fusion_attention(
            bnsd(q), bnsd(k), bnsd(v), HEADS, "BNSD", scale=0.2, atten_mask=mask)


def test_trap_float_mask(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    additive = torch.zeros(BATCH, 1, TOKENS, TOKENS)
    with pytest.raises(KernelContractError, match="no additive float mask"):
        fake_npu.npu_fusion_attention(
            bnsd(q), bnsd(k), bnsd(v), HEADS, "BNSD", scale=0.2, atten_mask=additive)


def test_npu_mask_polarity_honoured(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    padding = ~sdpa_key_mask([TOKENS, 17])  # True = padding = masked out
    out = fake_npu.npu_fusion_attention(
        bnsd(q), bnsd(k), bnsd(v), HEADS, "BNSD", scale=HEAD_DIM ** -0.5,
        atten_mask=padding[:, None, None, :].expand(BATCH, 1, TOKENS, TOKENS))[0]
    expected = bnsd(sdpa_attention(q, k, v, k_lens=torch.tensor([TOKENS, 17])))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["fusion", "fused_infer"])
def test_trap_default_scale(fake_npu, kernel):
    q, k, v = attention_inputs(torch.bfloat16)
    with pytest.raises(SilentTrapError, match="scales by 1.0"):
        if kernel == "fusion":
            fake_npu.npu_fusion_attention(bnsd(q), bnsd(k), bnsd(v), HEADS, "BNSD")
        else:
            fake_npu.npu_fused_infer_attention_score(
                q, k, v, num_heads=HEADS, input_layout="BSND")


def test_trap_default_scale_is_one():
    lenient = make_fake_torch_npu(strict=False)
    q, k, v = attention_inputs(torch.bfloat16)
    out, _ = lenient.npu_fused_infer_attention_score(
        q, k, v, num_heads=HEADS, input_layout="BSND")
    unscaled = sdpa_attention(q.float(), k.float(), v.float(), softmax_scale=1.0)
    assert_equal_after_rounding(out, unscaled)


def test_trap_cumulative_lengths_in_bsnd(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16)
    with pytest.raises(KernelContractError, match="per-batch lengths"):
        fake_npu.npu_fused_infer_attention_score(
            q, k, v, num_heads=HEADS, input_layout="BSND", scale=0.2,
            actual_seq_lengths_kv=[TOKENS, TOKENS + 17])


def test_trap_lengths_as_tensor(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16)
    with pytest.raises(TypeError, match="list of Python ints"):
        fake_npu.npu_fused_infer_attention_score(
            q, k, v, num_heads=HEADS, input_layout="BSND", scale=0.2,
            actual_seq_lengths_kv=torch.tensor([TOKENS, 17]))


def test_trap_fused_infer_fp32(fake_npu):
    q, k, v = attention_inputs(torch.float32)
    with pytest.raises(KernelContractError, match="float16 or bfloat16"):
        fake_npu.npu_fused_infer_attention_score(
            q, k, v, num_heads=HEADS, input_layout="BSND", scale=0.2)


def test_trap_fused_infer_non_contiguous(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16)
    q_view = bnsd(q).transpose(1, 2)
    with pytest.raises(KernelContractError, match="not contiguous"):
        fake_npu.npu_fused_infer_attention_score(
            q_view, k, v, num_heads=HEADS, input_layout="BSND", scale=0.2)


def test_trap_fused_infer_head_dim(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16, head_dim=72)
    with pytest.raises(KernelContractError, match="multiple of 16"):
        fake_npu.npu_fused_infer_attention_score(
            q, k, v, num_heads=HEADS, input_layout="BSND", scale=0.2)


def test_trap_fused_infer_num_heads(fake_npu):
    q, k, v = attention_inputs(torch.bfloat16)
    with pytest.raises(KernelContractError, match="num_heads=1"):
        fake_npu.npu_fused_infer_attention_score(
            q, k, v, input_layout="BSND", scale=0.2)
