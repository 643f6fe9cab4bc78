"""Split the token sequence across ranks at the DiT's boundary, with hooks.

``WanModel.forward`` is left as Wan wrote it. Hooks on its submodules do the
sharding instead:

- before ``time_embedding``: pad its input, the sinusoidal timestep features
  ``[B, L, F]``, and keep this rank's slice. The time embedding ``[B, L, C]``
  and the per-token modulation ``e`` ``[B, L, 6, C]`` that Wan computes from
  it are then computed for this rank's tokens only. Computed for all L tokens
  on every rank, they took 3.4% of a P=1 forward of the DiT in
  benchmarks/bench_dit.py (dim 512, 4 layers, 8192 tokens, one CPU thread),
  and the full ``e`` stayed alive for the whole forward;
- before the first block: pad x ``[B, L, C]`` to a multiple of P tokens and
  keep this rank's slice ``[B, L_pad/P, C]``. If ``e`` arrives with all L
  tokens (no time-embedding hook ran), shard it here instead, and hand the
  sharded ``e`` to every other block;
- before the head: the same for its time embedding ``[B, L, C]``;
- after the head: all-gather the slices ``[B, L_pad/P, C_out] -> [B, L_pad, C_out]``
  and strip the padding back to L.

P is the sequence degree, ``ulysses_degree * ring_degree``, and the slices
go to the sequence group in rank order. The padded tokens sit past
``seq_lens``, so attention masks them as keys exactly like the padding Wan
adds itself. Their modulation, computed from zero timestep features, is never
seen by a real token.

At the first forward the ranks also compare a fingerprint of their inputs
(``check_same_inputs``). Ulysses needs every rank to hold the same full
sequence, and ranks that drew different noise (Wan's ``seed=-1``) would
otherwise return a silently mixed video.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from ..ops.collectives import all_gather_dim, all_gather_single
from ..parallel.state import get_state, sequence_rank

SEQUENCE_DIM = 1


def pad_sequence(x: torch.Tensor, padded_length: int) -> torch.Tensor:
    """Zero-pad dim 1 of ``x`` ``[B, L, ...]`` to ``padded_length`` tokens."""
    missing = padded_length - x.size(SEQUENCE_DIM)
    if missing == 0:
        return x
    # F.pad lists (before, after) pairs from the last dim backwards.
    padding = [0, 0] * (x.dim() - 2) + [0, missing]
    return F.pad(x, padding)


def shard_sequence(x: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    """Pad ``[B, L, ...]`` to a multiple of ``world_size`` and take slice ``rank``."""
    length = x.size(SEQUENCE_DIM)
    local_length = -(-length // world_size)
    x = pad_sequence(x, local_length * world_size)
    return x.narrow(SEQUENCE_DIM, rank * local_length, local_length)


def input_fingerprint(*tensors: torch.Tensor) -> torch.Tensor:
    """Return a few float64 sums that differ when the tensors differ."""
    values = []
    for tensor in tensors:
        as_double = tensor.detach().double()
        values += [as_double.sum(), as_double.abs().sum(), as_double.square().sum(),
                   torch.tensor(float(tensor.numel()), dtype=torch.float64,
                                device=tensor.device)]
    return torch.stack(values)


def check_same_inputs(model_name: str, x: torch.Tensor, e: torch.Tensor,
                      context: torch.Tensor) -> None:
    """Raise on every rank when the ranks' DiT inputs differ.

    ``e`` is the timestep embedding, or the sinusoidal features that it is
    computed from. Every rank enters the one small all_gather, then compares the same table,
    so either all ranks raise or none does.
    """
    state = get_state()
    group, world_size = state.sequence_group, state.sequence_degree
    local = input_fingerprint(x, e, context)
    table = local.new_empty(world_size * local.numel())
    all_gather_single(table, local, group, issuer="the DiT input check")
    table = table.view(world_size, -1).cpu()

    reference = table[0]
    tolerance = 1e-6 * reference.abs().clamp(min=1.0)
    mismatched = [rank for rank in range(world_size)
                  if bool(((table[rank] - reference).abs() > tolerance).any())]
    if mismatched:
        raise RuntimeError(
            f"{model_name} received different inputs on different ranks "
            f"(ranks {mismatched} differ from rank 0 in latents, timestep "
            "embedding or context). Ulysses needs the same inputs on every "
            "rank: pass the same prompt and an explicit seed >= 0 to "
            "generate() on every rank")


class SequenceShardHooks:
    """Forward hooks that run a WanModel's blocks and head on a sequence slice."""

    def __init__(self, model: torch.nn.Module):
        self.model_name = type(model).__name__
        self.handles: List[RemovableHandle] = []
        self._full_length: Optional[int] = None
        self._e_full: Optional[torch.Tensor] = None
        self._e_local: Optional[torch.Tensor] = None
        # Set by _shard_time_embedding for the current forward: the token
        # count it saw, and its full input until the first input check.
        self._time_full_length: Optional[int] = None
        self._time_features: Optional[torch.Tensor] = None
        self._time_sharded = False
        self.inputs_checked = False

        self.handles.append(model.time_embedding.register_forward_pre_hook(
            self._shard_time_embedding))
        blocks = list(model.blocks)
        if blocks:
            self.handles.append(blocks[0].register_forward_pre_hook(
                self._shard_first_block, with_kwargs=True))
        for block in blocks[1:]:
            self.handles.append(block.register_forward_pre_hook(
                self._shard_block_modulation, with_kwargs=True))
        self.handles.append(model.head.register_forward_pre_hook(self._shard_head))
        self.handles.append(model.head.register_forward_hook(self._gather_head))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._clear()

    def _clear(self) -> None:
        self._full_length = None
        self._e_full = None
        self._e_local = None
        self._time_full_length = None
        self._time_features = None
        self._time_sharded = False

    def _layout(self):
        state = get_state()
        return state.sequence_degree, sequence_rank()

    def _shard_time_embedding(self, module, args):
        world_size, rank = self._layout()
        features = args[0]
        self._time_full_length = features.size(SEQUENCE_DIM)
        if not self.inputs_checked:
            self._time_features = features
        # [B, L, F] -> [B, L_pad/P, F]
        return (shard_sequence(features, world_size, rank), *args[1:])

    def _shard_first_block(self, block, args, kwargs):
        world_size, rank = self._layout()
        x, rest = args[0], args[1:]
        self._full_length = x.size(SEQUENCE_DIM)
        # e comes from the sharded time embedding when that hook saw the
        # same tokens in this forward.
        self._time_sharded = self._time_full_length == self._full_length
        self._time_full_length = None
        if not self.inputs_checked:
            timestep = self._time_features if self._time_sharded else kwargs["e"]
            check_same_inputs(self.model_name, x, timestep, kwargs["context"])
            self.inputs_checked = True
        self._time_features = None
        if not self._time_sharded:
            self._e_full = kwargs["e"]
            self._e_local = shard_sequence(kwargs["e"], world_size, rank)
            kwargs["e"] = self._e_local
        return (shard_sequence(x, world_size, rank), *rest), kwargs

    def _shard_block_modulation(self, block, args, kwargs):
        if self._e_full is not None and kwargs.get("e") is self._e_full:
            kwargs["e"] = self._e_local
        return args, kwargs

    def _shard_head(self, head, args):
        if self._full_length is None or self._time_sharded:
            return None
        world_size, rank = self._layout()
        x, e = args
        return x, shard_sequence(e, world_size, rank)

    def _gather_head(self, head, args, output):
        if self._full_length is None:
            return None
        full_length = self._full_length
        self._clear()
        group = get_state().sequence_group
        gathered = all_gather_dim(output, SEQUENCE_DIM, group,
                                  issuer="the sequence gather after the DiT head")
        return gathered.narrow(SEQUENCE_DIM, 0, full_length)
