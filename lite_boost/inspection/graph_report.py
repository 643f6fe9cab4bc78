"""The report of one rewritten attention graph: code, diff, node table, cost."""

import collections
import dataclasses
import functools
from typing import Dict, List, Optional, Tuple

import sympy
import torch
import torch.fx as fx

from ..ops.collectives import ulysses_all_to_all
from ..passes import communication_cost as cost_model
from ..passes.meta import provenance
from . import render
from .first_call import FirstCall, tensor_meta


@dataclasses.dataclass(frozen=True)
class NodeChange:
    """A node that a pass inserted or rewrote, as one row of the node table.

    ``input_shape`` is the first tensor argument's and ``output_shape`` the
    node's own, as recorded at the first forward ("" before it).
    """

    node: str
    pass_name: str
    op: str
    role: str
    replaces: str
    scatter_dim: Optional[int]
    gather_dim: Optional[int]
    group_size: Optional[int]
    input_shape: str
    output_shape: str

    HEADER = ("node", "pass", "op", "role", "replaces", "scatter_dim",
              "gather_dim", "group size", "input", "output")

    def row(self) -> Tuple[object, ...]:
        def cell(value):
            return "-" if value is None or value == "" else value

        return tuple(cell(value) for value in (
            self.node, self.pass_name, self.op, self.role, self.replaces,
            self.scatter_dim, self.gather_dim, self.group_size,
            self.input_shape, self.output_shape))


def _target_name(node: fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _first_tensor_argument(node: fx.Node) -> Optional[fx.Node]:
    for argument in node.args:
        if isinstance(argument, fx.Node):
            return argument
    return None


def node_changes(graph_module: fx.GraphModule) -> List[NodeChange]:
    """Return a row for every node whose provenance names the pass that made it."""
    rows = []
    for node in graph_module.graph.nodes:
        info = provenance(node)
        if "pass" not in info:
            continue
        rows.append(NodeChange(
            node=node.name, pass_name=info["pass"], op=_target_name(node),
            role=str(info.get("role") or info.get("attention") or ""),
            replaces=str(info.get("replaces", "")),
            scatter_dim=info.get("scatter_dim"), gather_dim=info.get("gather_dim"),
            group_size=info.get("world_size"),
            input_shape=render.format_tensor_meta(_first_tensor_argument(node)),
            output_shape=render.format_tensor_meta(node)))
    return rows


def node_counts(graph_module: fx.GraphModule) -> Dict[str, int]:
    """Count the graph's nodes by op, and call_function nodes also by target.

    Keys: "total", each op ("placeholder", "call_module", ...), and
    "call_function:<name>" such as "call_function:ulysses_all_to_all".
    """
    counts = collections.Counter()
    for node in graph_module.graph.nodes:
        counts["total"] += 1
        counts[node.op] += 1
        if node.op == "call_function":
            counts[f"call_function:{_target_name(node)}"] += 1
    return dict(counts)


def _attention_kind(graph_module: fx.GraphModule, name: str) -> str:
    for node in graph_module.graph.nodes:
        kind = provenance(node).get("attention")
        if kind:
            return kind
    return "self" if name.endswith("self_attn") else "cross"


@dataclasses.dataclass
class GraphReport:
    """One attention module's graph before and after the passes.

    Attributes:
        name: the module's qualified name, e.g. "blocks.0.self_attn".
        attention: "self" or "cross".
        traced: the graph as traced, before any pass.
        rewritten: the graph that now runs as the module's forward.
        changes: the nodes that passes inserted or rewrote.
        counts: node counts of the rewritten graph (see ``node_counts``).
        cost: bytes one rank sends and receives per call, symbolically.
        cost_value: ``cost`` at the first forward's sizes, or None before it.
        warnings: disagreements between the formula and the recorded shapes.
    """

    name: str
    attention: str
    traced: fx.GraphModule
    rewritten: fx.GraphModule
    changes: List[NodeChange]
    counts: Dict[str, int]
    cost: cost_model.CommunicationCost
    cost_value: Optional[cost_model.CostValue]
    warnings: List[str]

    @functools.cached_property
    def before_code(self) -> str:
        """``print_readable`` text of the traced graph."""
        return render.readable_code(self.traced)

    @functools.cached_property
    def after_code(self) -> str:
        """``print_readable`` text of the rewritten graph, with shapes after the first forward."""
        return render.readable_code(self.rewritten)

    @functools.cached_property
    def diff(self) -> str:
        """Unified diff of the two graphs' code."""
        return render.unified_diff(self.traced, self.rewritten, self.name)

    @property
    def all_to_all(self) -> int:
        return self.counts.get(f"call_function:{ulysses_all_to_all.__name__}", 0)

    @property
    def collectives(self) -> int:
        """Collective calls: the all_to_all nodes and the calls the cost model skips."""
        return self.all_to_all + len(self.cost.unsupported)

    @property
    def shapes_recorded(self) -> bool:
        return any(tensor_meta(node) is not None for node in self.rewritten.graph.nodes)

    def table(self) -> str:
        return "\n".join(render.table_lines(
            NodeChange.HEADER, [change.row() for change in self.changes]))

    def __str__(self) -> str:
        return f"{self.name} ({self.attention}-attention)\n{self.table()}\n\n{self.diff}"


def model_sizes(model: torch.nn.Module, degree: int,
                 first_call: FirstCall) -> Dict[sympy.Symbol, int]:
    sizes = {
        cost_model.BATCH: first_call.batch,
        cost_model.SEQUENCE: first_call.sequence_length,
        cost_model.DEGREE: degree,
        cost_model.HEADS: model.num_heads,
        cost_model.HEAD_SIZE: model.dim // model.num_heads,
    }
    if first_call.head_output is not None:
        sizes[cost_model.HEAD_OUTPUT_CHANNELS] = first_call.head_output.shape[-1]
        sizes[cost_model.HEAD_OUTPUT_ELEMENT_SIZE] = first_call.head_output.dtype.itemsize
    return sizes


def _evaluate_graph_cost(graph_module: fx.GraphModule, cost: cost_model.CommunicationCost,
                         sizes: Dict[sympy.Symbol, int]
                         ) -> Tuple[Optional[cost_model.CostValue], List[str]]:
    """Evaluate ``cost`` with each exchanged tensor's recorded element size.

    Also compares each recorded input shape with the formula's, so a report
    never shows a value that the recorded run contradicts without saying so.
    """
    nodes = {node.name: node for node in graph_module.graph.nodes}
    values = dict(sizes)
    warnings = []
    for term in cost.terms:
        source = _first_tensor_argument(nodes[term.node])
        meta = tensor_meta(source) if source is not None else None
        if meta is None:
            return None, warnings
        values[term.element_size] = meta.dtype.itemsize
        expected = tuple(sympy.sympify(size).subs(values) for size in term.input_shape)
        if expected != tuple(meta.shape):
            warnings.append(
                f"{term.node}: recorded input shape {list(meta.shape)} differs from "
                f"the formula's {[str(size) for size in expected]}")
    if not cost.terms and cost.lower_bound == 0:
        return cost.evaluate({}), warnings
    # A graph with an unsupported exchange has a lower bound with element
    # sizes of roles it could not name; it has no exact value.
    if not cost.complete:
        return None, warnings
    return cost.evaluate(values), warnings


def build_graph_report(name: str, traced: fx.GraphModule, rewritten: fx.GraphModule,
                       sizes: Optional[Dict[sympy.Symbol, int]]) -> GraphReport:
    cost = cost_model.communication_cost(rewritten)
    cost_value, warnings = None, []
    if sizes is not None:
        cost_value, warnings = _evaluate_graph_cost(rewritten, cost, sizes)
    return GraphReport(
        name=name, attention=_attention_kind(rewritten, name), traced=traced,
        rewritten=rewritten, changes=node_changes(rewritten),
        counts=node_counts(rewritten), cost=cost,
        cost_value=cost_value, warnings=warnings)
