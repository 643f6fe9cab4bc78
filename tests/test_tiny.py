"""Tests for lite_boost.tiny: real Wan classes with tiny random weights on CPU."""

import functools
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

import lite_boost  # noqa: F401  (must come before wan: makes wan importable without CUDA)
from lite_boost.tiny import TinyTextEncoder, tiny_dit, tiny_pipeline, tiny_vae
from wan.image2video import WanI2V
from wan.modules import vae2_1, vae2_2
from wan.modules.model import WanModel
from wan.text2video import WanT2V
from wan.textimage2video import WanTI2V

from reference import wan_reference_attention

# Wan's generate() enters torch.amp.autocast("cuda"), which warns on a host
# without CUDA and then does nothing.
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")

FRAME_NUM = 9
STEPS = 3


def _random_image(width, height, seed=0):
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# name -> (pipeline kind, generate() arguments, expected video shape [C, F, H, W]).
# The image paths take no `size`. Wan chooses the output size from max_area
# and the image's aspect ratio, in multiples of vae_stride * patch_size (32 for
# TI2V, 16 for I2V). The images are larger than the output, and max_area is a bit
# above width * height so that float rounding cannot drop a step.
CASES = {
    "ti2v-text": ("ti2v", {"size": (96, 64)}, (3, FRAME_NUM, 64, 96)),
    "ti2v-image": (
        "ti2v",
        {"img": _random_image(120, 80), "max_area": 96 * 64 + 200},
        (3, FRAME_NUM, 64, 96),
    ),
    "t2v": ("t2v", {"size": (48, 32)}, (3, FRAME_NUM, 32, 48)),
    "i2v": (
        "i2v",
        {"img": _random_image(60, 40), "max_area": 48 * 32 + 100},
        (3, FRAME_NUM, 32, 48),
    ),
}


@functools.lru_cache(maxsize=None)
def _pipeline(kind):
    return tiny_pipeline(kind, seed=0)


def _generate(case, seed):
    kind, arguments, _ = CASES[case]
    with wan_reference_attention():
        return _pipeline(kind).generate(
            "a red fox in the snow", frame_num=FRAME_NUM, sampling_steps=STEPS,
            seed=seed, offload_model=False, **arguments)


@functools.lru_cache(maxsize=None)
def _video_seed0(case):
    return _generate(case, seed=0)


# ---- pipelines -------------------------------------------------------------

@pytest.mark.parametrize(
    "kind, pipeline_class",
    [("ti2v", WanTI2V), ("t2v", WanT2V), ("i2v", WanI2V)])
def test_pipeline_attributes(kind, pipeline_class):
    pipe = _pipeline(kind)

    assert type(pipe) is pipeline_class
    assert pipe.device == torch.device("cpu")
    assert pipe.rank == 0
    assert pipe.sp_size == 1
    assert pipe.config.dim == 64
    assert isinstance(pipe.text_encoder, TinyTextEncoder)
    if kind == "ti2v":
        assert isinstance(pipe.model, WanModel)
        assert pipe.vae_stride == (4, 16, 16)
        assert isinstance(pipe.vae, vae2_2.Wan2_2_VAE)
    else:
        assert pipe.lightning is False
        assert pipe.boundary == {"t2v": 0.875, "i2v": 0.900}[kind]
        assert pipe.vae_stride == (4, 8, 8)
        assert isinstance(pipe.vae, vae2_1.Wan2_1_VAE)
        assert pipe.low_noise_model.in_dim == (36 if kind == "i2v" else 16)


def test_pipeline_invalid_kind_raises():
    with pytest.raises(ValueError, match="kind must be one of"):
        tiny_pipeline("s2v")


@pytest.mark.parametrize("case", list(CASES))
def test_generate_video_shape(case):
    video = _video_seed0(case)

    assert tuple(video.shape) == CASES[case][2]
    assert video.dtype == torch.float32
    assert torch.isfinite(video).all()
    assert video.max() > video.min()


@pytest.mark.parametrize("case", list(CASES))
def test_generate_same_seed_same_video(case):
    assert torch.equal(_generate(case, seed=0), _video_seed0(case))


@pytest.mark.parametrize("case", list(CASES))
def test_generate_other_seed_other_video(case):
    assert not torch.equal(_generate(case, seed=1), _video_seed0(case))


@pytest.mark.parametrize("case", ["t2v", "i2v"])
def test_generate_runs_both_experts_with_guidance(case):
    pipe = _pipeline(CASES[case][0])
    calls = {"low": 0, "high": 0}

    def count(name):
        def hook(module, args, output):
            calls[name] += 1
        return hook

    handles = [
        pipe.low_noise_model.register_forward_hook(count("low")),
        pipe.high_noise_model.register_forward_hook(count("high")),
    ]
    try:
        _generate(case, seed=0)
    finally:
        for handle in handles:
            handle.remove()

    # With shift 5 the 3 timesteps are about 999, 909 and 714, which straddle
    # both boundaries (875 for T2V, 900 for I2V).
    assert calls["low"] > 0
    assert calls["high"] > 0
    # Classifier-free guidance runs two forwards per step (lightning=False).
    assert calls["low"] + calls["high"] == 2 * STEPS


def test_pipeline_same_seed_same_weights():
    first = tiny_pipeline("t2v", seed=3)
    second = tiny_pipeline("t2v", seed=3)

    for name in ("low_noise_model", "high_noise_model"):
        first_state = getattr(first, name).state_dict()
        second_state = getattr(second, name).state_dict()
        for key in first_state:
            assert torch.equal(first_state[key], second_state[key]), f"{name}.{key}"
    low = first.low_noise_model.head.head.weight
    high = first.high_noise_model.head.head.weight
    assert not torch.equal(low, high)


def test_pipeline_temporary_vae_directory_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    tiny_pipeline("ti2v")

    assert list(tmp_path.iterdir()) == []


def test_pipeline_keeps_vae_weights_in_directory(tmp_path):
    tiny_pipeline("ti2v", directory=tmp_path)

    assert [path.suffix for path in tmp_path.iterdir()] == [".pth"]


# ---- DiT -------------------------------------------------------------------

def _dit_output(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(48, 3, 4, 6, generator=generator)
    context = torch.randn(5, 32, generator=generator)
    seq_len = 3 * (4 // 2) * (6 // 2)
    with wan_reference_attention(), torch.no_grad():
        return model([latent], t=torch.tensor([500.0]), context=[context], seq_len=seq_len)[0]


def test_dit_output_nonzero():
    model = tiny_dit("ti2v", seed=0)

    output = _dit_output(model)

    assert output.shape == (48, 3, 4, 6)
    assert torch.isfinite(output).all()
    assert output.abs().max() > 0.1
    assert model.head.head.weight.abs().max() > 0


def test_dit_same_seed_same_output():
    torch.manual_seed(1)
    first = tiny_dit("ti2v", seed=7)
    torch.manual_seed(2)
    second = tiny_dit("ti2v", seed=7)

    assert torch.equal(_dit_output(first), _dit_output(second))


def test_dit_other_seed_other_output():
    assert not torch.equal(_dit_output(tiny_dit(seed=0)), _dit_output(tiny_dit(seed=1)))


def test_dit_leaves_global_rng_unchanged():
    before = torch.get_rng_state()

    tiny_dit("t2v", in_dim=16, out_dim=16, seed=0)

    assert torch.equal(torch.get_rng_state(), before)


def test_dit_eval_without_grad():
    model = tiny_dit("i2v", in_dim=36, out_dim=16)

    assert not model.training
    assert not any(param.requires_grad for param in model.parameters())
    assert model.model_type == "i2v"


def test_dit_invalid_model_type_raises():
    with pytest.raises(ValueError, match="model_type must be one of"):
        tiny_dit("s2v")


# ---- text encoder ----------------------------------------------------------

def test_text_encoder_token_counts():
    encoder = TinyTextEncoder(text_len=16, text_dim=32)

    outputs = encoder(["", "abc", "猫", "x" * 40], torch.device("cpu"))

    # Token counts are UTF-8 bytes, at least 1 and at most text_len ("猫" is 3 bytes).
    assert [tuple(output.shape) for output in outputs] == [(1, 32), (3, 32), (3, 32), (16, 32)]
    assert all(output.dtype == torch.float32 for output in outputs)


def test_text_encoder_deterministic_per_text():
    first = TinyTextEncoder(seed=0)(["a cat", "a dog"], torch.device("cpu"))
    second = TinyTextEncoder(seed=0)(["a cat", "a dog"], torch.device("cpu"))
    other_seed = TinyTextEncoder(seed=1)(["a cat"], torch.device("cpu"))

    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], other_seed[0])


def test_text_encoder_model_is_module():
    encoder = TinyTextEncoder()

    assert isinstance(encoder.model, torch.nn.Module)
    assert encoder.model.to(torch.device("cpu")) is encoder.model


# ---- VAE -------------------------------------------------------------------

@pytest.mark.parametrize(
    "version, stride, z_dim", [("2.1", 8, 16), ("2.2", 16, 48)])
@pytest.mark.parametrize("frames", [1, 6, 9])
def test_vae_frame_counts(tmp_path, version, stride, z_dim, frames):
    vae = tiny_vae(version, directory=tmp_path)
    video = torch.rand(3, frames, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    latent = vae.encode([video])[0]
    decoded = vae.decode([latent])[0]

    latent_frames = 1 + (frames - 1) // 4
    assert tuple(latent.shape) == (z_dim, latent_frames, 32 // stride, 32 // stride)
    assert tuple(decoded.shape) == (3, 1 + 4 * (latent_frames - 1), 32, 32)
    assert torch.isfinite(decoded).all()


@pytest.mark.parametrize(
    "version, module, vae_class",
    [("2.1", vae2_1, vae2_1.Wan2_1_VAE), ("2.2", vae2_2, vae2_2.Wan2_2_VAE)])
def test_vae_loads_saved_weights(tmp_path, version, module, vae_class):
    vae = tiny_vae(version, directory=tmp_path, dim=8, seed=0)

    (checkpoint,) = tmp_path.iterdir()
    saved = torch.load(checkpoint, weights_only=True)
    loaded = vae.model.state_dict()
    assert type(vae) is vae_class
    assert isinstance(vae.model, module.WanVAE_)
    assert sorted(loaded) == sorted(saved)
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key
    assert all(param.device.type == "cpu" for param in vae.model.parameters())


def test_vae_uses_tiny_widths(tmp_path):
    vae21 = tiny_vae("2.1", directory=tmp_path, dim=8)
    vae22 = tiny_vae("2.2", directory=tmp_path, dim=8, dec_dim=12)

    # Encoder3d's conv1 has `dim` outputs, Decoder3d's conv1 has 4 * width.
    assert vae21.model.encoder.conv1.out_channels == 8
    assert vae21.model.decoder.conv1.out_channels == 32
    assert vae22.model.encoder.conv1.out_channels == 8
    assert vae22.model.decoder.conv1.out_channels == 48
    assert vae21.model.z_dim == 16
    assert vae22.model.z_dim == 48


def test_vae_same_seed_same_weights(tmp_path):
    first = tiny_vae("2.2", directory=tmp_path, seed=5)
    torch.manual_seed(123)
    second = tiny_vae("2.2", directory=tmp_path, seed=5)
    other = tiny_vae("2.2", directory=tmp_path, seed=6)

    first_state = first.model.state_dict()
    second_state = second.model.state_dict()
    other_state = other.model.state_dict()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), key
    weight = "encoder.conv1.weight"
    assert not torch.equal(first_state[weight], other_state[weight])


@pytest.mark.parametrize("version, module", [("2.1", vae2_1), ("2.2", vae2_2)])
def test_vae_restores_video_vae(tmp_path, version, module):
    original = module._video_vae

    tiny_vae(version, directory=tmp_path)

    assert module._video_vae is original


@pytest.mark.parametrize("version, module", [("2.1", vae2_1), ("2.2", vae2_2)])
def test_vae_restores_video_vae_on_error(tmp_path, monkeypatch, version, module):
    original = module._video_vae

    def failing_load(*args, **kwargs):
        raise RuntimeError("load failed")

    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(RuntimeError, match="load failed"):
        tiny_vae(version, directory=tmp_path)

    assert module._video_vae is original


def test_vae_invalid_version_raises(tmp_path):
    with pytest.raises(ValueError, match="version must be one of"):
        tiny_vae("2.0", directory=tmp_path)


