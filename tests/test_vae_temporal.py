"""Temporal tiling of the Wan VAEs: the plan, frame counts, data-parallel runs, patching.

A chunked result differs from Wan's untiled one, because the VAE is causal
with caches. The data-parallel output is therefore compared with a sequential
run of the same chunks in this process. Wan's own encode/decode is the
reference only where the plan has a single chunk.
"""

import dataclasses
import functools
import tempfile
from typing import Optional

import pytest
import torch

import lite_boost  # noqa: F401  (must come before wan: makes wan importable without CUDA)
from lite_boost.launch import run_on_ranks
from lite_boost.tiny import tiny_vae
from lite_boost.vae import (Chunk, default_chunk_size, is_patched,
                            num_decoded_frames, num_encoded_latents, patch_vae,
                            plan_chunks, restore_vae, tiled_decode,
                            tiled_encode, tiling_options)
from lite_boost.vae.plan import chunks_of_rank
from wan.modules import vae2_1, vae2_2

LATENT_CHANNELS = {"2.1": 16, "2.2": 48}
SPATIAL_STRIDE = {"2.1": 8, "2.2": 16}
LATENT_SIZE = 4  # latent height and width: 64x64 frames for 2.2, 32x32 for 2.1
TOLERANCE = 1e-6  # CPU float32, data-parallel against sequential
RANK_TIMEOUT_S = 60  # collective timeout on the ranks, so a hang fails fast


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The ranks run one thread each, and so does the reference here. With
    # two threads per process, ranks and other processes sharing the cores
    # slowed some decodes down tenfold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _vae(version):
    # Every process builds the same weights from seed 0. Each uses its own
    # directory because tiny_vae writes the weights file before loading it.
    return tiny_vae(version, directory=tempfile.mkdtemp(prefix="vae_temporal_"),
                    dim=8, seed=0)


def _latents(version, num_latents, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(LATENT_CHANNELS[version], num_latents, LATENT_SIZE,
                       LATENT_SIZE, generator=generator)


def _video(version, num_frames, seed):
    size = LATENT_SIZE * SPATIAL_STRIDE[version]
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, num_frames, size, size, generator=generator) * 2 - 1


@dataclasses.dataclass(frozen=True)
class Case:
    """One tiled call: ``steps`` latents for decode, frames for encode."""

    version: str
    direction: str  # "decode" or "encode"
    steps: int
    chunk_size: Optional[int] = None
    overlap: int = 2
    blend: int = 1
    through_patch: bool = False  # call vae.decode/encode after patch_vae
    seed: int = 0

    def input(self):
        if self.direction == "decode":
            return _latents(self.version, self.steps, self.seed)
        return _video(self.version, self.steps, self.seed)

    @property
    def num_latents(self):
        if self.direction == "decode":
            return self.steps
        return num_encoded_latents(self.steps)

    @property
    def output_length(self):
        if self.direction == "decode":
            return num_decoded_frames(self.steps)
        return num_encoded_latents(self.steps)

    def options(self, world_size):
        chunk_size = self.chunk_size
        if chunk_size is None:
            chunk_size = default_chunk_size(self.num_latents, world_size)
        return dict(chunk_size=chunk_size, overlap=self.overlap,
                    blend=self.blend)


def _run_case(case, sequential):
    vae = _vae(case.version)
    x = case.input()
    options = dict(chunk_size=case.chunk_size, overlap=case.overlap,
                   blend=case.blend)
    if case.through_patch:
        patch_vae(vae, **options)
        try:
            method = vae.decode if case.direction == "decode" else vae.encode
            return method([x])[0]
        finally:
            restore_vae(vae)
    tiled = tiled_decode if case.direction == "decode" else tiled_encode
    return tiled(vae, x, sequential=sequential, **options)


def _sequential_reference(case, world_size):
    # The chunking that world_size ranks would use, run in this process.
    vae = _vae(case.version)
    tiled = tiled_decode if case.direction == "decode" else tiled_encode
    output = tiled(vae, case.input(), sequential=True,
                   **case.options(world_size))
    if case.through_patch and case.direction == "decode":
        output = output.clamp(-1, 1)
    return output


def _cases_on_rank(cases):
    """Rank entry point: tiled outputs of ``cases``, then a mismatched call."""
    from lite_boost.parallel import get_state

    outputs = [_run_case(case, sequential=False) for case in cases]

    # Rank r passes 3 + r latents with chunk_size=2, so every rank has at
    # least 2 chunks and enters the shape check. Each must raise, not hang.
    state = get_state()
    mismatched = _latents("2.2", 3 + state.rank, seed=9)
    try:
        tiled_decode(_vae("2.2"), mismatched, chunk_size=2)
        mismatch_error = None
    except RuntimeError as error:
        mismatch_error = str(error)
    return outputs, mismatch_error


def _check_ranks_match_sequential(cases, world_size):
    references = [_sequential_reference(case, world_size) for case in cases]
    per_rank = run_on_ranks(_cases_on_rank, world_size, cases,
                            init_kwargs={"timeout": RANK_TIMEOUT_S})

    assert len(per_rank) == world_size
    for rank, (outputs, mismatch_error) in enumerate(per_rank):
        assert len(outputs) == len(cases), rank
        for case, output, reference in zip(cases, outputs, references):
            assert output.shape[1] == case.output_length, (rank, case)
            assert output.shape == reference.shape, (rank, case)
            torch.testing.assert_close(
                output, reference, rtol=0, atol=TOLERANCE,
                msg=lambda message: f"rank {rank}, {case}: {message}")
        assert mismatch_error is not None, rank
        assert "different inputs on different ranks" in mismatch_error, rank


# --- plan_chunks ------------------------------------------------------------

def test_plan_documented_example():
    plan = plan_chunks(5, 2, overlap=2, blend=1)
    assert [(c.start, c.stop, c.warmup, c.blend) for c in plan] == [
        (0, 2, 0, 0), (2, 4, 2, 1), (4, 5, 2, 1)]
    assert [c.first for c in plan] == [0, 0, 2]
    assert [c.keep_from for c in plan] == [0, 1, 3]


@pytest.mark.parametrize("num_latents", [1, 2, 3, 5, 21])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 30])
@pytest.mark.parametrize("overlap,blend", [(1, 0), (2, 0), (2, 1), (3, 2)])
def test_plan_partition_and_warmup(num_latents, chunk_size, overlap, blend):
    plan = plan_chunks(num_latents, chunk_size, overlap, blend)

    assert [c.index for c in plan] == list(range(len(plan)))
    assert plan[0].start == 0
    assert plan[-1].stop == num_latents
    for previous, chunk in zip(plan, plan[1:]):
        assert chunk.start == previous.stop
    for chunk in plan:
        assert 1 <= chunk.stop - chunk.start <= chunk_size
        assert chunk.warmup == min(overlap, chunk.start)
        assert chunk.blend == min(blend, chunk.warmup)
        # A warm-up that does not reach latent 0 starts with a one-frame
        # latent, which must never be kept.
        if chunk.first > 0:
            assert chunk.keep_from > chunk.first
    assert all(c.stop - c.start == chunk_size for c in plan[:-1])


def test_plan_single_chunk_allows_zero_overlap():
    assert plan_chunks(4, 4, overlap=0, blend=0) == [
        Chunk(index=0, start=0, stop=4, warmup=0, blend=0)]


@pytest.mark.parametrize("arguments,message", [
    ((0, 1, 2, 1), "num_latents=0"),
    ((5, 0, 2, 1), "chunk_size=0"),
    ((5, 2, -1, 0), "overlap=-1"),
    ((5, 2, 2, -1), "blend=-1"),
    ((5, 2, 2, 2), "blend=2 is invalid for overlap=2"),
    ((5, 2, 1, 1), "blend=1 is invalid for overlap=1"),
    ((5, 2, 0, 0), "overlap=0 is invalid with 3 chunks"),
])
def test_plan_rejects_invalid_values(arguments, message):
    with pytest.raises(ValueError, match=message):
        plan_chunks(*arguments)


def test_plan_rejects_non_integers():
    with pytest.raises(TypeError, match="chunk_size=2.0"):
        plan_chunks(5, 2.0)
    with pytest.raises(TypeError, match="overlap=True"):
        plan_chunks(5, 2, True, 0)


def test_chunks_of_rank_round_robin():
    plan = plan_chunks(5, 1)
    assert [c.index for c in chunks_of_rank(plan, 0, 2)] == [0, 2, 4]
    assert [c.index for c in chunks_of_rank(plan, 1, 2)] == [1, 3]
    assert chunks_of_rank(plan_chunks(2, 1), 3, 4) == []


def test_frame_arithmetic():
    assert [num_decoded_frames(n) for n in (1, 2, 5, 21)] == [1, 5, 17, 81]
    assert [num_encoded_latents(t) for t in (1, 2, 4, 5, 8, 9, 23)] == [
        1, 1, 1, 2, 2, 3, 6]
    assert default_chunk_size(21, 4) == 6
    assert default_chunk_size(1, 4) == 1


# --- one process ------------------------------------------------------------

@pytest.mark.parametrize("version", ["2.2", "2.1"])
@pytest.mark.parametrize("num_latents", [1, 2, 5])
def test_single_chunk_equals_wan(version, num_latents):
    vae = _vae(version)
    z = _latents(version, num_latents, seed=1)
    video = _video(version, 1 + 4 * (num_latents - 1) + 2, seed=2)

    expected_video = vae.decode([z])[0]
    expected_latents = vae.encode([video])[0]

    decoded = tiled_decode(vae, z).clamp(-1, 1)
    encoded = tiled_encode(vae, video)
    assert torch.equal(decoded, expected_video)
    assert torch.equal(encoded, expected_latents)


def test_decode_frame_count_one_rank():
    # One rank, default options: a single chunk. Two and four ranks are
    # covered by the data-parallel tests below.
    for num_latents in (1, 2, 5, 21):
        video = tiled_decode(_vae("2.2"), _latents("2.2", num_latents, seed=3))
        assert video.shape == (3, num_decoded_frames(num_latents), 64, 64)
        assert video.dtype == torch.float32


@pytest.mark.parametrize("version", ["2.2", "2.1"])
@pytest.mark.parametrize("num_frames", [1, 2, 5, 8, 9, 23])
@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_encode_latent_count(version, num_frames, chunk_size):
    # num_frames=1 is the image encode of the image-to-video path.
    video = _video(version, num_frames, seed=4)
    latents = tiled_encode(_vae(version), video, chunk_size=chunk_size)
    assert latents.shape == (LATENT_CHANNELS[version],
                             1 + (num_frames - 1) // 4, LATENT_SIZE,
                             LATENT_SIZE)


def test_chunked_decode_differs_from_untiled():
    # Guards the data-parallel comparisons: if chunking had no effect, they
    # could not tell a chunked run from an untiled one.
    vae = _vae("2.2")
    z = _latents("2.2", 5, seed=5)
    untiled = tiled_decode(vae, z)
    chunked = tiled_decode(vae, z, chunk_size=2, sequential=True)
    assert untiled.shape == chunked.shape
    assert (untiled - chunked).abs().max() > 1e-3


def test_blend_zero_first_chunk_exact():
    # With blend=0 the frames of latent 0 and 1 come from chunk 0 alone, so
    # they equal an untiled decode of those two latents.
    vae = _vae("2.2")
    z = _latents("2.2", 4, seed=6)
    chunked = tiled_decode(vae, z, chunk_size=2, overlap=1, blend=0)
    first_chunk = tiled_decode(vae, z[:, :2])
    assert torch.equal(chunked[:, :5], first_chunk)


def _blend_ramp(length):
    # Weights of the newer chunk: k / (length + 1) for k = 1 .. length.
    return (torch.arange(1, length + 1) / (length + 1)).view(1, length, 1, 1)


def test_decode_blend_against_manual_chunks():
    # 5 latents, chunk_size=2, overlap=2, blend=1: chunks [0, 2), [2, 4)
    # with warm-up from latent 0, and [4, 5) with warm-up from latent 2.
    vae = _vae("2.2")
    z = _latents("2.2", 5, seed=10)
    prefix = vae.model.decode(z[:, :4].unsqueeze(0), vae.scale)[0]  # frames 0..12
    tail = vae.model.decode(z[:, 2:].unsqueeze(0), vae.scale)[0]  # latents 2..4
    # Fresh frames 1..8 of tail are original frames 9..16 (latents 3 and 4).
    ramp = _blend_ramp(4)
    expected = torch.cat([
        prefix[:, :9],
        prefix[:, 9:13] * (1 - ramp) + tail[:, 1:5] * ramp,
        tail[:, 5:9],
    ], dim=1)

    chunked = tiled_decode(vae, z, chunk_size=2, overlap=2, blend=1,
                           sequential=True)
    torch.testing.assert_close(chunked, expected, rtol=0, atol=TOLERANCE)


def test_encode_warmup_alignment_against_manual_chunks():
    # 17 frames = 5 latents, chunk_size=2, overlap=2, blend=1. The last chunk
    # [4, 5) encodes frames 8..16: its fresh latent 0 is frame 8 alone and is
    # dropped, fresh latents 1 and 2 cover frames 9..12 and 13..16.
    vae = _vae("2.2")
    video = _video("2.2", 17, seed=11)
    prefix = vae.model.encode(video[:, :13].unsqueeze(0), vae.scale)[0]
    tail = vae.model.encode(video[:, 8:].unsqueeze(0), vae.scale)[0]
    ramp = _blend_ramp(1)
    expected = torch.cat([
        prefix[:, :3],
        prefix[:, 3:4] * (1 - ramp) + tail[:, 1:2] * ramp,
        tail[:, 2:3],
    ], dim=1)

    chunked = tiled_encode(vae, video, chunk_size=2, overlap=2, blend=1,
                           sequential=True)
    torch.testing.assert_close(chunked, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("bad_shape", [(48, 4, 4), (1, 48, 2, 4, 4)])
def test_tiled_decode_rejects_shape(bad_shape):
    with pytest.raises(ValueError, match=r"\[C, T, H, W\]"):
        tiled_decode(_vae("2.2"), torch.zeros(bad_shape))


# --- patching ---------------------------------------------------------------

@pytest.fixture
def fresh_vae(tmp_path, request):
    return tiny_vae(request.param, directory=str(tmp_path), dim=8, seed=0)


def _version_of(vae):
    return "2.2" if isinstance(vae, vae2_2.Wan2_2_VAE) else "2.1"


@pytest.mark.parametrize("fresh_vae", ["2.2", "2.1"], indirect=True)
def test_patch_and_restore(fresh_vae):
    vae = fresh_vae
    vae_class = type(vae)
    class_methods = (vae_class.encode, vae_class.decode)
    state_before = vae.model.state_dict(keep_vars=True)
    z = _latents(_version_of(vae), 3, seed=7)
    untiled = vae.decode([z])[0]

    assert patch_vae(vae, chunk_size=1) is vae
    assert is_patched(vae)
    assert "encode" in vars(vae)
    assert "decode" in vars(vae)
    assert (vae_class.encode, vae_class.decode) == class_methods

    patched = vae.decode([z])
    assert isinstance(patched, list)
    assert len(patched) == 1
    assert patched[0].shape == untiled.shape
    assert not torch.equal(patched[0], untiled)  # chunk_size=1 tiles
    assert patched[0].abs().max() <= 1  # clamped as Wan does

    state_after = vae.model.state_dict(keep_vars=True)
    assert list(state_after) == list(state_before)
    for name, tensor in state_before.items():
        assert state_after[name] is tensor, name

    assert restore_vae(vae) is vae
    assert not is_patched(vae)
    assert "encode" not in vars(vae)
    assert "decode" not in vars(vae)
    assert torch.equal(vae.decode([z])[0], untiled)


@pytest.mark.parametrize("fresh_vae", ["2.2"], indirect=True)
def test_patch_twice_updates_options(fresh_vae):
    vae = fresh_vae
    patch_vae(vae, chunk_size=1)
    decode_method = vars(vae)["decode"]
    patch_vae(vae, chunk_size=2, overlap=3, blend=2)

    assert tiling_options(vae).chunk_size == 2
    assert tiling_options(vae).overlap == 3
    assert tiling_options(vae).blend == 2
    assert vars(vae)["decode"] is decode_method

    z = _latents("2.2", 5, seed=8)
    expected = tiled_decode(vae, z, chunk_size=2, overlap=3, blend=2)
    assert torch.equal(vae.decode([z])[0], expected.clamp(-1, 1))

    restore_vae(vae)
    assert tiling_options(vae) is None
    assert not is_patched(vae)


@pytest.mark.parametrize("fresh_vae", ["2.2"], indirect=True)
def test_restore_puts_back_earlier_instance_methods(fresh_vae):
    vae = fresh_vae

    def earlier_decode(zs):
        return "earlier"

    vae.decode = earlier_decode
    patch_vae(vae)
    assert vae.decode is not earlier_decode
    restore_vae(vae)
    assert vae.decode is earlier_decode
    assert "encode" not in vars(vae)


def test_restore_unpatched_is_noop():
    vae = _vae("2.1")
    assert restore_vae(vae) is vae
    assert not is_patched(vae)


@pytest.mark.parametrize("fresh_vae", ["2.2", "2.1"], indirect=True)
def test_patched_methods_raise_on_invalid_input(fresh_vae):
    vae = fresh_vae
    patch_vae(vae)
    z = _latents(_version_of(vae), 2, seed=0)

    with pytest.raises(TypeError, match="expects a list of tensors .* got Tensor"):
        vae.decode(z)
    with pytest.raises(TypeError, match="got tuple"):
        vae.encode((z,))
    with pytest.raises(TypeError, match="element 1 is a str"):
        vae.decode([z, "frames"])
    with pytest.raises(ValueError, match=r"shape \(1, .*\), expected a 4-D"):
        vae.decode([z.unsqueeze(0)])
    with pytest.raises(ValueError, match=r"element 0 has shape \(3, 9, 64\)"):
        vae.encode([torch.zeros(3, 9, 64)])


@pytest.mark.parametrize("options,message", [
    ({"overlap": 1, "blend": 1}, "blend=1 is invalid for overlap=1"),
    ({"overlap": -1, "blend": 0}, "overlap=-1"),
    ({"chunk_size": 0}, "chunk_size=0"),
])
def test_patch_rejects_invalid_options(options, message):
    vae = _vae("2.2")
    with pytest.raises(ValueError, match=message):
        patch_vae(vae, **options)
    assert not is_patched(vae)


def test_patched_decode_rejects_overlap_zero_with_chunks():
    vae = _vae("2.2")
    patch_vae(vae, chunk_size=1, overlap=0, blend=0)
    try:
        with pytest.raises(ValueError, match="overlap=0 is invalid with 2 chunks"):
            vae.decode([_latents("2.2", 2, seed=0)])
    finally:
        restore_vae(vae)


def test_patch_rejects_unsupported_types():
    class NotAVae:
        model = None

    with pytest.raises(RuntimeError, match="does not support .*NotAVae"):
        patch_vae(NotAVae())

    broken = object.__new__(vae2_1.Wan2_1_VAE)
    with pytest.raises(RuntimeError, match="missing: .*'encode'"):
        patch_vae(broken)


# --- data-parallel on gloo ranks --------------------------------------------

CASES_2_RANKS = [
    *(Case("2.2", "decode", n) for n in (1, 2, 5, 21)),
    Case("2.2", "decode", 5, chunk_size=1),  # 5 chunks, 3 on rank 0
    Case("2.2", "decode", 5, chunk_size=2, overlap=3, blend=2),
    Case("2.2", "decode", 5, overlap=1, blend=0),
    Case("2.1", "decode", 2),
    Case("2.1", "decode", 5),
    Case("2.1", "decode", 5, chunk_size=1, overlap=3, blend=2),
    *(Case("2.2", "encode", t) for t in (1, 9, 23)),
    Case("2.2", "encode", 23, chunk_size=1),
    Case("2.1", "encode", 9),
    Case("2.1", "encode", 23, chunk_size=2, overlap=3, blend=2),
    Case("2.2", "decode", 5, through_patch=True),
    Case("2.1", "encode", 13, through_patch=True),
]

# Fewer chunks than ranks: 1 latent (one chunk, computed on every rank),
# 2 latents (ranks 2 and 3 idle), 5 latents (rank 3 idle).
CASES_4_RANKS = [
    *(Case("2.2", "decode", n) for n in (1, 2, 5, 21)),
    Case("2.1", "decode", 2),
    Case("2.2", "encode", 1),
    Case("2.2", "encode", 5),
    Case("2.1", "encode", 5),
]


@pytest.mark.timeout(300)
def test_two_ranks_match_sequential():
    _check_ranks_match_sequential(CASES_2_RANKS, world_size=2)


@pytest.mark.timeout(300)
def test_four_ranks_match_sequential():
    _check_ranks_match_sequential(CASES_4_RANKS, world_size=4)
