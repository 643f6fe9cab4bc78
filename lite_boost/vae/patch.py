"""Install temporal tiling on one Wan VAE instance.

``patch_vae`` sets ``encode`` and ``decode`` as instance attributes that keep
the contract of ``Wan2_1_VAE`` / ``Wan2_2_VAE`` (a list of videos in, a list
out) and run ``tiled_encode`` / ``tiled_decode`` on each element. The class,
``vae.model`` and its weights are left as they are, and ``restore_vae`` removes
the instance attributes again.

Wan2_2_VAE's own methods catch TypeError and return None. The wrappers catch
nothing: invalid input raises.
"""

import contextlib
import dataclasses
import logging
import sys
import types
from typing import Dict, Optional

import torch

from .plan import check_options
from .temporal import data_parallel_layout, tiled_decode, tiled_encode

logger = logging.getLogger(__name__)

_PATCH_ATTRIBUTE = "_lite_boost_temporal_tiling"
_METHOD_NAMES = ("encode", "decode")
_SUPPORTED_CLASSES = (("wan.modules.vae2_1", "Wan2_1_VAE"),
                      ("wan.modules.vae2_2", "Wan2_2_VAE"))


@dataclasses.dataclass(frozen=True)
class TilingOptions:
    """Options of a patched VAE, as documented in ``tiled_decode``."""

    chunk_size: Optional[int] = None
    overlap: int = 2
    blend: int = 1


@dataclasses.dataclass
class _PatchRecord:
    options: TilingOptions
    # Instance attributes named encode/decode that existed before patch_vae,
    # put back by restore_vae.
    saved_attributes: Dict[str, object]


def _supported_classes() -> tuple:
    # An instance can exist only once its class's module is imported, so
    # looking in sys.modules avoids importing wan (several seconds) just to
    # reject some other type.
    classes = []
    for module_name, class_name in _SUPPORTED_CLASSES:
        module = sys.modules.get(module_name)
        if module is not None:
            classes.append(getattr(module, class_name))
    return tuple(classes)


def _check_supported(vae) -> None:
    vae_type = f"{type(vae).__module__}.{type(vae).__qualname__}"
    if not isinstance(vae, _supported_classes()):
        raise RuntimeError(
            f"patch_vae does not support {vae_type}: supported types are "
            "wan.modules.vae2_1.Wan2_1_VAE and wan.modules.vae2_2.Wan2_2_VAE")

    model = getattr(vae, "model", None)
    missing = [name for name in _METHOD_NAMES
               if not callable(getattr(model, name, None))]
    missing += [name for name in ("scale", "dtype") if not hasattr(vae, name)]
    if missing:
        raise RuntimeError(
            f"patch_vae cannot patch this {vae_type}: vae.model.encode/decode, "
            f"vae.scale and vae.dtype are required, missing: {missing}")


def _wan_autocast(dtype: torch.dtype, device: torch.device):
    # Wan wraps its encode/decode in torch.cuda.amp.autocast(dtype=vae.dtype),
    # which casts only CUDA ops and leaves CPU ops alone. On Ascend,
    # torch_npu's transfer_to_npu reportedly turns it into NPU autocast. This
    # opens the same region for the device the tensors are on.
    # NOTE: the NPU branch is untested here (no NPU on the development host).
    if device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_video_list(vae, method: str, argument: str, values,
                      layout: str) -> None:
    where = f"{type(vae).__name__}.{method}({argument})"
    if not isinstance(values, list):
        raise TypeError(
            f"{where} expects a list of tensors {layout}, got "
            f"{type(values).__name__}. Wrap a single tensor as [tensor]")
    for index, value in enumerate(values):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{where}: element {index} is a {type(value).__name__}, "
                f"expected a tensor {layout}")
        if value.dim() != 4:
            raise ValueError(
                f"{where}: element {index} has shape {tuple(value.shape)}, "
                f"expected a 4-D tensor {layout}")


def _options_of(vae) -> Dict[str, object]:
    return dataclasses.asdict(vae.__dict__[_PATCH_ATTRIBUTE].options)


def _patched_encode(vae, videos):
    _check_video_list(vae, "encode", "videos", videos, "[3, T, H, W]")
    options = _options_of(vae)
    latents = []
    for video in videos:
        with _wan_autocast(vae.dtype, video.device):
            latents.append(tiled_encode(vae, video, **options).float())
    return latents


def _patched_decode(vae, zs):
    _check_video_list(vae, "decode", "zs", zs, "[C, T_lat, H, W]")
    options = _options_of(vae)
    videos = []
    for z in zs:
        with _wan_autocast(vae.dtype, z.device):
            video = tiled_decode(vae, z, **options)
            videos.append(video.float().clamp_(-1, 1))
    return videos


def patch_vae(vae, *, chunk_size: Optional[int] = None, overlap: int = 2,
              blend: int = 1):
    """Make ``vae.encode`` and ``vae.decode`` tile in time over the ranks.

    The patched methods keep Wan's contract: a list of tensors in (videos
    ``[3, T, H, W]`` or latents ``[C, T_lat, H, W]``), a list of float32
    tensors out, decoded frames clamped to [-1, 1]. Every rank of
    lite_boost's group must call them with the same shapes, because the chunk
    outputs are gathered with collectives.

    Wan's generate() (text2video, image2video, textimage2video in wan22
    2.2.11) calls ``vae.decode`` on rank 0 only, so a patched decode there
    would wait in the gather until the process group times out.
    ``ParallelManager`` wraps generate() so that every rank decodes. Code that
    calls ``patch_vae`` directly must do the same.

    Patching a patched VAE again replaces its options and keeps the saved
    originals.

    Args:
        vae: a ``Wan2_1_VAE`` or ``Wan2_2_VAE`` instance.
        chunk_size: core latents per chunk. Default (None):
            ``ceil(T_lat / world_size)``, so one rank gives Wan's untiled
            result exactly.
        overlap: warm-up latents before each chunk after the first (default
            2), >= 1 whenever a video is split into more than one chunk.
        blend: warm-up latents cross-faded with the previous chunk (default
            1), ``0 <= blend <= overlap - 1``.

    Returns:
        ``vae`` itself.

    Raises:
        RuntimeError: ``vae`` is not a supported Wan VAE.
        TypeError, ValueError: an option is invalid.

    Example::

        patch_vae(pipeline.vae, overlap=2, blend=1)
        latents = pipeline.vae.encode([video])  # on every rank
        restore_vae(pipeline.vae)
    """
    _check_supported(vae)
    check_options(chunk_size, overlap, blend)
    options = TilingOptions(chunk_size=chunk_size, overlap=overlap,
                            blend=blend)

    record = vae.__dict__.get(_PATCH_ATTRIBUTE)
    if record is not None:
        record.options = options
        logger.info("updated temporal tiling of %s: %s",
                    type(vae).__name__, options)
        return vae

    saved = {name: vae.__dict__[name] for name in _METHOD_NAMES
             if name in vae.__dict__}
    vae.__dict__[_PATCH_ATTRIBUTE] = _PatchRecord(options, saved)
    vae.encode = types.MethodType(_patched_encode, vae)
    vae.decode = types.MethodType(_patched_decode, vae)
    _, _, world_size = data_parallel_layout()
    logger.info("patched %s encode/decode with temporal tiling on %d "
                "rank(s): %s", type(vae).__name__, world_size, options)
    return vae


def restore_vae(vae):
    """Remove what ``patch_vae`` set on ``vae``; a no-op when it is not patched.

    Returns:
        ``vae`` itself.
    """
    record = vae.__dict__.pop(_PATCH_ATTRIBUTE, None)
    if record is None:
        return vae
    for name in _METHOD_NAMES:
        vae.__dict__.pop(name, None)
    vae.__dict__.update(record.saved_attributes)
    logger.info("restored %s encode/decode", type(vae).__name__)
    return vae


def is_patched(vae) -> bool:
    """Return whether ``patch_vae`` has patched ``vae``."""
    return _PATCH_ATTRIBUTE in getattr(vae, "__dict__", {})


def tiling_options(vae) -> Optional[TilingOptions]:
    """Return the options of a patched VAE, or None when it is not patched."""
    record = getattr(vae, "__dict__", {}).get(_PATCH_ATTRIBUTE)
    return None if record is None else record.options
