"""NPU set-up on CPU: lazy torch_npu, initialize_usp on a fake NPU, HCCL contiguity."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from lite_boost.ops import collectives

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)


def run_python(script: str, extra_path: str = "", env_updates=None) -> dict:
    """Run ``script`` in a fresh interpreter; return the JSON it prints last."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (extra_path, TESTS_DIR, REPO_DIR, env.get("PYTHONPATH", "")) if path)
    env.update(env_updates or {})
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO_DIR,
        capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(200)
def test_lite_boost_never_imports_torch_npu(tmp_path):
    # A torch_npu that records any import attempt and then fails, like
    # torch_npu without the CANN toolkit.
    marker = tmp_path / "imported"
    (tmp_path / "torch_npu.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "raise ImportError('libhccl.so: cannot open shared object file')\n")
    result = run_python("""
        import json, sys
        import lite_boost
        import lite_boost.parallel, lite_boost.passes, lite_boost.model.dit
        from lite_boost.ops import attention, npu_attention, rope
        kernel = attention.select_attention_kernel("npu", head_dim=128)
        imported_before_init = "torch_npu" in sys.modules
        state = lite_boost.parallel.initialize_usp()
        print(json.dumps({"kernel": kernel.__name__, "backend": state.backend,
                          "imported_before_init": imported_before_init}))
        """, extra_path=str(tmp_path))
    assert result["kernel"] == "npu_fused_infer_attention"
    assert not result["imported_before_init"]
    # initialize_usp looks for an NPU because torch_npu is installed; the
    # failed import falls back to the CPU.
    assert marker.exists()
    assert result["backend"] == "gloo"


FAKE_NPU_PROCESS = """
    import importlib.machinery, json, logging, sys
    import torch
    from fake_torch_npu import FakeNpuRuntime, make_fake_torch_npu

    # What importing torch_npu does: the "npu" device type and torch.npu.
    torch.utils.rename_privateuse1_backend("npu")
    torch.npu = FakeNpuRuntime(device_count=8)
    fake = make_fake_torch_npu()
    fake.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    sys.modules["torch_npu"] = fake

    import lite_boost
    from lite_boost.parallel import ParallelManager, destroy_usp, initialize_usp
    from dit_cases import CASES, build_model, run_model
    from reference import wan_reference_attention

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("lite_boost").addHandler(handler)

    state = initialize_usp()
    case = CASES[1]
    with wan_reference_attention():
        expected = run_model(build_model(case), case)
    model = ParallelManager(build_model(case))
    out = run_model(model, case)
    destroy_usp()
    nccl_state = initialize_usp(backend="nccl")
    print(json.dumps({
        "backend": state.backend, "device": str(state.device),
        "set_device_calls": torch.npu.set_device_calls,
        "nccl_becomes": nccl_state.backend,
        "kernel_calls": sorted({call.name for call in fake.calls}),
        "log": records,
        "relative_error": ((out - expected).abs().max() / expected.abs().max()).item(),
    }))
"""


@pytest.mark.timeout(200)
def test_initialize_usp_on_fake_npu():
    result = run_python(FAKE_NPU_PROCESS, env_updates={"LOCAL_RANK": "3"})
    assert result["backend"] == "hccl"
    assert result["device"] == "npu:3"
    assert result["set_device_calls"] == [3, 3]
    assert result["nccl_becomes"] == "hccl"
    # The patched DiT calls the fused kernel: 12 heads of dim 16.
    assert result["kernel_calls"] == ["npu_fused_infer_attention_score"]
    assert any("kernel npu_fused_infer_attention" in line for line in result["log"])
    # bf16 attention inside an fp32 model.
    assert result["relative_error"] <= 2e-2


# HCCL takes only contiguous tensors.

@pytest.fixture
def two_fake_ranks(monkeypatch):
    """Make the collectives see a group of 2 and record what they hand to dist."""
    handed = []

    def all_to_all_single(output, send, group=None):
        handed.append(("all_to_all_single", output.is_contiguous(), send.is_contiguous()))
        output.copy_(send)

    def all_gather(output, local, group=None):
        handed.append(("all_gather", output.is_contiguous(), local.is_contiguous()))
        output.copy_(torch.cat([local, local]))

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_to_all_single", all_to_all_single)
    # torch 2.14 names it all_gather_single; older releases all_gather_into_tensor.
    monkeypatch.setattr(dist, "all_gather_single", all_gather, raising=False)
    monkeypatch.setattr(dist, "all_gather_into_tensor", all_gather)
    return handed


def test_all_to_all_hands_contiguous_tensors(two_fake_ranks):
    x = torch.randn(2, 4, 6, 8).transpose(1, 2)  # [B, H, S, D] storage as [B, S, H, D]
    assert not x.is_contiguous()
    out = collectives.all_to_all_4d(x, scatter_dim=2, gather_dim=1, group=object())
    assert two_fake_ranks == [("all_to_all_single", True, True)]
    assert out.shape == (2, 12, 2, 8)


def test_all_gather_hands_contiguous_tensors(two_fake_ranks):
    x = torch.randn(5, 3, 4).transpose(0, 1)  # non-contiguous [B, S, C]
    out = collectives.all_gather_dim(x, dim=1, group=object())
    assert two_fake_ranks == [("all_gather", True, True)]
    assert torch.equal(out, torch.cat([x, x], dim=1))
