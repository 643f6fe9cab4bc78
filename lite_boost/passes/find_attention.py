"""Analysis pass: mark each attention call as self- or cross-attention.

Matches calls of Wan's ``flash_attention`` (or ``attention``) and records in
``node.meta["lite_boost"]`` whether keys and values come from the query's own
input (self-attention) or from another input such as the text context
(cross-attention). The graph is not changed. Later passes rewrite only the
calls marked "self"; cross-attention keys and values are never sharded.
"""

import logging

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .attention_match import find_attention_calls
from .meta import META_KEY

logger = logging.getLogger(__name__)


class FindAttentionPass(PassBase):
    def call(self, graph_module: fx.GraphModule) -> PassResult:
        for match in find_attention_calls(graph_module.graph):
            match.node.meta.setdefault(META_KEY, {})["attention"] = match.kind
            logger.debug("%s: %s-attention", match.node.name, match.kind)
        return PassResult(graph_module, False)
