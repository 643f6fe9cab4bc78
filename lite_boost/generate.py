"""``lite-boost generate``: Wan2.2 checkpoints, patched by lite_boost, under torchrun.

Example (8 devices)::

    torchrun --nproc-per-node 8 -m lite_boost generate --task ti2v-5B \\
        --ckpt_dir ./Wan2.2-TI2V-5B --size 1280*704 --prompt "..."
"""

import logging

logger = logging.getLogger(__name__)


def _build_pipeline(task: str, ckpt_dir: str, state, offload_model: bool):
    from wan.configs import WAN_CONFIGS
    from wan.image2video import WanI2V
    from wan.text2video import WanT2V
    from wan.textimage2video import WanTI2V

    classes = {"ti2v-5B": WanTI2V, "t2v-A14B": WanT2V, "i2v-A14B": WanI2V}
    config = WAN_CONFIGS[task]
    # use_sp stays False: lite_boost adds sequence parallelism itself.
    return classes[task](
        config=config, checkpoint_dir=ckpt_dir, device_id=state.local_rank,
        rank=state.rank, t5_cpu=offload_model)


def generate_from_checkpoints(args) -> None:
    from wan.configs import SUPPORTED_SIZES, WAN_CONFIGS

    from .demo import write_video
    from .parallel import ParallelManager, initialize_usp

    state = initialize_usp()
    config = WAN_CONFIGS[args.task]
    size_text = args.size or SUPPORTED_SIZES[args.task][0]
    width, height = (int(part) for part in size_text.split("*"))
    frame_num = args.frame_num or config.frame_num
    sample_steps = args.sample_steps or config.sample_steps
    if args.task == "i2v-A14B" and args.image is None:
        raise SystemExit("lite-boost generate: --task i2v-A14B needs --image")

    pipe = ParallelManager(_build_pipeline(args.task, args.ckpt_dir, state,
                                           args.offload_model))
    kwargs = dict(frame_num=frame_num, sampling_steps=sample_steps,
                  shift=config.sample_shift, guide_scale=config.sample_guide_scale,
                  seed=args.seed, offload_model=args.offload_model)
    if args.image is not None:
        from PIL import Image

        image = Image.open(args.image).convert("RGB")
        video = pipe.generate(args.prompt, img=image,
                              max_area=width * height, **kwargs)
    else:
        video = pipe.generate(args.prompt, size=(width, height), **kwargs)

    if state.rank == 0:
        write_video(video.cpu(), args.save_file, fps=config.sample_fps)
        logger.info("wrote %s", args.save_file)
