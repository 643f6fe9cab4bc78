"""Optional: replace Wan's float64 rope with lite_boost's float32 rope.

Matches every call of ``wan.modules.model.rope_apply`` (one for q and one for
k in each self-attention graph) and replaces it with
``lite_boost.ops.rope.rope_apply_float32`` on the same ``(x, grid_sizes,
freqs)``. Cross-attention graphs have no rope and are left unchanged, and a
graph without Wan's rope call is not modified.

The float32 rope differs from Wan's by at most about 1e-7 of max |x| (see
``lite_boost.ops.rope``), so it is off by default:
``attention_passes(..., rope="float32")`` adds this pass.

It must run after ``UlyssesAllToAllPass``, which finds Wan's rope call to put
the exchange of q and k before it. Run first, it would leave no rope call to
find: the exchange would land after the rope, and each rank would rotate its
local slice with the positions of the sequence's start.
"""

import logging

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..ops.rope import rope_apply_float32
from .meta import record_provenance

logger = logging.getLogger(__name__)


class LowerRopePass(PassBase):
    def call(self, graph_module: fx.GraphModule) -> PassResult:
        import wan.modules.model as wan_model

        graph = graph_module.graph
        modified = False
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not wan_model.rope_apply:
                continue
            with graph.inserting_before(node):
                lowered = graph.call_function(
                    rope_apply_float32, node.args, node.kwargs)
            record_provenance(lowered, type(self).__name__, replaces=node.name,
                              dtype="float32")
            node.replace_all_uses_with(lowered)
            graph.erase_node(node)
            modified = True
            logger.debug("%s -> rope_apply_float32", node.name)
        return PassResult(graph_module, modified)
