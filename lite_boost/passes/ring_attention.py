"""Run self-attention as ring attention across the ring group.

Matches the lowered self-attention call (``LowerAttentionPass`` records
``attention="self"`` on it) and the two ``rope_apply`` calls that feed its q
and k. The attention call becomes ``ring_attention`` with the same arguments,
and each rope call becomes ``rope_apply_ring``, which rotates the ring rank's
block at its true position in the sequence:

    q, k, v: [B, S/R, H/U, D] (this rank's block after the Ulysses exchange)
    ring_attention -> [B, S/R, H/U, D], attending over all R blocks

Cross-attention calls are left alone: their keys are the whole text context
on every rank. Without a ring (degree 1) the pipeline leaves this pass out.
"""

import logging

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..ops.ring_attention import ring_attention, rope_apply_ring
from .attention_match import SELF_ATTENTION
from .meta import META_KEY, provenance, record_provenance

logger = logging.getLogger(__name__)


def _is_wan_rope(node: object) -> bool:
    import wan.modules.model as wan_model

    return (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target is wan_model.rope_apply)


class RingAttentionPass(PassBase):
    """Args:
        ring_degree: ranks in the ring group, recorded in node.meta.
    """

    def __init__(self, ring_degree: int):
        super().__init__()
        self.ring_degree = ring_degree

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        modified = False
        for node in list(graph.nodes):
            info = provenance(node)
            if (node.op != "call_function" or info.get("pass") != "LowerAttentionPass"
                    or info.get("attention") != SELF_ATTENTION):
                continue
            for operand in node.args[:2]:
                self._move_rope(graph, operand)
            with graph.inserting_before(node):
                ring = graph.call_function(ring_attention, node.args, dict(node.kwargs))
            ring.meta[META_KEY] = dict(info)
            record_provenance(ring, type(self).__name__, replaces=node.name,
                              kernel="ring_attention", world_size=self.ring_degree)
            node.replace_all_uses_with(ring)
            graph.erase_node(node)
            modified = True
        return PassResult(graph_module, modified)

    def _move_rope(self, graph: fx.Graph, operand: object) -> None:
        if not _is_wan_rope(operand):
            raise NotImplementedError(
                f"ring attention needs Wan's rope_apply on q and k, found "
                f"{operand!r}; rope='float32' does not support ring_degree > 1")
        with graph.inserting_before(operand):
            shifted = graph.call_function(rope_apply_ring, operand.args, dict(operand.kwargs))
        record_provenance(shifted, type(self).__name__, replaces=operand.name,
                          world_size=self.ring_degree)
        operand.replace_all_uses_with(shifted)
        graph.erase_node(operand)
