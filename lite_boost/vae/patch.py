"""Install parallel encode and decode on one Wan VAE instance.

``patch_vae`` sets ``encode`` and ``decode`` as instance attributes that keep
the contract of ``Wan2_1_VAE`` / ``Wan2_2_VAE`` (a list of videos in, a list
out). They run each element in one of two modes: ``"temporal"`` (chunks of
time, ``tiled_encode`` / ``tiled_decode``) or ``"spatial"`` (slabs of rows,
``spatial_encode`` / ``spatial_decode``). The class, ``vae.model`` and its
weights are left as they are. The spatial mode sets instance forwards on some
layers of ``vae.model`` only for the duration of each call. ``restore_vae``
removes the instance attributes again.

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
from .spatial import spatial_decode, spatial_encode
from .spatial_layers import check_spatial_support
from .temporal import data_parallel_layout, tiled_decode, tiled_encode

logger = logging.getLogger(__name__)

_PATCH_ATTRIBUTE = "_lite_boost_temporal_tiling"
_METHOD_NAMES = ("encode", "decode")
_SUPPORTED_CLASSES = (("wan.modules.vae2_1", "Wan2_1_VAE"),
                      ("wan.modules.vae2_2", "Wan2_2_VAE"))

VAE_MODES = ("spatial", "temporal")
"""Valid values of ``patch_vae(mode=...)``."""

DEFAULT_VAE_MODE = "spatial"
"""Mode that ``ParallelManager`` uses when neither a mode nor a chunk size is given."""


@dataclasses.dataclass(frozen=True)
class TilingOptions:
    """Options of a patched VAE, as documented in ``patch_vae``.

    ``chunk_size``, ``overlap`` and ``blend`` apply to the temporal mode only.
    """

    mode: str = "temporal"
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


def _encode_one(vae, video: torch.Tensor,
                options: TilingOptions) -> torch.Tensor:
    if options.mode == "spatial":
        return spatial_encode(vae, video)
    return tiled_encode(vae, video, chunk_size=options.chunk_size,
                        overlap=options.overlap, blend=options.blend)


def _decode_one(vae, z: torch.Tensor, options: TilingOptions) -> torch.Tensor:
    if options.mode == "spatial":
        return spatial_decode(vae, z)
    return tiled_decode(vae, z, chunk_size=options.chunk_size,
                        overlap=options.overlap, blend=options.blend)


def _patched_encode(vae, videos):
    _check_video_list(vae, "encode", "videos", videos, "[3, T, H, W]")
    options = vae.__dict__[_PATCH_ATTRIBUTE].options
    latents = []
    for video in videos:
        with _wan_autocast(vae.dtype, video.device):
            latents.append(_encode_one(vae, video, options).float())
    return latents


def _patched_decode(vae, zs):
    _check_video_list(vae, "decode", "zs", zs, "[C, T_lat, H, W]")
    options = vae.__dict__[_PATCH_ATTRIBUTE].options
    videos = []
    for z in zs:
        with _wan_autocast(vae.dtype, z.device):
            video = _decode_one(vae, z, options)
            videos.append(video.float().clamp_(-1, 1))
    return videos


def _check_mode(vae, mode) -> None:
    if mode not in VAE_MODES:
        raise ValueError(
            f"mode={mode!r} is invalid: valid VAE modes are {VAE_MODES}")
    if mode == "spatial":
        check_spatial_support(vae.model)


def resolve_mode(mode: Optional[str], chunk_size: Optional[int]) -> str:
    """Return the VAE mode for ``ParallelManager(vae_parallel=mode, vae_chunk_size=chunk_size)``.

    ``mode=None`` means ``"temporal"`` when a chunk size is given, because
    only that mode uses it, and ``DEFAULT_VAE_MODE`` otherwise.

    Raises:
        ValueError: ``mode`` is not one of ``VAE_MODES``, or it is
            ``"spatial"`` together with a chunk size.
    """
    if mode is None:
        return "temporal" if chunk_size is not None else DEFAULT_VAE_MODE
    if mode not in VAE_MODES:
        raise ValueError(
            f"vae_parallel={mode!r} is invalid: valid values are {VAE_MODES} "
            "or None")
    if mode == "spatial" and chunk_size is not None:
        raise ValueError(
            f"vae_chunk_size={chunk_size} is invalid with "
            "vae_parallel='spatial': chunks are a temporal-mode option. Drop "
            "vae_chunk_size, or pass vae_parallel='temporal'")
    return mode


def patch_vae(vae, *, mode: str = "temporal",
              chunk_size: Optional[int] = None, overlap: int = 2,
              blend: int = 1):
    """Make ``vae.encode`` and ``vae.decode`` run over the ranks.

    ``mode="spatial"`` splits every frame into slabs of rows, one per rank,
    which exchange boundary rows at every layer that needs them. The result
    equals Wan's untiled encode or decode up to float rounding.
    ``mode="temporal"`` splits the video into chunks of latent frames,
    controlled by ``chunk_size``, ``overlap`` and ``blend``. Its result
    differs from Wan's untiled one, because the VAE is causal in time.

    The patched methods keep Wan's contract: a list of tensors in (videos
    ``[3, T, H, W]`` or latents ``[C, T_lat, H, W]``), a list of float32
    tensors out, decoded frames clamped to [-1, 1]. Every rank of
    lite_boost's group must call them with the same shapes, because the
    ranks exchange rows or gather chunks with collectives.

    Wan's generate() (text2video, image2video, textimage2video in wan22
    2.2.11) calls ``vae.decode`` on rank 0 only, so a patched decode there
    would wait in the gather until the process group times out.
    ``ParallelManager`` wraps generate() so that every rank decodes. Code that
    calls ``patch_vae`` directly must do the same.

    Patching a patched VAE again replaces its options and keeps the saved
    originals.

    Args:
        vae: a ``Wan2_1_VAE`` or ``Wan2_2_VAE`` instance.
        mode: ``"temporal"`` (default, kept for existing callers) or
            ``"spatial"``. ``ParallelManager`` picks its own default.
        chunk_size: temporal mode, core latents per chunk. Default (None):
            ``ceil(T_lat / world_size)``, so one rank gives Wan's untiled
            result exactly.
        overlap: temporal mode, warm-up latents before each chunk after the
            first (default 2), >= 1 whenever a video is split into more than
            one chunk.
        blend: temporal mode, warm-up latents cross-faded with the previous
            chunk (default 1), ``0 <= blend <= overlap - 1``.

    Returns:
        ``vae`` itself.

    Raises:
        RuntimeError: ``vae`` is not a supported Wan VAE.
        TypeError, ValueError: an option is invalid. The temporal options
            are checked in both modes.
        NotImplementedError: ``mode="spatial"`` and ``vae.model`` has a
            layer that cannot be split by rows (Wan's own VAEs have none).

    Example::

        patch_vae(pipeline.vae, mode="spatial")
        latents = pipeline.vae.encode([video])  # on every rank
        restore_vae(pipeline.vae)
    """
    _check_supported(vae)
    check_options(chunk_size, overlap, blend)
    _check_mode(vae, mode)
    options = TilingOptions(mode=mode, chunk_size=chunk_size,
                            overlap=overlap, blend=blend)

    record = vae.__dict__.get(_PATCH_ATTRIBUTE)
    if record is not None:
        record.options = options
        logger.info("updated parallel VAE options of %s: %s",
                    type(vae).__name__, options)
        return vae

    saved = {name: vae.__dict__[name] for name in _METHOD_NAMES
             if name in vae.__dict__}
    vae.__dict__[_PATCH_ATTRIBUTE] = _PatchRecord(options, saved)
    vae.encode = types.MethodType(_patched_encode, vae)
    vae.decode = types.MethodType(_patched_decode, vae)
    _, _, world_size = data_parallel_layout()
    logger.info("patched %s encode/decode with %s parallelism on %d "
                "rank(s): %s", type(vae).__name__, mode, world_size, options)
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
