"""Find Wan's attention calls in a traced graph and classify them by data flow."""

import dataclasses
import inspect
from typing import Dict, List, Set

import torch.fx as fx

SELF_ATTENTION = "self"
CROSS_ATTENTION = "cross"

def wan_attention_functions() -> tuple:
    """Return the functions that count as "Wan's attention call".

    The original ``flash_attention`` and ``attention`` of
    ``wan.modules.attention``, plus whatever ``wan.modules.model`` binds as
    ``flash_attention`` now (a CPU replacement, for example).
    """
    import wan.modules.attention as wan_attention
    import wan.modules.model as wan_model

    return (wan_attention.flash_attention, wan_attention.attention,
            wan_model.flash_attention)


@dataclasses.dataclass
class AttentionMatch:
    """One call of Wan's attention function.

    Attributes:
        node: the ``call_function`` node of the call.
        kind: "self" when keys and values come only from the query's inputs,
            "cross" when they come from another input (text or image context).
        arguments: the call's arguments bound to Wan's ``flash_attention``
            signature, defaults included (q, k, v, k_lens, window_size, ...).
    """

    node: fx.Node
    kind: str
    arguments: Dict[str, object]

    @property
    def query(self) -> fx.Node:
        return self.arguments["q"]

    @property
    def key(self) -> fx.Node:
        return self.arguments["k"]

    @property
    def value(self) -> fx.Node:
        return self.arguments["v"]


def bind_attention_arguments(node: fx.Node) -> Dict[str, object]:
    import wan.modules.attention as wan_attention

    signature = inspect.signature(wan_attention.flash_attention)
    bound = signature.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def source_placeholders(node: fx.Node) -> Set[fx.Node]:
    """Return the graph inputs that ``node`` is computed from."""
    seen, sources, stack = set(), set(), [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            sources.add(current)
        stack.extend(current.all_input_nodes)
    return sources


def classify_attention(arguments: Dict[str, object]) -> str:
    query_sources = source_placeholders(arguments["q"])
    key_value_sources = (source_placeholders(arguments["k"])
                         | source_placeholders(arguments["v"]))
    if key_value_sources <= query_sources:
        return SELF_ATTENTION
    return CROSS_ATTENTION


def find_attention_calls(graph: fx.Graph) -> List[AttentionMatch]:
    """Return every call of Wan's attention function in ``graph``, in order."""
    targets = wan_attention_functions()
    matches = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in targets:
            continue
        arguments = bind_attention_arguments(node)
        matches.append(AttentionMatch(node, classify_attention(arguments), arguments))
    return matches
