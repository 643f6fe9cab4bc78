"""The ``lite-boost`` command: ``demo``, ``generate`` and ``inspect``."""

import argparse
import logging
import os
import sys
from typing import List, Optional

TASKS = ("ti2v-5B", "t2v-A14B", "i2v-A14B")


def _add_demo_parser(subparsers) -> None:
    from .demo import DemoOptions

    defaults = DemoOptions()
    parser = subparsers.add_parser(
        "demo", help="generate a short video with a tiny Wan2.2 TI2V pipeline "
        "on 1 and on N processes and compare the two")
    parser.add_argument("--nproc", type=int, default=defaults.nproc,
                        help="processes of the parallel run (default: %(default)s)")
    parser.add_argument("--frame-num", type=int, default=defaults.frame_num,
                        help="video frames, 4n+1 (default: %(default)s)")
    parser.add_argument("--size", default=f"{defaults.width}*{defaults.height}",
                        help="width*height in pixels, multiples of 32 "
                        "(default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=defaults.sampling_steps,
                        help="denoising steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="noise seed (default: %(default)s)")
    parser.add_argument("--output-dir", default=defaults.output_dir,
                        help="folder for video.mp4 and the graph code "
                        "(default: %(default)s)")


def _add_generate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate a video from real Wan2.2 checkpoints; run "
        "it under torchrun for several devices")
    parser.add_argument("--task", choices=TASKS, default="ti2v-5B")
    parser.add_argument("--ckpt_dir", required=True,
                        help="folder with the task's Wan2.2 checkpoints")
    parser.add_argument("--size", default=None,
                        help="width*height, e.g. 1280*704 (default: the task's first "
                        "supported size)")
    parser.add_argument("--frame_num", type=int, default=None,
                        help="frames, 4n+1 (default: the task's config)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--image", default=None,
                        help="input image for i2v-A14B or the i2v path of ti2v-5B")
    parser.add_argument("--sample_steps", type=int, default=None,
                        help="denoising steps (default: the task's config)")
    parser.add_argument("--seed", type=int, default=0,
                        help="noise seed; must be the same on every rank")
    parser.add_argument("--offload_model", action="store_true",
                        help="move models to the CPU between stages to save memory")
    parser.add_argument("--save_file", default="lite_boost_video.mp4",
                        help="output mp4 path, written by rank 0")


def _add_inspect_parser(subparsers) -> None:
    from .inspection.tiny_run import InspectOptions

    defaults = InspectOptions()
    parser = subparsers.add_parser(
        "inspect", help="patch a tiny Wan2.2 TI2V pipeline on N processes, run one "
        "step and write the rewritten graphs, their diffs and byte counts")
    parser.add_argument("--nproc", type=int, default=defaults.nproc,
                        help="processes, the Ulysses degree (default: %(default)s)")
    parser.add_argument("--size", default=f"{defaults.width}*{defaults.height}",
                        help="width*height in pixels, multiples of 32 "
                        "(default: %(default)s)")
    parser.add_argument("--frame-num", type=int, default=defaults.frame_num,
                        help="video frames, 4n+1 (default: %(default)s)")
    parser.add_argument("--dit-heads", type=int, default=defaults.dit_heads,
                        help="attention heads of the tiny DiT; --nproc must divide "
                        "it (default: %(default)s)")
    parser.add_argument("--dit-layers", type=int, default=defaults.dit_layers,
                        help="blocks of the tiny DiT (default: %(default)s)")
    parser.add_argument("--output-dir", default=defaults.output_dir,
                        help="folder for the dump (default: %(default)s)")
    parser.add_argument("--readme-excerpt", action="store_true",
                        help="print the Markdown excerpt that README.md shows "
                        "instead of the summary")


def _parse_size(text: str, option: str) -> tuple:
    try:
        width, height = (int(part) for part in text.split("*"))
    except ValueError:
        raise SystemExit(f"{option} {text!r} is invalid: use width*height, "
                         "e.g. 1280*704") from None
    return width, height


def _run_demo(args) -> int:
    from .demo import DemoOptions, run_demo

    width, height = _parse_size(args.size, "--size")
    options = DemoOptions(
        nproc=args.nproc, width=width, height=height, frame_num=args.frame_num,
        sampling_steps=args.sample_steps, seed=args.seed,
        output_dir=args.output_dir)
    run_demo(options)
    return 0


def _run_inspect(args) -> int:
    from .inspection.tiny_run import (InspectOptions, readme_excerpt,
                                      run_inspect)

    width, height = _parse_size(args.size, "--size")
    defaults = InspectOptions()
    # 16 channels per head keep the DiT's head dim as in the demo.
    dit_dim = defaults.dit_dim // defaults.dit_heads * args.dit_heads
    options = InspectOptions(
        nproc=args.nproc, width=width, height=height, frame_num=args.frame_num,
        dit_dim=dit_dim, dit_heads=args.dit_heads, dit_layers=args.dit_layers,
        output_dir=args.output_dir)
    result = run_inspect(options)
    if args.readme_excerpt:
        print(readme_excerpt(options, result), end="")
        return 0
    print(result.summary)
    print(f"wrote {len(result.written)} files under {options.output_dir}")
    return 0


def _run_generate(args) -> int:
    if not os.path.isdir(args.ckpt_dir):
        print(f"lite-boost generate: --ckpt_dir {args.ckpt_dir!r} is not a "
              "directory; download the task's Wan2.2 checkpoints and pass "
              "their folder", file=sys.stderr)
        return 2
    from .generate import generate_from_checkpoints

    generate_from_checkpoints(args)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lite-boost",
        description="Multi-device inference for Wan2.x video pipelines.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(subparsers)
    _add_generate_parser(subparsers)
    _add_inspect_parser(subparsers)
    args = parser.parse_args(argv)

    level = os.environ.get("LITE_BOOST_LOG", "warning").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "inspect":
        return _run_inspect(args)
    return _run_generate(args)


if __name__ == "__main__":
    sys.exit(main())
