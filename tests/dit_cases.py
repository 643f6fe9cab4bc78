"""DiT inputs shared by the single-process reference and the ranks."""

import dataclasses
from typing import Tuple

import torch

from lite_boost.tiny import tiny_dit


@dataclasses.dataclass(frozen=True)
class DitCase:
    model_type: str
    num_heads: int
    latent_shape: Tuple[int, int, int]  # (F, H, W) of the latent; tokens F*H/2*W/2
    seq_len: int  # Wan pads the tokens up to this length
    seed: int

    @property
    def tokens(self) -> int:
        frames, height, width = self.latent_shape
        return frames * (height // 2) * (width // 2)


IN_DIM = {"t2v": 16, "ti2v": 48, "i2v": 36}
LATENT_CHANNELS = {"t2v": 16, "ti2v": 48, "i2v": 16}
HEAD_DIM = 16

CASES = (
    DitCase("t2v", 4, (2, 6, 8), 24, seed=1),       # 24 tokens, divisible by 2, 3, 4
    DitCase("t2v", 12, (3, 6, 10), 47, seed=2),     # 45 tokens (odd), 47 (prime) padded
    DitCase("ti2v", 6, (13, 2, 2), 13, seed=3),     # 13 tokens (prime), per-token timesteps
    DitCase("ti2v", 12, (3, 4, 6), 18, seed=4),     # 18 tokens
    DitCase("i2v", 12, (2, 6, 6), 19, seed=5),      # 18 tokens, 19 (prime) padded
    DitCase("i2v", 4, (5, 2, 6), 15, seed=6),       # 15 tokens, odd
)


def cases_for(world_size: int):
    return [case for case in CASES if case.num_heads % world_size == 0]


def build_model(case: DitCase):
    return tiny_dit(case.model_type, in_dim=IN_DIM[case.model_type],
                    out_dim=LATENT_CHANNELS[case.model_type],
                    dim=case.num_heads * HEAD_DIM, num_heads=case.num_heads,
                    num_layers=2, ffn_dim=2 * case.num_heads * HEAD_DIM,
                    seed=case.seed)


def build_inputs(case: DitCase) -> dict:
    generator = torch.Generator().manual_seed(100 + case.seed)
    channels = LATENT_CHANNELS[case.model_type]
    x = [torch.randn(channels, *case.latent_shape, generator=generator)]
    if case.model_type == "ti2v":
        t = torch.rand(1, case.seq_len, generator=generator) * 1000
    else:
        t = torch.rand(1, generator=generator) * 1000
    context = [torch.randn(7, 32, generator=generator)]
    inputs = {"x": x, "t": t, "context": context, "seq_len": case.seq_len}
    if case.model_type == "i2v":
        inputs["y"] = [torch.randn(20, *case.latent_shape, generator=generator)]
    return inputs


def run_model(model, case: DitCase) -> torch.Tensor:
    with torch.no_grad():
        return model(**build_inputs(case))[0]


def count_collectives(model) -> dict:
    """Return module name -> number of all_to_all nodes in its rewritten graph."""
    from lite_boost.debug import rewritten_graphs
    from lite_boost.ops.collectives import ulysses_all_to_all

    return {name: sum(node.target is ulysses_all_to_all for node in gm.graph.nodes)
            for name, gm in rewritten_graphs(model).items()}


def patched_outputs(world_size: int):
    """Rank body: patch every case's model at this world size and run it.

    Returns the outputs and, for the first case, the all_to_all count of
    every rewritten graph.
    """
    from lite_boost.parallel import ParallelManager

    outputs = []
    counts = None
    for case in cases_for(world_size):
        model = ParallelManager(build_model(case))
        outputs.append(run_model(model, case))
        counts = counts or count_collectives(model)
    return outputs, counts
