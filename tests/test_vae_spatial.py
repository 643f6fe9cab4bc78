"""Spatial VAE mode: the row split, the halo-exchanging layers, patching, and gloo runs.

The spatial mode must reproduce Wan's untiled encode and decode, so every
multi-rank result is compared with ``vae.model.encode`` / ``decode`` of the
unpatched VAE in this process: max |difference| <= 1e-5 * max |reference| in
float32.
"""

import dataclasses
import functools
import tempfile

import pytest
import torch
from torch import nn

import lite_boost  # noqa: F401  (must come before wan: makes wan importable without CUDA)
from lite_boost.launch import run_on_ranks
from lite_boost.tiny import tiny_vae
from lite_boost.vae import (DEFAULT_VAE_MODE, Slab, is_patched,
                            num_decoded_frames, num_encoded_latents, patch_vae,
                            resolve_mode, restore_vae, spatial_decode,
                            spatial_encode, split_rows, tiling_options)
from lite_boost.vae.halo import RowExchange
from lite_boost.vae.spatial import encoder_downsampling
from lite_boost.vae.spatial_layers import check_spatial_support, halo_forwards
from wan.modules import vae2_1

LATENT_CHANNELS = {"2.1": 16, "2.2": 48}
SPATIAL_STRIDE = {"2.1": 8, "2.2": 16}
RELATIVE_TOLERANCE = 1e-5  # of max |reference|, CPU float32
RANK_TIMEOUT_S = 60  # collective timeout on the ranks, so a hang fails fast


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The ranks run one thread each. The references use one thread too, so
    # that ranks and references pick the same convolution kernels.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _vae(version):
    # Every process builds the same weights from seed 0, each in its own
    # directory because tiny_vae writes the weights file before loading it.
    return tiny_vae(version, directory=tempfile.mkdtemp(prefix="vae_spatial_"),
                    dim=8, seed=0)


def _relative_difference(output, reference):
    return ((output - reference).abs().max() / reference.abs().max()).item()


def _instance_forwards(model):
    return [name for name, module in model.named_modules()
            if "forward" in vars(module)]


@dataclasses.dataclass(frozen=True)
class Case:
    """One spatial call: latents ``[C, T, H, W]`` to decode or a video to encode."""

    version: str
    direction: str  # "decode" or "encode"
    frames: int  # latent frames for decode, video frames for encode
    height: int  # latent rows for decode, pixel rows for encode
    width: int
    through_patch: bool = False  # call vae.decode/encode after patch_vae
    seed: int = 0

    def input(self):
        generator = torch.Generator().manual_seed(self.seed)
        if self.direction == "decode":
            return torch.randn(LATENT_CHANNELS[self.version], self.frames,
                               self.height, self.width, generator=generator)
        return torch.rand(3, self.frames, self.height, self.width,
                          generator=generator) * 2 - 1

    def output_frames(self):
        if self.direction == "decode":
            return num_decoded_frames(self.frames)
        return num_encoded_latents(self.frames)

    def run(self):
        vae = _vae(self.version)
        x = self.input()
        if self.through_patch:
            patch_vae(vae, mode="spatial")
            try:
                method = vae.decode if self.direction == "decode" else vae.encode
                return method([x])[0]
            finally:
                restore_vae(vae)
        run = spatial_decode if self.direction == "decode" else spatial_encode
        return run(vae, x)

    def reference(self):
        # The unpatched Wan model on the whole frame.
        vae = _vae(self.version)
        x = self.input().unsqueeze(0)
        if self.direction == "decode":
            output = vae.model.decode(x, vae.scale).squeeze(0).float()
            return output.clamp(-1, 1) if self.through_patch else output
        return vae.model.encode(x, vae.scale).squeeze(0).float()


def _cases(world_size):
    p = world_size
    return [
        # Decode: even, uneven, one latent row per rank, fewer rows than ranks.
        Case("2.2", "decode", 3, 2 * p, 3),
        Case("2.2", "decode", 3, 2 * p + 1, 3, seed=1),
        Case("2.2", "decode", 2, p, 2, seed=2),
        Case("2.2", "decode", 1, max(1, p - 1), 3, seed=3),
        Case("2.1", "decode", 3, 2 * p + 1, 3, seed=4),
        Case("2.1", "decode", 2, p, 3, seed=5),
        Case("2.1", "decode", 2, 1, 2, seed=6),
        # Encode: one unit (16 or 8 pixel rows) more than ranks, 2.1 rows past
        # the last whole unit, one frame (image-to-video), fewer units than
        # ranks.
        Case("2.2", "encode", 5, 16 * (p + 1), 32),
        Case("2.2", "encode", 1, 16 * p, 32, seed=1),
        Case("2.2", "encode", 5, 16, 32, seed=2),
        Case("2.1", "encode", 5, 8 * (p + 1) + 4, 24, seed=3),
        Case("2.1", "encode", 1, 8 * p, 24, seed=4),
        Case("2.1", "encode", 5, 8, 16, seed=5),
        # Through patch_vae, as ParallelManager calls it.
        Case("2.2", "decode", 2, p + 1, 2, through_patch=True, seed=7),
        Case("2.1", "encode", 5, 8 * p, 16, through_patch=True, seed=8),
    ]


def _cases_on_rank(cases):
    """Rank entry point: outputs of ``cases``, the model afterwards, a mismatched call."""
    from lite_boost.parallel import get_state

    outputs = [case.run() for case in cases]

    leftover_forwards = []
    for version in LATENT_CHANNELS:
        leftover_forwards += _instance_forwards(_vae(version).model)

    # Rank r passes 2 + r latent rows: every rank must raise, not hang.
    mismatched = torch.zeros(48, 1, 2 + get_state().rank, 2)
    try:
        spatial_decode(_vae("2.2"), mismatched)
        mismatch_error = None
    except RuntimeError as error:
        mismatch_error = str(error)
    return outputs, leftover_forwards, mismatch_error


# --- split_rows -------------------------------------------------------------

def test_split_rows_documented_examples():
    assert split_rows(5, 1, 2) == [Slab(0, 3), Slab(3, 5)]
    assert split_rows(44, 8, 4) == [Slab(0, 16), Slab(16, 24), Slab(24, 32),
                                    Slab(32, 44)]


@pytest.mark.parametrize("num_rows,unit", [
    (1, 1), (2, 1), (5, 1), (7, 1), (90, 1),
    (8, 8), (44, 8), (100, 8), (3, 8), (16, 16), (80, 16), (704, 16)])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_split_rows_partition(num_rows, unit, world_size):
    slabs = split_rows(num_rows, unit, world_size)

    num_units = max(1, num_rows // unit)
    assert len(slabs) == min(world_size, num_units)
    assert slabs[0].start == 0
    assert slabs[-1].stop == num_rows
    for above, below in zip(slabs, slabs[1:]):
        assert below.start == above.stop
        assert below.start % unit == 0
    units_per_slab = [(s.stop - s.start) // unit for s in slabs[:-1]]
    units_per_slab.append(num_units - sum(units_per_slab))
    assert min(units_per_slab) >= 1
    assert max(units_per_slab) - min(units_per_slab) <= 1


@pytest.mark.parametrize("arguments,message", [
    ((0, 1, 2), "num_rows=0"),
    ((4, 0, 2), "unit=0"),
    ((4, 1, 0), "world_size=0"),
])
def test_split_rows_rejects_invalid_values(arguments, message):
    with pytest.raises(ValueError, match=message):
        split_rows(*arguments)


def test_encoder_downsampling():
    assert encoder_downsampling(_vae("2.1")) == SPATIAL_STRIDE["2.1"]
    assert encoder_downsampling(_vae("2.2")) == SPATIAL_STRIDE["2.2"]


# --- halo-exchanging layers in one process ----------------------------------

@pytest.mark.parametrize("version", ["2.2", "2.1"])
def test_single_slab_layers_equal_wan(version):
    # With one slab every halo is the frame's zero padding, so the replaced
    # forwards must compute what Wan's own layers compute.
    vae = _vae(version)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(LATENT_CHANNELS[version], 3, 3, 2, generator=generator)
    video = torch.rand(3, 5, 32, 48, generator=generator) * 2 - 1
    expected_video = vae.model.decode(z.unsqueeze(0), vae.scale)
    expected_latents = vae.model.encode(video.unsqueeze(0), vae.scale)

    with halo_forwards(vae.model, RowExchange(None, 0, 1), "test"):
        replaced = _instance_forwards(vae.model)
        decoded = vae.model.decode(z.unsqueeze(0), vae.scale)
        encoded = vae.model.encode(video.unsqueeze(0), vae.scale)

    assert any(name.endswith("middle.1") for name in replaced)  # attention
    assert any(name.endswith("resample.0") for name in replaced)  # ZeroPad2d
    assert any(".residual.2" in name for name in replaced)  # CausalConv3d 3x3x3
    assert not any(name.endswith("shortcut") for name in replaced)  # 1x1x1
    assert _instance_forwards(vae.model) == []
    assert _relative_difference(decoded, expected_video) <= RELATIVE_TOLERANCE
    assert _relative_difference(encoded, expected_latents) <= RELATIVE_TOLERANCE


def test_halo_forwards_removed_after_error():
    model = _vae("2.2").model
    with pytest.raises(ValueError, match="inside the call"):
        with halo_forwards(model, RowExchange(None, 0, 1), "test"):
            assert _instance_forwards(model) != []
            raise ValueError("inside the call")
    assert _instance_forwards(model) == []


def test_halo_forwards_rejects_replaced_forward():
    model = _vae("2.2").model
    layer = model.decoder.conv1
    layer.forward = lambda x, cache_x=None: x
    try:
        with pytest.raises(RuntimeError, match="decoder.conv1.*already has"):
            with halo_forwards(model, RowExchange(None, 0, 1), "test"):
                pass
        assert _instance_forwards(model) == ["decoder.conv1"]
    finally:
        del layer.forward


class _WithLayer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer


@pytest.mark.parametrize("layer,message", [
    (nn.GroupNorm(2, 4), "normalizes over spatial positions"),
    (nn.Conv2d(4, 4, 3, stride=2, padding=1), "stride 2"),
    (nn.Conv2d(4, 4, 3, padding=0), "padding \\(0, 0\\)"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "reflect"),
    (nn.Conv3d(4, 4, 3, padding=1), "only Wan's CausalConv3d"),
    (vae2_1.CausalConv3d(4, 4, 3, padding=(1, 0, 1)), "padding \\(0, 0\\)"),
    (vae2_1.RMS_norm(4, channel_first=False), "channel_first=False"),
    (nn.Upsample(scale_factor=2.0, mode="bilinear"), "bilinear"),
])
def test_support_check_rejects_layers(layer, message):
    with pytest.raises(NotImplementedError, match=f"'layer'.*{message}"):
        check_spatial_support(_WithLayer(layer))


@pytest.mark.parametrize("version", ["2.2", "2.1"])
def test_support_check_accepts_wan(version):
    check_spatial_support(_vae(version).model)


# --- patching in one process ------------------------------------------------

@pytest.fixture
def fresh_vae(tmp_path, request):
    return tiny_vae(request.param, directory=str(tmp_path), dim=8, seed=0)


@pytest.mark.parametrize("fresh_vae", ["2.2", "2.1"], indirect=True)
def test_spatial_patch_one_process_equals_wan(fresh_vae):
    vae = fresh_vae
    version = "2.1" if isinstance(vae, vae2_1.Wan2_1_VAE) else "2.2"
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(vae.model.z_dim, 2, 3, 2, generator=generator)
    video = torch.rand(3, 5, 2 * SPATIAL_STRIDE[version], 32,
                       generator=generator) * 2 - 1
    untiled_video = vae.decode([z])[0]
    untiled_latents = vae.encode([video])[0]
    state_before = vae.model.state_dict(keep_vars=True)

    assert patch_vae(vae, mode="spatial") is vae
    assert tiling_options(vae).mode == "spatial"
    assert torch.equal(vae.decode([z])[0], untiled_video)
    assert torch.equal(vae.encode([video])[0], untiled_latents)

    state_after = vae.model.state_dict(keep_vars=True)
    assert list(state_after) == list(state_before)
    for name, tensor in state_before.items():
        assert state_after[name] is tensor, name
    assert _instance_forwards(vae.model) == []

    restore_vae(vae)
    assert not is_patched(vae)
    assert "decode" not in vars(vae)


def test_patch_switches_mode():
    vae = _vae("2.2")
    patch_vae(vae, mode="spatial")
    try:
        assert tiling_options(vae).mode == "spatial"
        patch_vae(vae, chunk_size=1)
        assert tiling_options(vae).mode == "temporal"
        assert tiling_options(vae).chunk_size == 1
    finally:
        restore_vae(vae)


def test_patch_rejects_invalid_mode():
    vae = _vae("2.2")
    with pytest.raises(ValueError, match="mode='tiles' is invalid"):
        patch_vae(vae, mode="tiles")
    assert not is_patched(vae)


def test_spatial_encode_rejects_wan2_2_height():
    # Wan2.2's own encoder needs heights divisible by 16 as well.
    with pytest.raises(ValueError, match="height 40 .* multiple of 16"):
        spatial_encode(_vae("2.2"), torch.zeros(3, 1, 40, 32))


@pytest.mark.parametrize("run", [spatial_decode, spatial_encode])
def test_spatial_rejects_shape(run):
    with pytest.raises(ValueError, match=r"4-D tensor \[C, T, H, W\]"):
        run(_vae("2.2"), torch.zeros(1, 48, 2, 4, 4))


@pytest.mark.parametrize("mode,chunk_size,expected", [
    (None, None, DEFAULT_VAE_MODE),
    (None, 2, "temporal"),
    ("temporal", None, "temporal"),
    ("temporal", 2, "temporal"),
    ("spatial", None, "spatial"),
])
def test_resolve_mode(mode, chunk_size, expected):
    assert resolve_mode(mode, chunk_size) == expected


@pytest.mark.parametrize("mode,chunk_size,message", [
    ("spatial", 2, "vae_chunk_size=2 is invalid with vae_parallel='spatial'"),
    ("rows", None, "vae_parallel='rows' is invalid"),
])
def test_resolve_mode_rejects(mode, chunk_size, message):
    with pytest.raises(ValueError, match=message):
        resolve_mode(mode, chunk_size)


def test_parallel_manager_vae_option(single_process):
    from lite_boost.parallel import ParallelManager
    from lite_boost.tiny import tiny_pipeline

    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3))
    assert tiling_options(pipe.vae).mode == DEFAULT_VAE_MODE

    pipe = ParallelManager(tiny_pipeline("ti2v", seed=3), vae_chunk_size=2)
    assert tiling_options(pipe.vae).mode == "temporal"

    pipe = tiny_pipeline("ti2v", seed=3)
    with pytest.raises(ValueError, match="vae_parallel='spatial'"):
        ParallelManager(pipe, vae_parallel="spatial", vae_chunk_size=2)
    assert not is_patched(pipe.vae)
    assert "_lite_boost_pipeline_patch" not in vars(pipe)


# --- spatial runs on gloo ranks ---------------------------------------------

def _check_ranks_equal_untiled(world_size):
    cases = _cases(world_size)
    references = [case.reference() for case in cases]
    per_rank = run_on_ranks(_cases_on_rank, world_size, cases,
                            init_kwargs={"timeout": RANK_TIMEOUT_S})

    assert len(per_rank) == world_size
    for rank, (outputs, leftover_forwards, mismatch_error) in enumerate(per_rank):
        assert len(outputs) == len(cases), rank
        for case, output, reference in zip(cases, outputs, references):
            assert output.shape == reference.shape, (rank, case)
            assert output.shape[1] == case.output_frames(), (rank, case)
            difference = _relative_difference(output, reference)
            assert difference <= RELATIVE_TOLERANCE, (rank, case, difference)
        assert leftover_forwards == [], rank
        assert mismatch_error is not None, rank
        assert "different inputs on different ranks" in mismatch_error, rank


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_equal_untiled(world_size):
    _check_ranks_equal_untiled(world_size)


def _generate_i2v_on_rank(case):
    from generate_cases import generate

    return generate(case)


@pytest.mark.timeout(300)
def test_generate_i2v_two_ranks_spatial(single_process):
    # ParallelManager's default VAE mode on the image-to-video path of
    # WanTI2V: one-frame encode of the image, then the decode.
    from generate_cases import GenerateCase, generate

    case = GenerateCase("ti2v i2v path", "ti2v", (96, 64), 9,
                        image_size=(120, 80), vae_chunk_size=None)
    reference = generate(case)
    per_rank = run_on_ranks(_generate_i2v_on_rank, 2, case,
                            init_kwargs={"timeout": RANK_TIMEOUT_S})

    assert reference.shape[1] == case.frame_num
    for rank, video in enumerate(per_rank):
        assert video.shape == reference.shape, rank
        difference = (video - reference).abs().max().item()
        assert difference <= 1e-4, (rank, difference)

