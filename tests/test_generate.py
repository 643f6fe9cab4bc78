"""generate() of the real Wan pipelines: 2 ranks against 1 rank."""

import pytest
import torch

from generate_cases import CASES, generate_all
from lite_boost.launch import run_on_ranks


@pytest.fixture(scope="module")
def single_process_videos():
    return run_on_ranks(generate_all, 1)[0]


# The planner picks CFG parallel for these guided pipelines at 2 ranks;
# ulysses_degree=2 forces sequence parallelism instead.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("degrees", [{}, {"ulysses_degree": 2}], ids=["planner", "ulysses"])
def test_generate_two_ranks_match_one(degrees, single_process_videos):
    single = single_process_videos
    parallel = run_on_ranks(generate_all, 2, init_kwargs=degrees)

    for case, reference in zip(CASES, single):
        assert reference.dim() == 4, case.name
        assert reference.shape[1] == case.frame_num, case.name
        assert reference.std() > 0.01, case.name
    for rank, videos in enumerate(parallel):
        # Every rank joins the VAE decode and returns the whole video.
        for case, video, reference in zip(CASES, videos, single):
            assert video.shape == reference.shape, (rank, case.name)
            difference = (video - reference).abs().max().item()
            assert difference <= 1e-4, (rank, case.name, difference)
