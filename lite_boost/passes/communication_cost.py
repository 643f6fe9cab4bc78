"""Analysis pass: the bytes each rank sends and receives through a graph's collectives.

Matches every ``ulysses_all_to_all`` call (inserted by ``UlyssesAllToAllPass``)
and attaches to the graph module a sympy expression of the bytes one rank
sends, and of the bytes it receives, in one call of the graph. The graph is
not changed, and a graph without collectives gets a cost of zero.

Counting convention: a rank's own piece of a collective never leaves it and is
not counted. Every other rank that needs a rank's data counts once.

- all_to_all of a local tensor with N elements of s bytes over P ranks: the
  rank keeps N/P elements, so it sends (P - 1)/P * N * s bytes, and it
  receives as many.
- all_gather of a local tensor with N elements: the rank's piece must reach
  the P - 1 other ranks, so it sends (P - 1) * N * s bytes. It receives the
  P - 1 pieces of the others, as many bytes.

These are the bytes of the logical exchange. They do not depend on how the
backend routes them (a ring or tree all_gather relays more).

Symbols:

=========  ===============================================================
B          batch size
S          tokens entering the DiT blocks (Wan pads the video's tokens to
           its ``seq_len``; this is that length)
P          Ulysses degree: ranks that split one sequence
H, D       attention heads and head dim
s_<role>   bytes per element of the tensor exchanged for that role (q, k,
           v, out); under autocast they differ, because Wan's RMS norm
           returns fp32 q and k while v stays in the autocast dtype
C_out      channels of the DiT head's output
s_head     bytes per element of the head's output
=========  ===============================================================

lite_boost pads S to a multiple of P, so every rank has ceiling(S/P) tokens.
In Wan's attention layout both exchanges of a self-attention call move tensors
of B * ceiling(S/P) * H * D elements per rank:

    q, k, v: [B, ceiling(S/P), H, D] -> [B, P * ceiling(S/P), H/P, D]
    out:     [B, P * ceiling(S/P), H/P, D] -> [B, ceiling(S/P), H, D]

The Ulysses lower bound per self-attention call: each rank must send at least
(P - 1)/P of its q, k, v and output slices of B * S/P tokens, which is
(P - 1)/P * B * (S/P) * H * D * (s_q + s_k + s_v + s_out) bytes. A graph meets
it when it has no other exchange and P divides S (no padding tokens).
"""

import dataclasses
import logging
from typing import Dict, List, Mapping, Optional, Tuple

import sympy
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..ops.collectives import ulysses_all_to_all
from .attention_match import SELF_ATTENTION
from .meta import META_KEY, provenance
from .ulysses_all_to_all import HEAD_DIM, SEQUENCE_DIM

logger = logging.getLogger(__name__)

# graph_module.meta key of the CommunicationCost that the pass attaches.
COST_KEY = "communication_cost"

BATCH = sympy.Symbol("B", positive=True, integer=True)
SEQUENCE = sympy.Symbol("S", positive=True, integer=True)
DEGREE = sympy.Symbol("P", positive=True, integer=True)
HEADS = sympy.Symbol("H", positive=True, integer=True)
HEAD_SIZE = sympy.Symbol("D", positive=True, integer=True)
HEAD_OUTPUT_CHANNELS = sympy.Symbol("C_out", positive=True, integer=True)
HEAD_OUTPUT_ELEMENT_SIZE = sympy.Symbol("s_head", positive=True, integer=True)

# Roles that UlyssesAllToAllPass records, in the order the lower bound lists them.
EXCHANGED_ROLES = ("q", "k", "v", "out")

# Tokens on each rank after padding S to a multiple of P.
LOCAL_TOKENS = sympy.ceiling(SEQUENCE / DEGREE)

# Calls that communicate but have no formula here, by target name -> why.
UNMODELED_CALLS = {
    "ring_attention": "ring attention passes key and value blocks around the "
                      "ring, which this model does not count",
}


def element_size_symbol(role: str) -> sympy.Symbol:
    """Return ``s_<role>``, the bytes per element of the tensor exchanged for ``role``."""
    return sympy.Symbol(f"s_{role}", positive=True, integer=True)


@dataclasses.dataclass(frozen=True)
class CollectiveTerm:
    """One collective call and the bytes it moves for one rank.

    Attributes:
        node: name of the call's node in the graph.
        role: the tensor it exchanges ("q", "k", "v" or "out").
        input_shape: symbolic shape of the local input.
        element_size: symbol of the input's bytes per element.
        bytes_sent: bytes this rank sends to other ranks.
        bytes_received: bytes this rank receives from other ranks.
    """

    node: str
    role: str
    input_shape: Tuple[sympy.Expr, ...]
    element_size: sympy.Symbol
    bytes_sent: sympy.Expr
    bytes_received: sympy.Expr


@dataclasses.dataclass(frozen=True)
class CommunicationCost:
    """Bytes one rank sends and receives in one call of a rewritten graph.

    Attributes:
        terms: one entry per collective the pass understood.
        unsupported: node name -> why its bytes are unknown; when not empty,
            ``bytes_sent`` and ``bytes_received`` leave those nodes out.
        self_attention_calls: self-attention calls in the graph.
        bytes_sent: sum of the terms' bytes sent.
        bytes_received: sum of the terms' bytes received.
        lower_bound: the Ulysses lower bound of the bytes sent, summed over
            the self-attention calls; zero without any.
    """

    terms: Tuple[CollectiveTerm, ...]
    unsupported: Dict[str, str]
    self_attention_calls: int
    bytes_sent: sympy.Expr
    bytes_received: sympy.Expr
    lower_bound: sympy.Expr

    @property
    def complete(self) -> bool:
        return not self.unsupported

    @property
    def symbols(self) -> List[sympy.Symbol]:
        expressions = (self.bytes_sent, self.bytes_received, self.lower_bound)
        found = set().union(*(expression.free_symbols for expression in expressions))
        return sorted(found, key=lambda symbol: symbol.name)

    def evaluate(self, values: Mapping[sympy.Symbol, int]) -> "CostValue":
        """Substitute ``values`` (symbol -> int) into the expressions.

        Raises:
            ValueError: a symbol of the expressions has no value; the message
                lists the missing ones.
        """
        missing = [symbol.name for symbol in self.symbols if symbol not in values]
        if missing:
            raise ValueError(
                f"cannot evaluate the communication cost: no value for "
                f"{', '.join(missing)}")
        return CostValue(
            bytes_sent=sympy.nsimplify(self.bytes_sent.subs(values)),
            bytes_received=sympy.nsimplify(self.bytes_received.subs(values)),
            lower_bound=sympy.nsimplify(self.lower_bound.subs(values)))


@dataclasses.dataclass(frozen=True)
class CostValue:
    """A ``CommunicationCost`` evaluated at concrete sizes (exact sympy numbers)."""

    bytes_sent: sympy.Expr
    bytes_received: sympy.Expr
    lower_bound: sympy.Expr

    @property
    def meets_lower_bound(self) -> bool:
        return self.bytes_sent == self.lower_bound

    @property
    def excess(self) -> sympy.Expr:
        return self.bytes_sent - self.lower_bound


def all_to_all_bytes(elements: sympy.Expr, element_size: sympy.Expr,
                     world_size: sympy.Expr = DEGREE) -> sympy.Expr:
    """Bytes one rank sends (and receives) in an all_to_all of ``elements`` local elements."""
    return (world_size - 1) * elements * element_size / world_size


def all_gather_bytes(elements: sympy.Expr, element_size: sympy.Expr,
                     world_size: sympy.Expr = DEGREE) -> sympy.Expr:
    """Bytes one rank sends (and receives) in an all_gather of ``elements`` local elements."""
    return (world_size - 1) * elements * element_size


def head_all_gather_cost() -> sympy.Expr:
    """Bytes per rank of the all_gather after the DiT head (``SequenceShardHooks``).

    Each rank gathers the head outputs ``[B, ceiling(S/P), C_out]`` of all ranks.
    """
    elements = BATCH * LOCAL_TOKENS * HEAD_OUTPUT_CHANNELS
    return all_gather_bytes(elements, HEAD_OUTPUT_ELEMENT_SIZE)


def ulysses_lower_bound(roles=EXCHANGED_ROLES) -> sympy.Expr:
    """Return the minimum bytes one rank sends in one self-attention call under Ulysses."""
    element_sizes = sum(element_size_symbol(role) for role in roles)
    unpadded_elements = BATCH * (SEQUENCE / DEGREE) * HEADS * HEAD_SIZE
    return all_to_all_bytes(unpadded_elements, element_sizes)


def exchanged_input_shape(scatter_dim: int, gather_dim: int
                          ) -> Optional[Tuple[sympy.Expr, ...]]:
    """Return the symbolic local input shape of a Ulysses all_to_all, or None.

    None when the dims are not one of the two exchanges of Wan's layout
    ``[B, S, H, D]``.
    """
    if (scatter_dim, gather_dim) == (HEAD_DIM, SEQUENCE_DIM):
        return (BATCH, LOCAL_TOKENS, HEADS, HEAD_SIZE)
    if (scatter_dim, gather_dim) == (SEQUENCE_DIM, HEAD_DIM):
        return (BATCH, DEGREE * LOCAL_TOKENS, HEADS / DEGREE, HEAD_SIZE)
    return None


def _collective_term(node: fx.Node) -> Tuple[Optional[CollectiveTerm], str]:
    info = provenance(node)
    scatter_dim = node.kwargs.get("scatter_dim")
    gather_dim = node.kwargs.get("gather_dim")
    shape = exchanged_input_shape(scatter_dim, gather_dim)
    if shape is None:
        return None, (f"scatter_dim={scatter_dim}, gather_dim={gather_dim} is not "
                      "an exchange of Wan's [B, S, H, D] layout")
    role = info.get("role")
    if role is None:
        return None, "no role recorded in node.meta (not made by UlyssesAllToAllPass?)"

    element_size = element_size_symbol(role)
    elements = sympy.Mul(*shape)
    sent = all_to_all_bytes(elements, element_size)
    return CollectiveTerm(node.name, role, shape, element_size, sent, sent), ""


def _count_self_attention(graph: fx.Graph) -> int:
    return sum(provenance(node).get("attention") == SELF_ATTENTION
               for node in graph.nodes if node.op == "call_function")


def analyze_communication(graph_module: fx.GraphModule) -> CommunicationCost:
    """Return the communication cost of one call of ``graph_module``."""
    terms, unsupported = [], {}
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        unmodeled = UNMODELED_CALLS.get(getattr(node.target, "__name__", ""))
        if unmodeled is not None:
            unsupported[node.name] = unmodeled
        if node.target is not ulysses_all_to_all:
            continue
        term, reason = _collective_term(node)
        if term is None:
            unsupported[node.name] = reason
        else:
            terms.append(term)

    self_attention_calls = _count_self_attention(graph_module.graph)
    has_exchange = bool(terms) or bool(unsupported)
    lower_bound = (self_attention_calls * ulysses_lower_bound()
                   if has_exchange else sympy.Integer(0))
    return CommunicationCost(
        terms=tuple(terms),
        unsupported=unsupported,
        self_attention_calls=self_attention_calls,
        bytes_sent=sympy.factor(sum((term.bytes_sent for term in terms), sympy.Integer(0))),
        bytes_received=sympy.factor(
            sum((term.bytes_received for term in terms), sympy.Integer(0))),
        lower_bound=sympy.factor(lower_bound))


def communication_cost(graph_module: fx.GraphModule) -> CommunicationCost:
    """Return the cost that ``CommunicationCostPass`` attached, computing it if missing."""
    attached = graph_module.meta.get(META_KEY, {}).get(COST_KEY)
    if attached is None:
        attached = analyze_communication(graph_module)
    return attached


class CommunicationCostPass(PassBase):
    """Attach ``CommunicationCost`` to ``graph_module.meta["lite_boost"]["communication_cost"]``.

    An analysis pass: it never changes the graph, so it always reports
    ``modified=False``. Running it again replaces the attached cost.
    """

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        cost = analyze_communication(graph_module)
        graph_module.meta.setdefault(META_KEY, {})[COST_KEY] = cost
        for name, reason in cost.unsupported.items():
            logger.debug("no byte count for %s: %s", name, reason)
        logger.debug("bytes sent per rank per call: %s", cost.bytes_sent)
        return PassResult(graph_module, False)
