"""``ParallelManager``: the entry point that patches a Wan object in place."""

from typing import Optional, TypeVar

from ..model.adapters import setup_model

T = TypeVar("T")


class ParallelManager:
    """Patch a Wan pipeline or WanModel for multi-device inference, in place.

    ``ParallelManager(pipe)`` evaluates to ``pipe`` itself, now parallel:
    Ulysses sequence parallelism on every DiT and a parallel VAE encode and
    decode. A second call on the same object changes nothing, and
    ``lite_boost.restore(pipe)`` undoes it.

    Args:
        target: WanTI2V, WanT2V, WanI2V or WanModel.
        vae_parallel: ``"spatial"`` splits every frame into slabs of rows,
            one per rank, and gives Wan's untiled result. ``"temporal"``
            splits the video into chunks of latent frames, and its result
            differs from Wan's untiled one at chunk borders. None (default):
            ``"temporal"`` when ``vae_chunk_size`` is given, else
            ``"spatial"``.
        vae_chunk_size: temporal mode, latent frames per VAE chunk; None
            spreads the latents evenly over the ranks (one chunk per rank).
        vae_overlap: temporal mode, latent frames that each chunk after the
            first also decodes before its own, to warm up the causal caches
            (>= 1).
        vae_blend: temporal mode, how many of those overlap latents are
            blended linearly with the previous chunk instead of dropped
            (< vae_overlap).
        rope: None keeps Wan's float64 rope; "float32" computes rope with
            float32 real arithmetic (``torch_npu.npu_rotary_mul`` on NPU),
            which NPUs run much faster. Max error against float64: 4.8e-7,
            measured on CPU at head dim 128.
        guidance: whether the DiT is called twice per step (prompt and
            negative prompt), which lets the planner choose CFG parallel.
            None infers it: pipelines use guidance unless ``lightning`` is
            set, a raw WanModel does not.

    The (cfg, ulysses, ring) degrees come from ``initialize_usp()`` when the
    caller gave them. Otherwise the planner (``lite_boost.parallel.planner``)
    chooses them here from the head count and ``guidance``.

    Example::

        initialize_usp()
        pipe = ParallelManager(WanTI2V(...))
        video = pipe.generate(prompt, size=(1280, 704), frame_num=121)
    """

    def __new__(cls, target: T, *, vae_parallel: Optional[str] = None,
                vae_chunk_size: Optional[int] = None,
                vae_overlap: int = 2, vae_blend: int = 1,
                rope: Optional[str] = None,
                guidance: Optional[bool] = None) -> T:
        return setup_model(target, vae_parallel=vae_parallel,
                           vae_chunk_size=vae_chunk_size,
                           vae_overlap=vae_overlap, vae_blend=vae_blend,
                           rope=rope, guidance=guidance)
