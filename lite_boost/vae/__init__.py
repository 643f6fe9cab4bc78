"""Data-parallel temporal tiling of the Wan2.1 and Wan2.2 VAEs.

``patch_vae(vae)`` makes ``vae.encode`` / ``vae.decode`` split each video into
temporal chunks, run them on the ranks of lite_boost's group and gather the
result on every rank. ``tiled_encode`` / ``tiled_decode`` do the same for one
tensor, and ``plan_chunks`` computes the chunking. Chunked results differ from
Wan's untiled ones because the VAE is causal in time; they equal a sequential
run of the same chunks (``sequential=True``).
"""

from .patch import (TilingOptions, is_patched, patch_vae, restore_vae,
                    tiling_options)
from .plan import (Chunk, default_chunk_size, num_decoded_frames,
                   num_encoded_latents, plan_chunks)
from .temporal import tiled_decode, tiled_encode

__all__ = [
    "Chunk",
    "TilingOptions",
    "default_chunk_size",
    "is_patched",
    "num_decoded_frames",
    "num_encoded_latents",
    "patch_vae",
    "plan_chunks",
    "restore_vae",
    "tiled_decode",
    "tiled_encode",
    "tiling_options",
]
