"""Parallel encode and decode of the Wan2.1 and Wan2.2 VAEs.

``patch_vae(vae, mode=...)`` makes ``vae.encode`` / ``vae.decode`` run on the
ranks of lite_boost's group and return the whole result on every rank, in one
of two modes:

- ``"spatial"``: each rank computes a slab of rows of every frame and
  exchanges boundary rows with its neighbours (``spatial_encode`` /
  ``spatial_decode``, row split by ``split_rows``). The result equals Wan's
  untiled one up to float rounding.
- ``"temporal"``: each rank computes chunks of latent frames
  (``tiled_encode`` / ``tiled_decode``, chunking by ``plan_chunks``). Chunked
  results differ from Wan's untiled ones because the VAE is causal in time;
  they equal a sequential run of the same chunks (``sequential=True``).
"""

from .patch import (DEFAULT_VAE_MODE, VAE_MODES, TilingOptions, is_patched,
                    patch_vae, resolve_mode, restore_vae, tiling_options)
from .plan import (Chunk, default_chunk_size, num_decoded_frames,
                   num_encoded_latents, plan_chunks)
from .spatial import Slab, spatial_decode, spatial_encode, split_rows
from .temporal import tiled_decode, tiled_encode

__all__ = [
    "DEFAULT_VAE_MODE",
    "Chunk",
    "Slab",
    "TilingOptions",
    "VAE_MODES",
    "default_chunk_size",
    "is_patched",
    "num_decoded_frames",
    "num_encoded_latents",
    "patch_vae",
    "plan_chunks",
    "resolve_mode",
    "restore_vae",
    "spatial_decode",
    "spatial_encode",
    "split_rows",
    "tiled_decode",
    "tiled_encode",
    "tiling_options",
]
