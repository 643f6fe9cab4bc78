"""Patching in place: identity, state_dict, idempotence, restore, errors."""

import subprocess
import sys

import pytest
import torch

import lite_boost
from dit_cases import CASES, build_model, run_model
from lite_boost.model import setup_model
from lite_boost.parallel import ParallelManager, destroy_usp, initialize_usp
from lite_boost.parallel import init as parallel_init
from reference import wan_reference_attention

CASE = CASES[2]


def test_manager_returns_same_instance(single_process):
    model = build_model(CASE)
    assert ParallelManager(model) is model
    assert type(model).__name__ == "WanModel"


def test_state_dict_unchanged(single_process):
    model = build_model(CASE)
    before = model.state_dict(keep_vars=True)
    ParallelManager(model)
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    for name in before:
        assert after[name] is before[name], name
    assert len(list(model.modules())) == len(list(build_model(CASE).modules()))


def test_manager_twice_equals_once(single_process):
    once = ParallelManager(build_model(CASE))
    twice = ParallelManager(ParallelManager(build_model(CASE)))
    forward = twice.blocks[0].self_attn.forward
    assert torch.equal(run_model(once, CASE), run_model(twice, CASE))
    assert twice.blocks[0].self_attn.forward == forward


def test_patched_matches_reference(single_process):
    model = build_model(CASE)
    with wan_reference_attention():
        reference = run_model(model, CASE)
    patched = run_model(ParallelManager(model), CASE)
    tolerance = 1e-5 * reference.abs().max().item()
    assert (patched - reference).abs().max().item() <= tolerance


def test_restore_gives_original(single_process):
    model = build_model(CASE)
    with wan_reference_attention():
        original = run_model(model, CASE)
    ParallelManager(model)
    assert "forward" in vars(model.blocks[0].self_attn)
    assert lite_boost.restore(model) is model
    assert "forward" not in vars(model.blocks[0].self_attn)
    assert "forward" not in vars(model.blocks[1].cross_attn)
    with wan_reference_attention():
        restored = run_model(model, CASE)
    assert torch.equal(original, restored)
    # Patching again after restore works.
    assert ParallelManager(model) is model


def test_to_and_eval_after_patch(single_process):
    model = ParallelManager(build_model(CASE))
    expected = run_model(model, CASE)
    model.to(torch.float64).to(torch.float32).cpu().eval()
    assert torch.allclose(run_model(model, CASE), expected, atol=1e-6)
    model.half()
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float16
    assert model.blocks[0].self_attn.forward.__self__.q is model.blocks[0].self_attn.q


def test_unsupported_object_rejected(single_process):
    with pytest.raises(RuntimeError, match="torch.nn.modules.linear.Linear.*WanTI2V"):
        ParallelManager(torch.nn.Linear(2, 2))


def test_manager_before_initialize_rejected():
    destroy_usp()
    with pytest.raises(RuntimeError, match="initialize_usp"):
        setup_model(build_model(CASE))


def test_wan_use_sp_rejected(single_process):
    import types

    from wan.distributed.sequence_parallel import sp_attn_forward

    model = build_model(CASE)
    block = model.blocks[0]
    block.self_attn.forward = types.MethodType(sp_attn_forward, block.self_attn)
    with pytest.raises(RuntimeError, match="use_sp=True"):
        ParallelManager(model)


def test_single_process_defaults(single_process):
    assert single_process.world_size == 1
    assert single_process.rank == 0
    assert single_process.ulysses_group is None
    assert single_process.backend == "gloo"
    assert initialize_usp() is single_process


def test_initialize_rejects_changed_backend(single_process):
    with pytest.raises(ValueError, match="backend 'gloo'"):
        initialize_usp(backend="nccl")
    with pytest.raises(ValueError, match="valid choices: gloo, nccl, hccl"):
        initialize_usp(backend="mpi")


def test_local_rank_selects_device(monkeypatch):
    """Node 2 of a 2x4 run: RANK=5, LOCAL_RANK=1 -> device cuda:1."""
    selected = []
    initialized = {}
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(parallel_init, "_npu_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    monkeypatch.setattr(parallel_init.dist, "init_process_group",
                        lambda **kwargs: initialized.update(kwargs))
    monkeypatch.setattr(parallel_init.dist, "is_initialized", lambda: False)
    destroy_usp()
    try:
        state = initialize_usp(timeout=30)
    finally:
        parallel_init.parallel_state.set_state(None)
    assert selected == [1]
    assert state.device == torch.device("cuda", 1)
    assert state.rank == 5
    assert state.local_rank == 1
    assert initialized["backend"] == "nccl"
    assert initialized["rank"] == 5
    assert initialized["world_size"] == 8
    assert initialized["timeout"].total_seconds() == 30


def test_import_wan_without_cuda():
    code = (
        "import torch\n"
        "before = torch.cuda.current_device\n"
        "import lite_boost\n"
        "import wan\n"
        "from wan.modules.t5 import T5EncoderModel\n"
        "assert not torch.cuda.is_available()\n"
        "assert torch.cuda.current_device is before\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_import_wan_fails_without_lite_boost():
    # Guards the test above: without the hook, Wan's import really fails here.
    code = "import wan.modules.t5\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "current_device" in result.stderr or "CUDA" in result.stderr or "driver" in result.stderr


def test_float32_rope_option(single_process):
    model = build_model(CASE)
    with wan_reference_attention():
        reference = run_model(model, CASE)
    ParallelManager(model, rope="float32")
    graph_code = model.blocks[0].self_attn.forward.__self__.code
    assert "rope_apply_float32" in graph_code
    assert "wan_modules_model_rope_apply" not in graph_code
    tolerance = 1e-5 * reference.abs().max().item()
    assert (run_model(model, CASE) - reference).abs().max().item() <= tolerance


def test_invalid_rope_option(single_process):
    with pytest.raises(ValueError, match="rope='float16' is not supported"):
        ParallelManager(build_model(CASE), rope="float16")
