"""Count the bytes that each torch.distributed collective call sends from this rank.

``CollectiveCounter`` replaces the collectives on the ``torch.distributed``
module with wrappers for the duration of a ``with`` block. lite_boost and Wan
both look the functions up on that module at call time, so every call is
seen. Each call is recorded with the phase that was current when it ran
(``counter.phase``), which forward hooks set, for example to
"self-attention" while a self-attention module runs.

Bytes sent by this rank, for a group of P ranks:

- ``all_to_all_single`` and ``all_to_all``: every piece except the one the
  rank keeps for itself, so ``(P - 1) / P`` of the input with equal splits;
- ``all_gather_into_tensor``, ``all_gather_single`` and ``all_gather``: the
  input once for each of the other ``P - 1`` ranks;
- ``broadcast``: ``P - 1`` copies from the source rank, nothing from others;
- ``all_reduce``: ``2 (P - 1) / P`` of the tensor, the ring algorithm's share.
"""

import collections
import dataclasses
import functools
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist


@dataclasses.dataclass
class CollectiveCall:
    name: str
    phase: str
    bytes_sent: int


def _group_layout(group) -> tuple:
    return dist.get_world_size(group), dist.get_rank(group)


def _all_to_all_single_bytes(output, input, output_split_sizes=None,
                             input_split_sizes=None, group=None, **_) -> int:
    world_size, rank = _group_layout(group)
    if not input_split_sizes:
        return input.nbytes * (world_size - 1) // world_size
    row_bytes = input.nbytes // max(input.size(0), 1)
    return row_bytes * sum(size for index, size in enumerate(input_split_sizes)
                           if index != rank)


def _all_to_all_bytes(output_tensor_list, input_tensor_list, group=None, **_) -> int:
    _, rank = _group_layout(group)
    return sum(tensor.nbytes for index, tensor in enumerate(input_tensor_list)
               if index != rank)


def _all_gather_into_tensor_bytes(output_tensor, input_tensor, group=None, **_) -> int:
    world_size, _ = _group_layout(group)
    return input_tensor.nbytes * (world_size - 1)


def _all_gather_bytes(tensor_list, tensor, group=None, **_) -> int:
    world_size, _ = _group_layout(group)
    return tensor.nbytes * (world_size - 1)


def _broadcast_bytes(tensor, src=None, group=None, group_src=None, **_) -> int:
    world_size, rank = _group_layout(group)
    source = group_src if group_src is not None else (
        dist.get_group_rank(group, src) if group is not None else src)
    return tensor.nbytes * (world_size - 1) if rank == source else 0


def _all_reduce_bytes(tensor, op=None, group=None, **_) -> int:
    world_size, _ = _group_layout(group)
    return 2 * tensor.nbytes * (world_size - 1) // world_size


_BYTE_COUNTS: Dict[str, Callable[..., int]] = {
    "all_to_all_single": _all_to_all_single_bytes,
    "all_to_all": _all_to_all_bytes,
    "all_gather_into_tensor": _all_gather_into_tensor_bytes,
    "all_gather_single": _all_gather_into_tensor_bytes,
    "all_gather": _all_gather_bytes,
    "broadcast": _broadcast_bytes,
    "all_reduce": _all_reduce_bytes,
}


class CollectiveCounter:
    """Record every collective call made inside the ``with`` block.

    Example::

        with CollectiveCounter() as counter:
            model(**inputs)
        print(counter.bytes_by_phase())
    """

    def __init__(self):
        self.calls: List[CollectiveCall] = []
        self.phase = "other"
        self._originals: Dict[str, Callable] = {}

    def __enter__(self) -> "CollectiveCounter":
        for name, count_bytes in _BYTE_COUNTS.items():
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._originals[name] = original
            setattr(dist, name, self._wrap(name, original, count_bytes))
        return self

    def __exit__(self, *exc_info) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals.clear()

    def _wrap(self, name: str, original: Callable, count_bytes: Callable) -> Callable:
        @functools.wraps(original)
        def counted(*args, **kwargs):
            self.calls.append(CollectiveCall(name, self.phase, count_bytes(*args, **kwargs)))
            return original(*args, **kwargs)

        return counted

    def set_phase_during(self, modules: List[torch.nn.Module], phase: str) -> List:
        """Set ``phase`` while any of ``modules`` runs; return the hook handles."""
        handles = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(
                lambda *_: setattr(self, "phase", phase)))
            handles.append(module.register_forward_hook(
                lambda *_: setattr(self, "phase", "other")))
        return handles

    def bytes_by_phase(self, calls: Optional[List[CollectiveCall]] = None) -> Dict[str, int]:
        totals: Dict[str, int] = collections.defaultdict(int)
        for call in self.calls if calls is None else calls:
            totals[call.phase] += call.bytes_sent
        return dict(totals)

    def calls_by_phase(self, calls: Optional[List[CollectiveCall]] = None) -> Dict[str, int]:
        return dict(collections.Counter(
            call.phase for call in (self.calls if calls is None else calls)))
