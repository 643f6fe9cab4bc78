"""Insert the Ulysses all_to_all pair around every self-attention call.

Matches attention calls that ``FindAttentionPass`` marked "self". Before the
call, q, k and v move from a sequence slice with all heads to the full
sequence with a slice of the heads. After it, the output moves back:

    q, k, v: [B, S/P, H, D] -> all_to_all(scatter_dim=2, gather_dim=1) -> [B, S, H/P, D]
    out:     [B, S, H/P, D] -> all_to_all(scatter_dim=1, gather_dim=2) -> [B, S/P, H, D]

q and k are exchanged before ``rope_apply``, so Wan's rope gets the whole
sequence and applies every position's own rotation: no rank offset is needed
and the positions stay right for each local slice. Cross-attention calls are
left alone: their keys and values come from the text context, which every rank
holds whole, and their queries stay on the local slice.

Without a self-attention call the pass changes nothing, and a graph that
already has the pair is not rewritten again.
"""

import logging

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..ops.collectives import ulysses_all_to_all
from .attention_match import SELF_ATTENTION, find_attention_calls
from .meta import META_KEY, record_provenance

logger = logging.getLogger(__name__)

# Dims of Wan's attention layout [B, S, H, D].
SEQUENCE_DIM = 1
HEAD_DIM = 2


def is_rope_call(node: object) -> bool:
    """Return whether ``node`` calls Wan's ``rope_apply``."""
    import wan.modules.model as wan_model

    return (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target is wan_model.rope_apply)


class UlyssesAllToAllPass(PassBase):
    """Args:
        ulysses_degree: ranks in the Ulysses group, recorded in node.meta.
    """

    def __init__(self, ulysses_degree: int):
        super().__init__()
        self.ulysses_degree = ulysses_degree

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        if any(node.target is ulysses_all_to_all for node in graph.nodes):
            logger.debug("skipped: the graph already has Ulysses all_to_all")
            return PassResult(graph_module, False)

        modified = False
        for match in find_attention_calls(graph):
            if match.node.meta.get(META_KEY, {}).get("attention") != SELF_ATTENTION:
                continue
            for name in ("q", "k", "v"):
                self._scatter_heads_before(graph, match.node, match.arguments[name], name)
            self._gather_heads_after(graph, match.node)
            modified = True
        return PassResult(graph_module, modified)

    def _insert_all_to_all(self, graph: fx.Graph, source: fx.Node,
                           scatter_dim: int, gather_dim: int, role: str) -> fx.Node:
        node = graph.call_function(
            ulysses_all_to_all, (source,),
            {"scatter_dim": scatter_dim, "gather_dim": gather_dim})
        record_provenance(
            node, type(self).__name__, role=role, input=source.name,
            scatter_dim=scatter_dim, gather_dim=gather_dim,
            world_size=self.ulysses_degree)
        return node

    def _scatter_heads_before(self, graph: fx.Graph, attention: fx.Node,
                              operand: fx.Node, role: str) -> None:
        # Exchange before rope when the operand is rope's output, so rope
        # runs on the full sequence.
        user = operand if is_rope_call(operand) else attention
        source = operand.args[0] if user is operand else operand
        with graph.inserting_before(user):
            exchanged = self._insert_all_to_all(
                graph, source, HEAD_DIM, SEQUENCE_DIM, role)
        user.replace_input_with(source, exchanged)

    def _gather_heads_after(self, graph: fx.Graph, attention: fx.Node) -> None:
        with graph.inserting_after(attention):
            exchanged = self._insert_all_to_all(
                graph, attention, SEQUENCE_DIM, HEAD_DIM, "out")
        attention.replace_all_uses_with(
            exchanged, delete_user_cb=lambda user: user is not exchanged)
