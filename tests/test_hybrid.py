"""CFG parallel, ring attention and the degree planner, against one process."""

import pytest
import torch

import hybrid_cases
from dit_cases import build_model
from lite_boost.launch import run_on_ranks
from lite_boost.parallel.planner import candidate_degrees, check_degrees, plan_degrees
from reference import wan_reference_attention

# (heads, world size, guidance) -> (cfg, ulysses, ring) the planner must pick.
PLANNER_TABLE = {
    (24, 16, True): (2, 8, 1),
    (24, 16, False): (1, 8, 2),
    (40, 16, True): (2, 8, 1),
    (40, 16, False): (1, 8, 2),
    (12, 8, True): (2, 4, 1),
    (12, 8, False): (1, 4, 2),
    (24, 8, True): (2, 4, 1),
    (24, 8, False): (1, 8, 1),
}


@pytest.mark.parametrize("key", sorted(PLANNER_TABLE), ids=str)
def test_planner_table(key):
    num_heads, world_size, guidance = key
    plan = plan_degrees(num_heads, world_size, guidance)
    assert plan.degrees == PLANNER_TABLE[key]
    assert plan.cfg * plan.ulysses * plan.ring == world_size
    assert plan.reason


def test_planner_prefers_no_ring():
    for num_heads in (4, 6, 12, 24, 40):
        for world_size in (2, 4, 6, 8, 16):
            for guidance in (True, False):
                plan = plan_degrees(num_heads, world_size, guidance)
                without_ring = [c for c in candidate_degrees(num_heads, world_size, guidance)
                                if c[2] == 1]
                assert (plan.ring == 1) == bool(without_ring)


def test_invalid_degrees_list_choices():
    with pytest.raises(ValueError, match=r"valid choices: \(cfg=1, ulysses=1, ring=3\)"):
        check_degrees(4, 3, False, 1, 3, 1)
    with pytest.raises(ValueError, match="cfg=2 needs guidance"):
        check_degrees(4, 2, False, 2, 1, 1)


def reference_calls(num_heads):
    case = hybrid_cases.hybrid_case(num_heads)
    with wan_reference_attention():
        return hybrid_cases.guidance_calls(build_model(case), case)


@pytest.fixture(scope="module")
def references():
    return {heads: reference_calls(heads) for heads in hybrid_cases.HEAD_COUNTS}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world_size", [2, 4, 6, 8])
def test_every_factorisation(world_size, references):
    per_rank = run_on_ranks(hybrid_cases.run_factorisations, world_size, world_size)
    expected_keys = {(heads, degrees) for heads in hybrid_cases.HEAD_COUNTS
                     for degrees in hybrid_cases.factorisations(world_size, heads)}
    assert any(degrees[2] > 1 and degrees[1] > 1 for _, degrees in expected_keys) \
        or world_size == 2
    for rank, results in enumerate(per_rank):
        assert set(results) == expected_keys
        for (heads, degrees), outputs in results.items():
            for output, reference in zip(outputs, references[heads]):
                tolerance = 1e-5 * reference.abs().max().item()
                difference = (output - reference).abs().max().item()
                assert difference <= tolerance, (rank, heads, degrees, difference)


@pytest.mark.timeout(300)
def test_cfg_mismatch_falls_back():
    case = hybrid_cases.hybrid_case(4)
    with wan_reference_attention():
        references = hybrid_cases.guidance_calls(build_model(case), case, mismatch=True)
    for outputs, parallel_steps, fallbacks in run_on_ranks(hybrid_cases.run_cfg_fallback, 2):
        assert parallel_steps == 1
        assert fallbacks == 1
        for output, reference in zip(outputs, references):
            tolerance = 1e-5 * reference.abs().max().item()
            assert (output - reference).abs().max().item() <= tolerance


@pytest.mark.timeout(600)
def test_planned_generate_uses_cfg():
    single = run_on_ranks(hybrid_cases.run_planned_generate, 1)[0][0]
    for video, degrees, steps in run_on_ranks(hybrid_cases.run_planned_generate, 2):
        assert degrees == (2, 1, 1)
        assert sum(steps) >= 1
        assert (video - single).abs().max().item() <= 1e-4


def run_planned_report():
    """Rank body at P=2 with 3 heads and no guidance: the planner adds a ring."""
    import lite_boost
    from lite_boost.parallel import ParallelManager

    model = ParallelManager(build_model(hybrid_cases.hybrid_case(3)))
    return str(lite_boost.inspect(model))


@pytest.mark.timeout(300)
def test_report_explains_plan():
    report = run_on_ranks(run_planned_report, 2)[0]
    assert "degrees (cfg, ulysses, ring) = (1, 1, 2)" in report
    assert "3 heads do not divide by 2" in report
