"""The fused q/k/v all_to_all on gloo ranks against separate exchanges."""

import pytest

import fuse_qkv_cases
from lite_boost.launch import run_on_ranks


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size", [2, 3])
def test_fused_self_attention_equals_separate(world_size):
    results = run_on_ranks(fuse_qkv_cases.self_attention_outputs, world_size)
    for rank, (separate, fused, calls, reference) in enumerate(results):
        assert calls == [4, 2], rank
        assert fused.shape == separate.shape == reference.shape, rank
        # The same values take another path through memory: bit-equal.
        assert (fused - separate).abs().max().item() == 0, rank
        tolerance = 1e-5 * reference.abs().max().item()
        assert (fused - reference).abs().max().item() <= tolerance, rank


@pytest.mark.timeout(300)
def test_fused_exchange_keeps_dtypes():
    results = run_on_ranks(fuse_qkv_cases.mixed_dtype_exchange, 2)
    for rank, (fused, separate, calls) in enumerate(results):
        # q and k share one call; v, in another dtype, gets its own.
        assert calls == 2, rank
        for role, fused_tensor, separate_tensor in zip("qkv", fused, separate):
            assert fused_tensor.dtype == separate_tensor.dtype, (rank, role)
            assert fused_tensor.shape == (1, 12, 2, 8), (rank, role)
            assert (fused_tensor.float() - separate_tensor.float()).abs().max() == 0, (rank, role)
