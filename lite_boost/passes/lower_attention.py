"""Lower Wan's attention calls to the device kernel.

Matches every call of Wan's ``flash_attention`` (self- and cross-attention) and
replaces it with a call of the chosen kernel from ``lite_boost.ops.attention``
with the same q, k, v, ``k_lens``, ``softmax_scale``, ``q_scale`` and
``causal``. Wan's function asserts CUDA tensors; the kernels run on the
device they are given and keep masking keys past ``k_lens``.

Arguments no kernel implements (``q_lens``, a local ``window_size``,
``dropout_p``) raise NotImplementedError naming the call, instead of being
dropped.
"""

import logging
from typing import Callable

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .attention_match import find_attention_calls
from .meta import META_KEY, record_provenance

logger = logging.getLogger(__name__)

KERNEL_ARGUMENTS = ("k_lens", "softmax_scale", "q_scale", "causal")


def _check_supported(node: fx.Node, arguments: dict) -> None:
    unsupported = {
        "q_lens": arguments["q_lens"] is not None,
        "window_size": tuple(arguments["window_size"]) != (-1, -1),
        "dropout_p": arguments["dropout_p"] != 0,
    }
    for name, is_set in unsupported.items():
        if is_set:
            raise NotImplementedError(
                f"attention call {node.name!r} passes {name}="
                f"{arguments[name]!r}; lite_boost's kernels support only "
                "q_lens=None, window_size=(-1, -1) and dropout_p=0")


class LowerAttentionPass(PassBase):
    """Args:
        kernel: a function of ``lite_boost.ops.attention``, for example
            ``select_attention_kernel("cpu")``.
    """

    def __init__(self, kernel: Callable):
        super().__init__()
        self.kernel = kernel

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        modified = False
        for match in find_attention_calls(graph):
            _check_supported(match.node, match.arguments)
            kwargs = {name: match.arguments[name] for name in KERNEL_ARGUMENTS}
            if "dtype" in self.kernel.__code__.co_varnames:
                kwargs["dtype"] = match.arguments["dtype"]
            with graph.inserting_before(match.node):
                lowered = graph.call_function(
                    self.kernel, (match.query, match.key, match.value), kwargs)
            lowered.meta[META_KEY] = dict(match.node.meta.get(META_KEY, {}))
            record_provenance(
                lowered, type(self).__name__, replaces=match.node.name,
                kernel=self.kernel.__name__)
            match.node.replace_all_uses_with(lowered)
            graph.erase_node(match.node)
            modified = True
            logger.debug("%s -> %s", match.node.name, self.kernel.__name__)
        return PassResult(graph_module, modified)
