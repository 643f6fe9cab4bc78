"""generate() runs of the tiny pipelines, shared by the 1-rank and 2-rank runs."""

import dataclasses
from typing import Optional, Tuple

import torch


@dataclasses.dataclass(frozen=True)
class GenerateCase:
    name: str
    kind: str  # tiny_pipeline kind
    size: Tuple[int, int]  # (width, height)
    frame_num: int
    image_size: Optional[Tuple[int, int]] = None  # (width, height) of the input image
    vae_chunk_size: Optional[int] = 2


CASES = (
    GenerateCase("ti2v t2v path", "ti2v", (96, 64), 13),
    GenerateCase("ti2v i2v path", "ti2v", (96, 64), 9, image_size=(120, 80)),
    GenerateCase("t2v experts with guidance", "t2v", (48, 32), 9),
    GenerateCase("i2v experts with guidance", "i2v", (48, 32), 9, image_size=(60, 40)),
)


def test_image(size):
    from PIL import Image

    width, height = size
    generator = torch.Generator().manual_seed(7)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator,
                           dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def generate(case: GenerateCase, patch: bool = True, pipeline=None) -> torch.Tensor:
    """Run one case, on ``pipeline`` when given, else on a fresh tiny pipeline."""
    from lite_boost.parallel import ParallelManager
    from lite_boost.tiny import tiny_pipeline

    pipe = pipeline or tiny_pipeline(case.kind, seed=3)
    if patch and pipeline is None:
        ParallelManager(pipe, vae_chunk_size=case.vae_chunk_size)
    kwargs = dict(frame_num=case.frame_num, sampling_steps=3, seed=11,
                  offload_model=False)
    if case.image_size is not None:
        width, height = case.size
        kwargs["img"] = test_image(case.image_size)
        # Wan rounds sqrt(max_area * aspect) down to the latent grid; a little
        # headroom keeps float rounding from dropping a whole grid step.
        kwargs["max_area"] = width * height + 200
    else:
        kwargs["size"] = case.size
    return pipe.generate("a tiny test prompt", **kwargs)


def generate_all():
    """Rank body: every case, patched; each rank returns its videos."""
    return [generate(case) for case in CASES]
