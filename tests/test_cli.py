"""The lite-boost command: demo end to end, generate's argument checks."""

import os
import subprocess
import sys

import pytest
import torch

from lite_boost.demo import DemoOptions, run_demo


@pytest.mark.timeout(600)
def test_demo_two_processes(tmp_path, capsys):
    options = DemoOptions(nproc=2, width=64, height=64, frame_num=9,
                          sampling_steps=2, dit_dim=96, dit_heads=6,
                          dit_layers=2, output_dir=str(tmp_path / "out"))
    difference = run_demo(options)
    output = capsys.readouterr().out

    assert difference <= 1e-4
    assert "max|diff| between the 1-process and 2-process videos" in output
    assert "DiT seconds per step" in output
    video_path = tmp_path / "out" / "video.mp4"
    assert video_path.stat().st_size > 1000
    graph_code = (tmp_path / "out" / "block0_self_attn.py").read_text()
    assert graph_code.count("ulysses_all_to_all(") == 4
    assert "sdpa_attention(" in graph_code


def test_demo_video_readable(tmp_path):
    import imageio

    from lite_boost.demo import write_video

    video = torch.linspace(-1, 1, 3 * 5 * 16 * 16).reshape(3, 5, 16, 16)
    path = str(tmp_path / "v.mp4")
    write_video(video, path)
    frames = imageio.mimread(path)
    assert len(frames) == 5
    assert frames[0].shape == (16, 16, 3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lite_boost", *args],
                          capture_output=True, text=True, timeout=120)


def test_generate_missing_ckpt_dir(tmp_path):
    missing = str(tmp_path / "no-such-dir")
    result = run_cli("generate", "--ckpt_dir", missing, "--prompt", "a fox")
    assert result.returncode == 2
    assert "--ckpt_dir" in result.stderr
    assert missing in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_rejects_unknown_task():
    result = run_cli("generate", "--task", "t2v-1.3B", "--ckpt_dir", ".",
                     "--prompt", "x")
    assert result.returncode == 2
    assert "ti2v-5B" in result.stderr


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert "generate" in result.stdout
