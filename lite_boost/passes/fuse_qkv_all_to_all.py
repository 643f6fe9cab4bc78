"""Merge the q, k and v all_to_all of each self-attention call into one call.

Matches, for every attention call that ``FindAttentionPass`` marked "self",
the three ``ulysses_all_to_all`` nodes that ``UlyssesAllToAllPass`` inserted
for its q, k and v (found through Wan's ``rope_apply`` for q and k). It
replaces them with one ``ulysses_all_to_all_qkv(q, k, v)`` node and three
``getitem`` nodes:

    q, k, v: [B, S/P, H, D] -> ulysses_all_to_all_qkv -> 3 x [B, S, H/P, D]

The exchange stays before rope, so rope still runs on the full sequence. The
output exchange after attention and cross-attention calls are left alone. A
graph without Ulysses all_to_all nodes is not changed, and a call whose three
exchanges cannot be placed at one point (a user of one exchange runs before
the input of another) keeps its separate exchanges, with a DEBUG log.

On the wire nothing changes: the fused call sends the same bytes in one call
instead of three (two when v's dtype differs from q's, see
``lite_boost.ops.collectives.ulysses_all_to_all_qkv``).
"""

import logging
import operator
from typing import List, Optional

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..ops.collectives import ulysses_all_to_all, ulysses_all_to_all_qkv
from .attention_match import SELF_ATTENTION, find_attention_calls
from .meta import META_KEY, provenance, record_provenance
from .ulysses_all_to_all import HEAD_DIM, SEQUENCE_DIM, is_rope_call

logger = logging.getLogger(__name__)

ROLES = ("q", "k", "v")


def _exchange_of(operand: object, role: str) -> Optional[fx.Node]:
    """Return the Ulysses all_to_all node that produced ``operand``, or None."""
    if is_rope_call(operand):
        operand = operand.args[0]
    if not (isinstance(operand, fx.Node) and operand.target is ulysses_all_to_all):
        return None
    if provenance(operand).get("role") != role:
        return None
    return operand


class FuseQkvAllToAllPass(PassBase):
    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        modified = False
        for match in find_attention_calls(graph):
            if match.node.meta.get(META_KEY, {}).get("attention") != SELF_ATTENTION:
                continue
            exchanges = [_exchange_of(match.arguments[role], role) for role in ROLES]
            if any(node is None for node in exchanges):
                logger.debug("%s: no Ulysses all_to_all for each of q, k and v; skipped",
                             match.node.name)
                continue
            modified |= self._fuse(graph, match.node, exchanges)
        return PassResult(graph_module, modified)

    def _fuse(self, graph: fx.Graph, attention: fx.Node,
              exchanges: List[fx.Node]) -> bool:
        order = {node: index for index, node in enumerate(graph.nodes)}
        sources = [node.args[0] for node in exchanges]
        users = [user for node in exchanges for user in node.users]
        first_user = min(users, key=order.__getitem__)
        if max(order[source] for source in sources) > order[first_user]:
            logger.debug("%s: %s runs before the input of another exchange; "
                         "q, k and v keep separate all_to_all calls",
                         attention.name, first_user.name)
            return False

        with graph.inserting_before(first_user):
            fused = graph.call_function(ulysses_all_to_all_qkv, tuple(sources))
            parts = [graph.call_function(operator.getitem, (fused, index))
                     for index in range(len(ROLES))]
        world_size = provenance(exchanges[0]).get("world_size")
        record_provenance(
            fused, type(self).__name__, role="qkv",
            replaces=[node.name for node in exchanges],
            input=[source.name for source in sources],
            scatter_dim=HEAD_DIM, gather_dim=SEQUENCE_DIM, world_size=world_size)
        for role, part, node in zip(ROLES, parts, exchanges):
            record_provenance(part, type(self).__name__, role=role, replaces=node.name)
            node.replace_all_uses_with(part)
            graph.erase_node(node)
        logger.debug("%s: q, k and v exchanged by %s", attention.name, fused.name)
        return True
