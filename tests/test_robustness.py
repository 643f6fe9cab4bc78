"""Failure kinds of parallel video DiTs, each with a test."""

import os
import subprocess
import sys

import pytest
import torch

import robustness_cases
from dit_cases import CASES, build_model, run_model
from generate_cases import generate
from lite_boost import restore
from lite_boost.launch import free_loopback_port, run_on_ranks
from lite_boost.parallel import ParallelManager
from lite_boost.tiny import tiny_pipeline
from reference import wan_reference_attention


def assert_close(actual, expected, relative=1e-5):
    tolerance = relative * expected.abs().max().item()
    difference = (actual - expected).abs().max().item()
    assert difference <= tolerance, (difference, tolerance)


@pytest.fixture(scope="module")
def two_rank_results():
    # Sequence parallelism; the planner would pick CFG parallel here.
    return run_on_ranks(robustness_cases.parallel_behaviour, 2,
                        init_kwargs={"ulysses_degree": 2})


@pytest.mark.timeout(600)
def test_random_seed_agreed_across_ranks(two_rank_results):
    first, second = (r["random_seed_video"] for r in two_rank_results)
    assert torch.equal(first, second)


@pytest.mark.timeout(600)
def test_new_resolution_between_calls(single_process, two_rank_results):
    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3), vae_chunk_size=2)
    references = [generate(case, pipeline=pipe)
                  for case in robustness_cases.resolution_calls()]
    assert references[0].shape != references[1].shape
    for result in two_rank_results:
        for video, reference in zip(result["resolution_videos"], references):
            assert video.shape == reference.shape
            assert (video - reference).abs().max().item() <= 1e-4
        # No graph or hook was added for the new shapes.
        assert result["graphs_after"] == (0, 0)


@pytest.mark.timeout(600)
def test_batch_of_different_sizes(two_rank_results):
    model = build_model(robustness_cases.BATCH_CASE)
    with wan_reference_attention():
        references = robustness_cases.run_batch(model)
    for result in two_rank_results:
        assert len(result["batch"]) == 2
        for output, reference in zip(result["batch"], references):
            assert output.shape == reference.shape
            assert_close(output, reference)


@pytest.mark.timeout(600)
def test_different_inputs_raise_on_every_rank(two_rank_results):
    for result in two_rank_results:
        message = result["mismatch_error"]
        assert message is not None
        assert "different inputs on different ranks" in message
        assert "ranks [1]" in message


@pytest.mark.timeout(300)
def test_heads_not_divisible_rejected_early():
    """A fixed Ulysses degree that does not divide the heads is rejected."""
    results = run_on_ranks(robustness_cases.heads_not_divisible, 3,
                           init_kwargs={"ulysses_degree": 3})
    for message, entered, patched in results:
        assert message is not None
        assert "ulysses=3" in message
        assert "4 heads on 3 ranks" in message
        assert "valid choices: (cfg=1, ulysses=1, ring=3)" in message
        assert entered == []
        assert not patched


@pytest.mark.timeout(300)
def test_missing_rank_times_out_with_names():
    results = run_on_ranks(robustness_cases.collective_timeout, 2,
                           init_kwargs={"timeout": 3})
    message, seconds = results[0]
    assert message is not None
    assert "all_to_all_single" in message
    assert "ulysses_all_to_all(scatter_dim=2, gather_dim=1)" in message
    assert "timeout 0:00:03" in message
    assert seconds < 11


def test_world_size_one_runs_no_collective(single_process, monkeypatch):
    import torch.distributed as dist

    def fail(*args, **kwargs):
        raise AssertionError("a collective ran at world size 1")

    for name in ("all_to_all_single", "all_gather_into_tensor", "broadcast",
                 "all_reduce", "barrier"):
        monkeypatch.setattr(dist, name, fail)
    monkeypatch.setattr(dist, "all_gather_single", fail, raising=False)
    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3))
    video = pipe.generate("a prompt", size=(64, 64), frame_num=5,
                          sampling_steps=2, seed=-1, offload_model=False)
    assert video.shape == (3, 5, 64, 64)


@pytest.mark.parametrize("frame_num", [0, 4, 10, 12])
def test_invalid_frame_num_rejected(single_process, frame_num):
    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3))
    with pytest.raises(ValueError, match=rf"frame_num={frame_num} is invalid.*4n\+1"):
        pipe.generate("a prompt", size=(64, 64), frame_num=frame_num,
                      sampling_steps=1, seed=0, offload_model=False)


@pytest.mark.parametrize("size", [(80, 64), (64, 48), (0, 64)])
def test_invalid_size_rejected(single_process, size):
    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3))
    with pytest.raises(ValueError, match="multiples of 32"):
        pipe.generate("a prompt", size=size, frame_num=5, sampling_steps=1,
                      seed=0, offload_model=False)


def test_dtype_and_device_round_trip(single_process):
    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3))
    arguments = dict(size=(64, 64), frame_num=5, sampling_steps=2, seed=0,
                     offload_model=False)
    before = pipe.generate("a prompt", **arguments)
    pipe.model.cpu().to("cpu").to(torch.bfloat16).to(torch.float32).eval()
    assert pipe.model.blocks[0].self_attn.q.weight.dtype == torch.float32
    after = pipe.generate("a prompt", **arguments)
    # bf16 rounding of the weights is the only change.
    assert (after - before).abs().max().item() < 0.1
    pipe.model.to(torch.float64)
    graph_module = pipe.model.blocks[0].self_attn.forward.__self__
    assert graph_module.q.weight.dtype == torch.float64


def test_two_pipelines_restore_one(single_process):
    arguments = dict(size=(64, 64), frame_num=5, sampling_steps=2, seed=0,
                     offload_model=False)
    first = ParallelManager(tiny_pipeline("ti2v", seed=3))
    second = ParallelManager(tiny_pipeline("ti2v", seed=3))
    expected = second.generate("a prompt", **arguments)
    restore(first)
    assert "forward" not in vars(first.model.blocks[0].self_attn)
    assert torch.equal(second.generate("a prompt", **arguments), expected)
    with wan_reference_attention():
        restored = first.generate("a prompt", **arguments)
    assert (restored - expected).abs().max().item() <= 1e-4


@pytest.mark.timeout(300)
def test_two_nodes_local_rank(tmp_path):
    """Two torchrun "nodes" on loopback, two processes each."""
    port = str(free_loopback_port())
    worker = os.path.join(os.path.dirname(__file__), "multinode_worker.py")
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run",
                   "--nnodes", "2", "--node-rank", str(node_rank),
                   "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                   "--master-port", port, worker, str(tmp_path)]
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]

    case = CASES[0]
    with wan_reference_attention():
        reference = run_model(build_model(case), case)
    for rank in range(4):
        record = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert record["rank"] == rank
        assert record["world_size"] == 4
        assert record["local_rank"] == rank % 2
        assert record["local_rank"] == record["env_local_rank"]
        assert_close(record["output"], reference)
