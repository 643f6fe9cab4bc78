"""Split the token sequence across ranks at the DiT's boundary, with hooks.

``WanModel.forward`` is left as Wan wrote it. Hooks on its submodules do the
sharding instead:

- before the first block: pad x ``[B, L, C]`` and the per-token modulation
  ``e`` ``[B, L, 6, C]`` to a multiple of P tokens and keep this rank's slice
  ``[B, L_pad/P, ...]``;
- before every other block: hand it the same sharded ``e``;
- before the head: shard its per-token time embedding ``[B, L, C]`` the same way;
- after the head: all-gather the slices ``[B, L_pad/P, C_out] -> [B, L_pad, C_out]``
  and strip the padding back to L.

The padded tokens sit past ``seq_lens``, so attention masks them as keys
exactly like the padding Wan adds itself.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from ..ops.collectives import all_gather_dim
from ..parallel.state import get_state, ulysses_rank

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


class SequenceShardHooks:
    """Forward hooks that run a WanModel's blocks and head on a sequence slice."""

    def __init__(self, model: torch.nn.Module):
        self.model_name = type(model).__name__
        self.handles: List[RemovableHandle] = []
        self._full_length: Optional[int] = None
        self._e_full: Optional[torch.Tensor] = None
        self._e_local: Optional[torch.Tensor] = None

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

    def _layout(self):
        state = get_state()
        return state.ulysses_degree, ulysses_rank()

    def _shard_first_block(self, block, args, kwargs):
        world_size, rank = self._layout()
        x, rest = args[0], args[1:]
        self._full_length = x.size(SEQUENCE_DIM)
        self._e_full = kwargs["e"]
        self._e_local = shard_sequence(kwargs["e"], world_size, rank)
        kwargs["e"] = self._e_local
        return (shard_sequence(x, world_size, rank), *rest), kwargs

    def _shard_block_modulation(self, block, args, kwargs):
        if self._e_full is not None and kwargs.get("e") is self._e_full:
            kwargs["e"] = self._e_local
        return args, kwargs

    def _shard_head(self, head, args):
        if self._full_length is None:
            return None
        world_size, rank = self._layout()
        x, e = args
        return x, shard_sequence(e, world_size, rank)

    def _gather_head(self, head, args, output):
        if self._full_length is None:
            return None
        full_length = self._full_length
        self._clear()
        group = get_state().ulysses_group
        gathered = all_gather_dim(output, SEQUENCE_DIM, group)
        return gathered.narrow(SEQUENCE_DIM, 0, full_length)
