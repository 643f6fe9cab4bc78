"""Halo-exchanging forwards for the layers of a Wan VAE, installed for one call.

``halo_forwards(model, exchange)`` is a context manager. Inside it, the layers
of ``model`` that mix rows compute on this rank's slab as they would on the
whole frame, and on leaving it the model is as before. Only instance
``forward`` attributes are set and removed: the classes, the weights and the
state dict are never touched.

How each layer of ``wan/modules/vae2_1.py`` and ``vae2_2.py`` (PyPI
``wan22==2.2.11``) is handled:

- ``CausalConv3d`` with a kernel taller than one row pads its rows with the
  neighbours' rows instead of zeros, then pads time and width as before. Its
  time cache contains earlier frames of this slab only, and each neighbour's
  cache contains the same frames of its own slab, so the halo of the cached
  frames is exchanged together with the current ones.
- ``nn.Conv2d`` with row padding (the 3x3 convolution after each upsampling)
  does the same.
- The ``nn.ZeroPad2d((0, 1, 0, 1))`` before each stride-2 downsampling
  convolution takes the first row of the slab below instead of a zero row,
  except on the bottom slab. This is exact only when every slab starts on an
  even row at that level, which the row split in ``spatial.py`` ensures.
- ``AttentionBlock`` attends over all positions of a frame: each rank keeps
  its own queries and gathers the keys and values of every slab.
- Left as they are: ``RMS_norm`` (it normalizes each position over channels),
  nearest-neighbour ``Upsample`` with an integer scale, ``AvgDown3D`` /
  ``DupUp3D`` and ``patchify`` (rows regroup in pairs that never straddle a
  slab boundary), kernels one row tall, and time-only convolutions.

Any other layer that mixes rows raises NotImplementedError from
``check_spatial_support``.
"""

import contextlib
import dataclasses
import functools
from typing import Callable, Iterator, List

import torch
import torch.nn.functional as F
from torch import nn

from .halo import RowExchange

# Types that normalize over spatial positions, which a slab cannot do alone.
_SPATIAL_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm,
                  nn.modules.instancenorm._InstanceNorm)
_NEAREST_MODES = ("nearest", "nearest-exact")
_DOWNSAMPLE_MODES = ("downsample2d", "downsample3d")


@dataclasses.dataclass(frozen=True)
class _WanTypes:
    causal_conv: tuple
    resample: tuple
    attention: tuple
    rms_norm: tuple


@functools.lru_cache(maxsize=1)
def _wan_types() -> _WanTypes:
    # Imported on first use: a VAE patched in spatial mode means wan is
    # already imported.
    from wan.modules import vae2_1, vae2_2

    modules = (vae2_1, vae2_2)
    return _WanTypes(
        causal_conv=tuple(m.CausalConv3d for m in modules),
        resample=tuple(m.Resample for m in modules),
        attention=tuple(m.AttentionBlock for m in modules),
        rms_norm=tuple(m.RMS_norm for m in modules),
    )


@dataclasses.dataclass(frozen=True)
class _Override:
    """One layer whose forward is replaced, and the function that replaces it."""

    name: str
    module: nn.Module
    forward: Callable


def _unsupported(name: str, module: nn.Module, reason: str) -> None:
    raise NotImplementedError(
        f"spatial VAE mode does not support layer {name!r} "
        f"({type(module).__name__}): {reason}. Use the temporal mode for "
        "this model")


def _check_same_padding(name: str, module: nn.Module, kernel: int,
                        dilation: int, stride: int, top: int,
                        bottom: int) -> None:
    # A stride-1 convolution whose row padding keeps the height maps slab
    # rows to the same rows of the output, so padding with neighbour rows
    # reproduces the whole-frame result.
    if stride != 1 or top != bottom or dilation * (kernel - 1) != top + bottom:
        _unsupported(
            name, module,
            f"row kernel {kernel}, dilation {dilation}, stride {stride}, "
            f"padding ({top}, {bottom}). Only stride-1 convolutions that "
            "keep the height are split")


def _causal_conv_override(name: str, module: nn.Module) -> List[_Override]:
    # CausalConv3d stores its padding for F.pad as
    # (left, right, top, bottom, time front, time back).
    _, _, top, bottom, _, _ = module._padding
    kernel = module.kernel_size[1]
    if kernel == 1 and top == bottom == 0:
        return []
    _check_same_padding(name, module, kernel, module.dilation[1],
                        module.stride[1], top, bottom)
    return [_Override(name, module, _causal_conv3d_forward)]


def _conv2d_override(name: str, module: nn.Conv2d) -> List[_Override]:
    if isinstance(module.padding, str):
        _unsupported(name, module, f"padding={module.padding!r}")
    kernel = module.kernel_size[0]
    top = module.padding[0]
    if kernel == 1 and top == 0:
        return []
    if module.padding_mode != "zeros":
        _unsupported(name, module, f"padding_mode={module.padding_mode!r}")
    _check_same_padding(name, module, kernel, module.dilation[0],
                        module.stride[0], top, top)
    return [_Override(name, module, _conv2d_forward)]


def _downsample_overrides(name: str, resample: nn.Module) -> List[_Override]:
    pad, conv = resample.resample[0], resample.resample[1]
    expected = (isinstance(pad, nn.ZeroPad2d) and tuple(pad.padding) == (0, 1, 0, 1)
                and isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
                and conv.stride == (2, 2) and conv.padding == (0, 0)
                and conv.dilation == (1, 1))
    if not expected:
        _unsupported(name, resample,
                     "expected ZeroPad2d((0, 1, 0, 1)) then a 3x3 stride-2 "
                     "Conv2d without padding, as in wan22 2.2.11")
    return [_Override(f"{name}.resample.0", pad, _zero_pad2d_forward)]


def _check_upsample(name: str, module: nn.Upsample) -> None:
    scale = module.scale_factor
    row_scale = scale[0] if isinstance(scale, tuple) else scale
    if (module.mode not in _NEAREST_MODES or row_scale is None
            or float(row_scale) != int(row_scale)):
        _unsupported(name, module,
                     f"mode={module.mode!r}, scale_factor={scale!r}. Only "
                     "nearest-neighbour upsampling by an integer is local "
                     "to a slab")


def _collect_overrides(model: nn.Module) -> List[_Override]:
    """Walk ``model`` and return the layers that need a halo-aware forward.

    Raises:
        NotImplementedError: a layer mixes rows in a way this mode cannot
            split; the message names the layer.
    """
    wan = _wan_types()
    overrides: List[_Override] = []
    handled = set()  # ids of the convolutions inside downsampling Resamples

    for name, module in model.named_modules():
        if isinstance(module, wan.resample) and module.mode in _DOWNSAMPLE_MODES:
            overrides += _downsample_overrides(name, module)
            handled.add(id(module.resample[1]))

        if id(module) in handled:
            continue
        if isinstance(module, wan.causal_conv):
            overrides += _causal_conv_override(name, module)
        elif isinstance(module, nn.Conv2d):
            overrides += _conv2d_override(name, module)
        elif isinstance(module, nn.modules.conv._ConvNd):
            _unsupported(name, module, "only Wan's CausalConv3d and "
                         "nn.Conv2d are split")
        elif isinstance(module, wan.attention):
            overrides.append(_Override(name, module, _attention_forward))
        elif isinstance(module, _SPATIAL_NORMS):
            _unsupported(name, module, "it normalizes over spatial positions")
        elif isinstance(module, wan.rms_norm) and not module.channel_first:
            _unsupported(name, module, "channel_first=False normalizes over "
                         "the last dimension, which is the width")
        elif isinstance(module, nn.Upsample):
            _check_upsample(name, module)
    return overrides


def check_spatial_support(model: nn.Module) -> None:
    """Raise NotImplementedError when ``model`` has a layer the spatial mode cannot split."""
    _collect_overrides(model)


@contextlib.contextmanager
def halo_forwards(model: nn.Module, exchange: RowExchange,
                  issuer: str) -> Iterator[None]:
    """Install the halo-exchanging forwards on ``model``'s layers for one call.

    They are removed on exit, also when the call raises.

    Args:
        model: the ``WanVAE_`` of a Wan2.1 or Wan2.2 VAE.
        exchange: this rank's place among the ranks that split the frame.
        issuer: the lite_boost call, for messages of failed exchanges.
    """
    overrides = _collect_overrides(model)
    for override in overrides:
        if "forward" in vars(override.module):
            raise RuntimeError(
                f"{issuer}: layer {override.name!r} already has an instance "
                "forward. Is a spatial call already running on this model, or "
                "did other code replace that forward?")

    try:
        for override in overrides:
            layer_issuer = f"{issuer}, layer {override.name}"
            override.module.forward = functools.partial(
                override.forward, override.module, exchange, layer_issuer)
        yield
    finally:
        for override in overrides:
            vars(override.module).pop("forward", None)


def _causal_conv3d_forward(module: nn.Conv3d, exchange: RowExchange,
                           issuer: str, x: torch.Tensor,
                           cache_x: torch.Tensor = None) -> torch.Tensor:
    # The steps of CausalConv3d.forward in wan22 2.2.11, with the row padding
    # taken from the neighbours. x: [B, C, T, h, W].
    padding = list(module._padding)
    if cache_x is not None and padding[4] > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        padding[4] -= cache_x.shape[2]
    x = exchange.pad_rows(x, padding[2], padding[3], issuer)
    padding[2] = padding[3] = 0
    x = F.pad(x, padding)
    return nn.Conv3d.forward(module, x)


def _conv2d_forward(module: nn.Conv2d, exchange: RowExchange, issuer: str,
                    x: torch.Tensor) -> torch.Tensor:
    # x: [B * T, C, h, W] -> [B * T, C', h, W]
    top = module.padding[0]
    x = exchange.pad_rows(x, top, top, issuer)
    return F.conv2d(x, module.weight, module.bias, module.stride,
                    (0, module.padding[1]), module.dilation, module.groups)


def _zero_pad2d_forward(module: nn.ZeroPad2d, exchange: RowExchange,
                        issuer: str, x: torch.Tensor) -> torch.Tensor:
    left, right, top, bottom = module.padding
    x = exchange.pad_rows(x, top, bottom, issuer)
    return F.pad(x, (left, right, 0, 0))


def _attention_forward(module: nn.Module, exchange: RowExchange, issuer: str,
                       x: torch.Tensor) -> torch.Tensor:
    # AttentionBlock.forward of wan22 2.2.11 (one head over the h * W
    # positions of each frame), with the keys and values of every slab.
    # Slabs are whole rows, so this slab's positions are a contiguous run of
    # the frame's row-major positions, and gathering in slab order gives the
    # frame's order.
    identity = x
    b, c, t, h, w = x.size()
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # [B*T, C, h, W]
    x = module.norm(x)

    # [B*T, 3C, h, W] -> [B*T, 1, h*W, 3C] -> q, k, v: [B*T, 1, h*W, C]
    qkv = module.to_qkv(x).reshape(b * t, 1, c * 3, h * w)
    q, k, v = qkv.permute(0, 1, 3, 2).contiguous().chunk(3, dim=-1)

    # [B*T, 1, h*W, 2C] -> [B*T, 1, H*W, 2C]: every slab's keys and values.
    key_value = exchange.all_gather_slabs(torch.cat([k, v], dim=-1), dim=2,
                                          issuer=issuer)
    k, v = key_value.chunk(2, dim=-1)

    x = F.scaled_dot_product_attention(q, k, v)  # [B*T, 1, h*W, C]
    x = x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
    x = module.proj(x)
    x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # [B, C, T, h, W]
    return x + identity
