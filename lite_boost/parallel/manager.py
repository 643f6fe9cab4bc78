"""``ParallelManager``: the entry point that patches a Wan object in place."""

from typing import Optional, TypeVar

from ..model.adapters import setup_model

T = TypeVar("T")


class ParallelManager:
    """Patch a Wan pipeline or WanModel for multi-device inference, in place.

    ``ParallelManager(pipe)`` evaluates to ``pipe`` itself, now parallel:
    Ulysses sequence parallelism on every DiT and data-parallel temporal
    tiling on the VAE. A second call on the same object changes nothing, and
    ``lite_boost.restore(pipe)`` undoes it.

    Args:
        target: WanTI2V, WanT2V, WanI2V or WanModel.
        vae_chunk_size: latent frames per VAE chunk; None spreads the latents
            evenly over the ranks (one chunk per rank).
        vae_overlap: latent frames that each chunk after the first also
            decodes before its own, to warm up the causal caches (>= 1).
        vae_blend: how many of those overlap latents are blended linearly with
            the previous chunk instead of dropped (< vae_overlap).
        rope: None keeps Wan's float64 rope; "float32" computes rope with
            float32 real arithmetic (``torch_npu.npu_rotary_mul`` on NPU),
            which NPUs run much faster. Max error against float64: 4.8e-7,
            measured on CPU at head dim 128.

    Example::

        initialize_usp()
        pipe = ParallelManager(WanTI2V(...))
        video = pipe.generate(prompt, size=(1280, 704), frame_num=121)
    """

    def __new__(cls, target: T, *, vae_chunk_size: Optional[int] = None,
                vae_overlap: int = 2, vae_blend: int = 1,
                rope: Optional[str] = None) -> T:
        return setup_model(target, vae_chunk_size=vae_chunk_size,
                           vae_overlap=vae_overlap, vae_blend=vae_blend,
                           rope=rope)
