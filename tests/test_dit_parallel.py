"""Ulysses DiT on P gloo ranks against the unpatched single-process model."""

import pytest
import torch

from dit_cases import build_model, cases_for, patched_outputs, run_model
from lite_boost.launch import run_on_ranks
from reference import wan_reference_attention


def reference_outputs(world_size):
    outputs = []
    with wan_reference_attention():
        for case in cases_for(world_size):
            outputs.append(run_model(build_model(case), case))
    return outputs


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_dit_matches_single_process(world_size):
    cases = cases_for(world_size)
    assert {case.model_type for case in cases} == {"t2v", "ti2v", "i2v"} or world_size == 3
    assert len({case.num_heads for case in cases}) >= 2
    references = reference_outputs(world_size)

    per_rank = run_on_ranks(patched_outputs, world_size, world_size)

    for rank, (outputs, collective_counts) in enumerate(per_rank):
        # One all_to_all pair (q, k, v in; the output back) per self-attention,
        # none in cross-attention.
        assert len(collective_counts) == 2 * 2  # 2 blocks x (self, cross)
        for name, count in collective_counts.items():
            expected = 4 if name.endswith("self_attn") else 0
            assert count == expected, (rank, name, count)
        for case, output, reference in zip(cases, outputs, references):
            assert output.shape == reference.shape, (rank, case)
            tolerance = 1e-5 * reference.abs().max().item()
            difference = (output - reference).abs().max().item()
            assert difference <= tolerance, (rank, case, difference, tolerance)


def test_reference_output_not_zero():
    # A zero output head would make every comparison pass.
    for case in cases_for(1):
        with wan_reference_attention():
            output = run_model(build_model(case), case)
        assert output.abs().max() > 0.1, case
