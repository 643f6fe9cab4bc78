"""``lite-boost demo``: the real Wan2.2 TI2V pipeline code on 1 and on N processes.

Builds a tiny WanTI2V (real wan classes, random weights, stand-in text
encoder), runs ``generate()`` once on a single process and once on N ranks
that it launches through torchrun's launcher API, and reports how far apart
the two videos are. The parallel run splits the DiT's sequence with Ulysses
and the VAE's frames into row slabs, both exact, so the videos must agree to
float rounding.
"""

import dataclasses
import logging
import os
import time
import warnings
from typing import Optional

import torch

from .launch import run_on_ranks

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    nproc: int = 2
    width: int = 384
    height: int = 384
    frame_num: int = 25
    sampling_steps: int = 6
    # DiT size: 12 heads divide by 1, 2, 3, 4, 6 and 12 ranks.
    dit_dim: int = 384
    dit_heads: int = 12
    dit_layers: int = 4
    seed: int = 0
    prompt: str = "a red fox running through fresh snow"
    output_dir: str = "lite_boost_out"



@dataclasses.dataclass
class RunResult:
    world_size: int
    video: Optional[torch.Tensor]
    generate_seconds: float
    dit_seconds_per_step: float
    graph_code: str


def _time_dit_calls(model: torch.nn.Module) -> list:
    """Record the wall time of every forward of ``model``."""
    durations = []
    started = []
    model.register_forward_pre_hook(lambda module, args: started.append(time.perf_counter()))
    model.register_forward_hook(
        lambda module, args, output: durations.append(time.perf_counter() - started.pop()))
    return durations


def _silence_cpu_warnings() -> None:
    # On CPU, Wan warns at every autocast('cuda') block and about its use of
    # the deprecated torch.cuda.amp API; the demo's output stays readable
    # without them.
    warnings.filterwarnings("ignore", message="CUDA is not available")
    warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast")
    warnings.filterwarnings("ignore", message="User provided device_type of 'cuda'")


def generate_on_this_rank(options: DemoOptions) -> RunResult:
    """Rank body: build the tiny pipeline, patch it, generate one video."""
    _silence_cpu_warnings()
    from .debug import rewritten_graph
    from .parallel import ParallelManager, get_state
    from .tiny import tiny_pipeline

    state = get_state()
    pipe = tiny_pipeline("ti2v", seed=options.seed, dim=options.dit_dim,
                         num_heads=options.dit_heads, num_layers=options.dit_layers)
    ParallelManager(pipe, vae_parallel="spatial")
    dit_durations = _time_dit_calls(pipe.model)

    started = time.perf_counter()
    video = pipe.generate(
        options.prompt, size=(options.width, options.height),
        frame_num=options.frame_num, sampling_steps=options.sampling_steps,
        seed=options.seed, offload_model=False)
    generate_seconds = time.perf_counter() - started

    graph_code = rewritten_graph(pipe.model, "blocks.0.self_attn").code
    return RunResult(
        world_size=state.world_size,
        video=video if state.rank == 0 else None,
        generate_seconds=generate_seconds,
        dit_seconds_per_step=sum(dit_durations) / options.sampling_steps,
        graph_code=graph_code)


def write_video(video: torch.Tensor, path: str, fps: int = 8) -> None:
    """Write ``[3, F, H, W]`` in [-1, 1] as an mp4 file (H.264, through imageio)."""
    import imageio

    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(1, 2, 3, 0).numpy()  # [3, F, H, W] -> [F, H, W, 3]
    imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)


def _say(message: str) -> None:
    print(f"[lite-boost demo] {message}", flush=True)


def run_demo(options: DemoOptions) -> float:
    """Run the demo; return max|diff| between the 1-process and N-process videos."""
    os.makedirs(options.output_dir, exist_ok=True)
    _say(f"tiny WanTI2V (DiT dim {options.dit_dim}, {options.dit_heads} heads, "
         f"{options.dit_layers} layers), {options.width}x{options.height}, "
         f"{options.frame_num} frames, {options.sampling_steps} steps, "
         "spatial VAE")

    _say("generating on 1 process ...")
    single = run_on_ranks(generate_on_this_rank, 1, options)[0]
    _say(f"  done in {single.generate_seconds:.2f} s")

    _say(f"generating on {options.nproc} processes ...")
    # Pure Ulysses, so the graph the demo writes shows the all_to_all rewrite;
    # left alone, the planner would pick CFG parallel for this guided pipeline.
    parallel = run_on_ranks(generate_on_this_rank, options.nproc, options,
                            init_kwargs={"ulysses_degree": options.nproc})[0]
    _say(f"  done in {parallel.generate_seconds:.2f} s")

    difference = (parallel.video - single.video).abs().max().item()
    video_path = os.path.join(options.output_dir, "video.mp4")
    graph_path = os.path.join(options.output_dir, "block0_self_attn.py")
    write_video(parallel.video, video_path)
    with open(graph_path, "w", encoding="utf-8") as graph_file:
        graph_file.write(parallel.graph_code)

    _say(f"video shape {tuple(parallel.video.shape)}")
    _say(f"DiT seconds per step: 1 process {single.dit_seconds_per_step:.3f}, "
         f"{options.nproc} processes {parallel.dit_seconds_per_step:.3f}")
    _say(f"max|diff| between the 1-process and {options.nproc}-process videos: "
         f"{difference:.3e}")
    _say(f"wrote {video_path} and {graph_path}")
    return difference
