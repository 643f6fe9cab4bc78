"""The pass driver and the default pipeline for a Wan attention module.

Order, and why:

1. ``FindAttentionPass`` marks each attention call as self or cross. It must
   run first, because it reads Wan's original call.
2. ``UlyssesAllToAllPass`` wraps self-attention in the all_to_all pair. It
   runs before lowering, while the call still has Wan's signature and rope's
   inputs are easy to find. It is left out when the Ulysses degree is 1, so a
   single-process graph has no collective at all.
3. ``FuseQkvAllToAllPass``, only with ``fuse_qkv=True`` and a Ulysses
   degree above 1, merges the q, k and v exchanges of each self-attention
   call into one call. It needs the exchanges that step 2 inserted, and it
   runs before the rope and attention rewrites, which leave the exchanges
   alone. It is off by default, because it was slower on gloo over loopback
   (2 ranks, one thread each, 2-core Xeon). There the merged exchange of q, k
   and v of 1 x 4096 x 8 x 64 fp32 each took 26 ms, against 21 ms for three
   calls (medians of 30). The transfer is bandwidth-bound, so one call of
   three times the bytes takes three times as long, and filling the
   interleaved send buffer costs more than three plain copies.
4. ``LowerRopePass``, only with ``rope="float32"``, replaces Wan's float64
   rope with lite_boost's float32 rope. It runs after the Ulysses pass, which
   finds Wan's rope call to put the exchange before it.
5. ``LowerAttentionPass`` replaces every attention call with the device kernel.
6. ``RingAttentionPass``, only with a ring degree above 1, turns the lowered
   self-attention call into ring attention and Wan's rope into the ring
   block's rope. It runs last because it rewrites what lowering produced.
"""

import dataclasses
import logging
from typing import Callable, List, Optional, Sequence

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase

from .find_attention import FindAttentionPass
from .fuse_qkv_all_to_all import FuseQkvAllToAllPass
from .lower_attention import LowerAttentionPass
from .lower_rope import LowerRopePass
from .ring_attention import RingAttentionPass
from .ulysses_all_to_all import UlyssesAllToAllPass

logger = logging.getLogger(__name__)

# Values of attention_passes(rope=...): None keeps Wan's float64 rope.
ROPE_CHOICES = (None, "float32")


class PassFailedError(RuntimeError):
    """A pass raised, or left a graph that fails ``Graph.lint()``."""


@dataclasses.dataclass
class PassRecord:
    name: str
    modified: bool


def run_passes(graph_module: fx.GraphModule,
               passes: Sequence[PassBase]) -> List[PassRecord]:
    """Run ``passes`` in order; lint and recompile after each one that changed it.

    Raises:
        PassFailedError: names the failing pass and the passes that ran
            before it; the original exception is chained.
    """
    records = []
    for graph_pass in passes:
        name = type(graph_pass).__name__
        try:
            result = graph_pass(graph_module)
            if result is not None and result.modified:
                graph_module.graph.lint()
                graph_module.recompile()
        except NotImplementedError:
            raise
        except Exception as error:
            ran_before = [record.name for record in records] or "none"
            raise PassFailedError(
                f"pass {name} failed on {graph_module.__class__.__name__} "
                f"(passes run before it: {ran_before}): {error}") from error
        records.append(PassRecord(name, bool(result and result.modified)))
        logger.debug("after %s:\n%s", name, graph_module.code)
    return records


def attention_passes(ulysses_degree: int, kernel: Callable,
                     rope: Optional[str] = None,
                     ring_degree: int = 1,
                     fuse_qkv: bool = False) -> List[PassBase]:
    """Return the default pipeline for one Wan attention module.

    Args:
        rope: None keeps Wan's float64 rope; "float32" adds ``LowerRopePass``.
        ring_degree: above 1 adds ``RingAttentionPass``.
        fuse_qkv: with a Ulysses degree above 1, adds
            ``FuseQkvAllToAllPass``, so q, k and v share one all_to_all.
    """
    if rope not in ROPE_CHOICES:
        raise ValueError(
            f"rope={rope!r} is not supported; valid choices: {ROPE_CHOICES}")
    if rope == "float32" and ring_degree > 1:
        raise NotImplementedError(
            f"rope='float32' does not support ring_degree={ring_degree}: the "
            "float32 rope has no ring offset; use rope=None")
    passes: List[PassBase] = [FindAttentionPass()]
    if ulysses_degree > 1:
        passes.append(UlyssesAllToAllPass(ulysses_degree))
        if fuse_qkv:
            passes.append(FuseQkvAllToAllPass())
    if rope == "float32":
        passes.append(LowerRopePass())
    passes.append(LowerAttentionPass(kernel))
    if ring_degree > 1:
        passes.append(RingAttentionPass(ring_degree))
    return passes
