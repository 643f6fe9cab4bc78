"""Build tiny Wan2.2 pipelines with random weights for the demo, tests and benchmarks.

Every piece except the text encoder is the real class from PyPI ``wan22==2.2.11``:
``WanModel``, ``Wan2_1_VAE`` / ``Wan2_2_VAE`` (built through their own
``__init__``) and the ``WanTI2V`` / ``WanT2V`` / ``WanI2V`` pipelines, whose
``generate()`` runs unchanged. Only the widths are small and the weights random, so
code that patches these classes meets the same code paths as with the released
checkpoints. One ``generate()`` with 9 frames and 3 steps at the sizes in
tests/test_tiny.py took 0.10 to 0.18 s on two CPU cores (best of 5 calls,
fp32). The first call in a process takes about 1 s longer.

The umt5-xxl text encoder (about 5.7B parameters, 23 GB in fp32) cannot be loaded
on a small machine, so ``TinyTextEncoder`` replaces it with a seeded byte
embedding that has the same call interface.

Weights come from a local ``torch.Generator`` per module, so a seed always gives
the same weights and the global RNG state is unchanged after each builder returns.

Wan's ``flash_attention`` asserts CUDA tensors, so on CPU bind a CPU attention
function as ``wan.modules.model.flash_attention`` before calling ``generate()``.
Pass ``offload_model=False`` there too, because offloading calls
``torch.cuda.synchronize()``.
"""

import copy
import os
import shutil
import tempfile

import torch
from torch import nn

from wan.configs import WAN_CONFIGS
from wan.image2video import WanI2V
from wan.modules import vae2_1, vae2_2
from wan.modules.model import WanModel
from wan.text2video import WanT2V
from wan.textimage2video import WanTI2V

__all__ = ["TinyTextEncoder", "tiny_dit", "tiny_pipeline", "tiny_vae"]

MODEL_TYPES = ("t2v", "i2v", "ti2v")
VAE_VERSIONS = ("2.1", "2.2")
PIPELINE_KINDS = ("ti2v", "t2v", "i2v")

# Latent channels, fixed by the per-channel mean/std that Wan2_1_VAE and
# Wan2_2_VAE hard-code.
VAE_Z_DIM = {"2.1": 16, "2.2": 48}

# WanVAE_ arguments that Wan passes through _video_vae in both versions (defaults
# of vae2_1._video_vae, vae2_2._video_vae and Wan2_2_VAE.__init__). Wan loads the
# state dict strictly, so a mismatch here raises when the VAE is built.
_VAE_DIM_MULT = [1, 2, 4, 4]
_VAE_NUM_RES_BLOCKS = 2
_VAE_TEMPORAL_DOWNSAMPLE = [False, True, True]

# kind -> (pipeline class, WAN_CONFIGS key, VAE version, DiT model_type)
_PIPELINES = {
    "ti2v": (WanTI2V, "ti2v-5B", "2.2", "ti2v"),
    "t2v": (WanT2V, "t2v-A14B", "2.1", "t2v"),
    "i2v": (WanI2V, "i2v-A14B", "2.1", "i2v"),
}

TEXT_DIM = 32
TEXT_LEN = 16
FREQ_DIM = 32


@torch.no_grad()
def _randomize_linear_and_conv(module, generator):
    """Redraw every Linear and Conv weight and bias from ``generator``.

    Uses PyTorch's default bound, uniform in +-1/sqrt(fan_in), for biases too, so
    biases that Wan initialises to zero are non-zero here.
    """
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        fan_in = layer.weight[0].numel()
        bound = fan_in ** -0.5
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)


def tiny_dit(model_type="ti2v", *, in_dim=48, out_dim=48, dim=64, num_heads=4,
             num_layers=2, ffn_dim=128, text_dim=TEXT_DIM, text_len=TEXT_LEN,
             freq_dim=FREQ_DIM, seed=0):
    """Build a small ``wan.modules.model.WanModel`` with random weights from ``seed``.

    The model is in eval mode with ``requires_grad`` off. Every Linear and Conv
    layer, including the output head that ``WanModel.init_weights`` zeroes, and
    every ``modulation`` parameter are redrawn from a generator seeded with
    ``seed``, so outputs are non-zero and the same seed gives the same weights.
    Norm weights keep Wan's constant initial values.

    ``in_dim`` must match the pipeline: the latent channels (48 for the Wan2.2
    VAE, 16 for Wan2.1) for ``"t2v"`` and ``"ti2v"``, and 16 + 4 mask + 16 image
    latent = 36 for ``"i2v"`` with the Wan2.1 VAE. ``dim // num_heads`` must be even.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")

    # WanModel.__init__ draws from the global RNG. fork_rng restores its state,
    # and every random value is redrawn below from the local generator.
    with torch.random.fork_rng(devices=[]):
        model = WanModel(
            model_type=model_type, in_dim=in_dim, out_dim=out_dim, dim=dim,
            num_heads=num_heads, num_layers=num_layers, ffn_dim=ffn_dim,
            text_dim=text_dim, text_len=text_len, freq_dim=freq_dim)

    generator = torch.Generator().manual_seed(seed)
    _randomize_linear_and_conv(model, generator)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("modulation"):
                # Same scale as Wan's own initialisation of modulation.
                param.copy_(torch.randn(param.shape, generator=generator) / dim ** 0.5)

    return model.eval().requires_grad_(False)


class _ByteEmbedder(nn.Module):
    """Byte and position embeddings followed by a fixed projection."""

    def __init__(self, text_len, text_dim):
        super().__init__()
        self.byte_embedding = nn.Embedding(256, text_dim)
        self.position_embedding = nn.Embedding(text_len, text_dim)
        self.projection = nn.Linear(text_dim, text_dim)

    def forward(self, byte_ids):
        positions = torch.arange(byte_ids.numel(), device=byte_ids.device)
        hidden = self.byte_embedding(byte_ids) + self.position_embedding(positions)
        return self.projection(torch.tanh(hidden))


class TinyTextEncoder:
    """Stand-in for Wan's ``T5EncoderModel`` that encodes UTF-8 bytes.

    Calling it with ``(texts, device)`` returns one float32 tensor of shape
    ``[num_tokens, text_dim]`` per text on ``device``, where num_tokens is the
    UTF-8 byte count capped at ``text_len``. An empty text encodes as one NUL
    byte, as Wan's T5 tokenizer always adds an end-of-sequence token. As with
    T5, the output depends only on the text and the weights. ``model`` is the
    ``nn.Module`` that the pipelines move between devices.
    """

    def __init__(self, text_len=TEXT_LEN, text_dim=TEXT_DIM, *, seed=0):
        self.text_len = text_len
        self.text_dim = text_dim

        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            self.model = _ByteEmbedder(text_len, text_dim)
        with torch.no_grad():
            for embedding in (self.model.byte_embedding, self.model.position_embedding):
                embedding.weight.normal_(generator=generator)
        _randomize_linear_and_conv(self.model, generator)
        self.model.eval().requires_grad_(False)

    def __call__(self, texts, device):
        model_device = self.model.projection.weight.device
        outputs = []
        for text in texts:
            data = text.encode("utf-8")[:self.text_len] or b"\x00"
            byte_ids = torch.tensor(list(data), dtype=torch.long, device=model_device)
            with torch.no_grad():
                outputs.append(self.model(byte_ids).to(device))
        return outputs


def _build_vae_weights(version, dim, dec_dim, seed):
    """Return a random state dict for the tiny WanVAE_ that Wan will build."""
    z_dim = VAE_Z_DIM[version]
    architecture = dict(
        dim=dim, z_dim=z_dim, dim_mult=_VAE_DIM_MULT,
        num_res_blocks=_VAE_NUM_RES_BLOCKS, attn_scales=[],
        temperal_downsample=_VAE_TEMPORAL_DOWNSAMPLE, dropout=0.0)
    if version == "2.2":
        architecture["dec_dim"] = dec_dim
        vae_class = vae2_2.WanVAE_
    else:
        vae_class = vae2_1.WanVAE_

    with torch.random.fork_rng(devices=[]):
        model = vae_class(**architecture)
    # The only random parameters in WanVAE_ are Conv weights and biases. The
    # RMS_norm gammas and biases start as ones and zeros, and stay so.
    _randomize_linear_and_conv(model, torch.Generator().manual_seed(seed))
    return model.state_dict()


def tiny_vae(version="2.2", *, directory, dim=8, dec_dim=None, seed=0):
    """Build the real ``Wan2_2_VAE`` or ``Wan2_1_VAE`` on CPU with tiny widths.

    Saves a random state dict for the tiny architecture under ``directory``, then
    runs the real constructor while the module-level ``_video_vae`` is wrapped to
    pass the tiny widths. The wrapper is removed again afterwards, also when the
    constructor raises. ``dim`` is the encoder width (the decoder width as well
    for 2.1). ``dec_dim`` is the Wan2.2 decoder width and defaults to ``2 * dim``,
    because Wan2.2 uses different encoder and decoder widths (160 and 256).
    The latent channels stay at Wan's values (48 for 2.2, 16 for 2.1).
    """
    if version not in VAE_VERSIONS:
        raise ValueError(f"version must be one of {VAE_VERSIONS}, got {version!r}")
    if dec_dim is None:
        dec_dim = 2 * dim

    path = os.path.join(directory, f"tiny_wan{version}_vae_dim{dim}_seed{seed}.pth")
    torch.save(_build_vae_weights(version, dim, dec_dim, seed), path)

    if version == "2.2":
        module = vae2_2
        # Wan2_2_VAE passes its c_dim as dim, but WanVAE_'s dec_dim is not exposed.
        overrides = {"dec_dim": dec_dim}
        constructor_kwargs = {"c_dim": dim}
        vae_class = vae2_2.Wan2_2_VAE
    else:
        module = vae2_1
        # Wan2_1_VAE hard-codes dim=96 in _video_vae.
        overrides = {"dim": dim}
        constructor_kwargs = {}
        vae_class = vae2_1.Wan2_1_VAE

    original_video_vae = module._video_vae

    def tiny_video_vae(*args, **kwargs):
        kwargs.update(overrides)
        return original_video_vae(*args, **kwargs)

    module._video_vae = tiny_video_vae
    try:
        return vae_class(
            z_dim=VAE_Z_DIM[version], vae_pth=path, device="cpu", **constructor_kwargs)
    finally:
        module._video_vae = original_video_vae


def _tiny_config(config_name, *, dim, num_heads, num_layers, dtype):
    """Copy Wan's config for ``config_name`` with the tiny model's sizes.

    The checkpoint file names stay those of the released model, which the tiny
    pipelines never read.
    """
    config = copy.deepcopy(WAN_CONFIGS[config_name])
    config.update(
        __name__=f"Config: tiny {config_name} (random weights)",
        dim=dim, ffn_dim=2 * dim, freq_dim=FREQ_DIM, num_heads=num_heads,
        num_layers=num_layers, text_len=TEXT_LEN, text_dim=TEXT_DIM,
        param_dtype=dtype, t5_dtype=torch.float32)
    return config


def tiny_pipeline(kind="ti2v", *, directory=None, seed=0, num_heads=4,
                  num_layers=2, dim=64, dtype=torch.float32, vae_dim=8):
    """Build a real Wan pipeline object with tiny random models on CPU.

    ``kind`` is ``"ti2v"`` (``WanTI2V``, one ``model``, Wan2.2 VAE), ``"t2v"``
    (``WanT2V``) or ``"i2v"`` (``WanI2V``). The last two have a
    ``low_noise_model`` built from ``seed`` and a ``high_noise_model`` from
    ``seed + 1``, the Wan2.1 VAE and ``lightning=False``, so classifier-free
    guidance runs. The pipeline's ``__init__`` is skipped, because it loads
    umt5-xxl. Instead, every attribute that ``generate()`` reads is set here.
    ``dtype`` becomes ``param_dtype``, the autocast dtype of ``generate()``
    (bfloat16 in Wan's configs), and the weights stay float32, as in Wan without
    ``convert_model_dtype``.

    Each side of ``generate(size=...)`` must be a multiple of vae_stride *
    patch_size, which is 32 for ``"ti2v"`` and 16 for ``"t2v"``. Other sizes
    fail inside Wan with a shape error.

    The VAE weights are written under ``directory``. With ``directory=None``
    they go to a fresh temporary directory, which is deleted once they are loaded.
    """
    if kind not in PIPELINE_KINDS:
        raise ValueError(f"kind must be one of {PIPELINE_KINDS}, got {kind!r}")
    pipeline_class, config_name, vae_version, model_type = _PIPELINES[kind]
    config = _tiny_config(
        config_name, dim=dim, num_heads=num_heads, num_layers=num_layers, dtype=dtype)

    pipe = object.__new__(pipeline_class)
    pipe.device = torch.device("cpu")
    pipe.config = config
    pipe.rank = 0
    pipe.t5_cpu = True
    pipe.init_on_cpu = True
    pipe.num_train_timesteps = config.num_train_timesteps
    pipe.param_dtype = config.param_dtype
    pipe.vae_stride = config.vae_stride
    pipe.patch_size = config.patch_size
    pipe.sp_size = 1
    pipe.sample_neg_prompt = config.sample_neg_prompt
    pipe.text_encoder = TinyTextEncoder(TEXT_LEN, TEXT_DIM, seed=seed)
    pipe.vae = _tiny_vae_in_directory(directory, vae_version, dim=vae_dim, seed=seed)

    z_dim = VAE_Z_DIM[vae_version]
    # WanI2V feeds the DiT the noise concatenated with y, which is 4 mask
    # channels and the latent of the conditioning video.
    in_dim = 2 * z_dim + 4 if model_type == "i2v" else z_dim
    dit_options = dict(
        in_dim=in_dim, out_dim=z_dim, dim=dim, num_heads=num_heads,
        num_layers=num_layers, ffn_dim=2 * dim, text_dim=TEXT_DIM,
        text_len=TEXT_LEN, freq_dim=FREQ_DIM)
    if kind == "ti2v":
        pipe.model = tiny_dit(model_type, seed=seed, **dit_options)
    else:
        pipe.lightning = False
        pipe.boundary = config.boundary
        pipe.low_noise_model = tiny_dit(model_type, seed=seed, **dit_options)
        pipe.high_noise_model = tiny_dit(model_type, seed=seed + 1, **dit_options)
    return pipe


def _tiny_vae_in_directory(directory, version, *, dim, seed):
    if directory is not None:
        return tiny_vae(version, directory=directory, dim=dim, seed=seed)
    temporary_directory = tempfile.mkdtemp(prefix="lite_boost_tiny_vae_")
    try:
        return tiny_vae(version, directory=temporary_directory, dim=dim, seed=seed)
    finally:
        shutil.rmtree(temporary_directory, ignore_errors=True)
