"""Build the report of what lite_boost did to a pipeline or WanModel.

``inspect(target)`` reads the records that patching left on the target: the
graphs before and after the passes, their provenance, the communication cost
and, after the first forward, the recorded shapes. It returns an
``InspectionReport``, changes nothing and runs no collective.
"""

import collections
import dataclasses
from typing import Dict, List, Optional

import sympy
import torch

from ..model.adapters import PATCH_ATTRIBUTE as PIPELINE_PATCH_ATTRIBUTE
from ..model.adapters import SUPPORTED_TYPES, find_adapter
from ..model.dit import PATCH_ATTRIBUTE as DIT_PATCH_ATTRIBUTE
from ..parallel.state import get_state, is_initialized
from ..passes import communication_cost as cost_model
from .first_call import RECORDER_ATTRIBUTE, FirstCall, recorded_first_call
from .graph_report import GraphReport, build_graph_report, model_sizes


def format_number(value: Optional[sympy.Expr]) -> str:
    """Return ``"73,728"`` for an integer and ``"72,192.67"`` for a fraction."""
    if value is None:
        return "unknown"
    if sympy.sympify(value).is_integer:
        return f"{int(value):,}"
    return f"{float(value):,.2f}"


def _json_number(value: Optional[sympy.Expr]):
    if value is None:
        return None
    if sympy.sympify(value).is_integer:
        return int(value)
    return str(value)  # an exact fraction such as "96256/3"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _grouped_sum(expressions: List[sympy.Expr]) -> str:
    """Write a sum of repeated terms as ``"2 x (term)"``, in first-seen order."""
    counts = collections.Counter(expressions)
    parts = []
    for expression, count in counts.items():
        if expression == 0:
            continue
        parts.append(f"{count} x ({expression})" if count > 1 else str(expression))
    return " + ".join(parts) or "0"


@dataclasses.dataclass
class ModelReport:
    """One patched WanModel.

    Attributes:
        label: the model's pipeline attribute ("model", "low_noise_model",
            ...), or "" for a WanModel patched by itself.
        class_name: the model's class, "WanModel".
        blocks: number of attention blocks.
        world_size: processes in the run.
        ulysses_degree: P, the ranks that split one sequence.
        kernel: the attention kernel the graphs call.
        graphs: qualified module name -> its GraphReport.
        first_call: sizes recorded at the first forward, or None before it.
        gathers_after_head: whether SequenceShardHooks all-gather the head's
            output (Ulysses degree above 1).
        sizes: symbol -> size at the first forward, for the cost formulas.
        recording: whether a FirstCallRecorder was installed at patch time.
        ring_degree, cfg_degree: the other parallel degrees the model was
            patched for (1 when unused).
        plan_reason: why those degrees, from the planner or the caller.
    """

    label: str
    class_name: str
    blocks: int
    world_size: int
    ulysses_degree: int
    kernel: str
    graphs: Dict[str, GraphReport]
    first_call: Optional[FirstCall]
    gathers_after_head: bool
    sizes: Optional[Dict[sympy.Symbol, int]]
    recording: bool = True
    ring_degree: int = 1
    cfg_degree: int = 1
    plan_reason: str = ""

    @property
    def title(self) -> str:
        return f"{self.class_name} '{self.label}'" if self.label else self.class_name

    @property
    def self_attention_rewritten(self) -> int:
        """Self-attention graphs that exchange q, k, v and the output."""
        return sum(graph.attention == "self" and graph.all_to_all > 0
                   for graph in self.graphs.values())

    @property
    def cross_attention_touched(self) -> int:
        """Cross-attention graphs that contain a collective (0 is expected)."""
        return sum(graph.attention == "cross" and graph.collectives > 0
                   for graph in self.graphs.values())

    @property
    def all_to_all_per_forward(self) -> int:
        return sum(graph.all_to_all for graph in self.graphs.values())

    @property
    def sequence_degree(self) -> int:
        """Ranks that split one sequence: the Ulysses degree times the ring degree."""
        return self.ulysses_degree * self.ring_degree

    @property
    def local_tokens(self) -> Optional[int]:
        if self.first_call is None:
            return None
        return -(-self.first_call.sequence_length // self.sequence_degree)

    @property
    def padding_tokens(self) -> Optional[int]:
        if self.sequence_degree == 1:
            return 0
        if self.first_call is None:
            return None
        return self.local_tokens * self.sequence_degree - self.first_call.sequence_length

    @property
    def all_to_all_formula(self) -> str:
        return _grouped_sum([graph.cost.bytes_sent for graph in self.graphs.values()])

    @property
    def lower_bound_formula(self) -> str:
        return _grouped_sum([graph.cost.lower_bound for graph in self.graphs.values()])

    @property
    def head_formula(self) -> Optional[sympy.Expr]:
        """Bytes of the all_gather after the head; None when not modeled (ring)."""
        if not self.gathers_after_head:
            return sympy.Integer(0)
        if self.ring_degree > 1:
            return None  # the gather spans Ulysses and ring ranks; P is only Ulysses
        return cost_model.head_all_gather_cost()

    def _sum_graph_values(self, field: str) -> Optional[sympy.Expr]:
        values = [graph.cost_value for graph in self.graphs.values()]
        if any(value is None for value in values):
            return None
        return sum((getattr(value, field) for value in values), sympy.Integer(0))

    @property
    def all_to_all_bytes(self) -> Optional[sympy.Expr]:
        """Bytes one rank sends (and receives) through all_to_all per forward."""
        return self._sum_graph_values("bytes_sent")

    @property
    def lower_bound_bytes(self) -> Optional[sympy.Expr]:
        return self._sum_graph_values("lower_bound")

    @property
    def head_bytes(self) -> Optional[sympy.Expr]:
        """Bytes one rank sends (and receives) in the all_gather after the head."""
        formula = self.head_formula
        if formula is None or formula == 0:
            return formula
        if self.sizes is None or cost_model.HEAD_OUTPUT_CHANNELS not in self.sizes:
            return None
        return sympy.nsimplify(formula.subs(self.sizes))

    @property
    def bytes_per_forward(self) -> Optional[sympy.Expr]:
        if self.all_to_all_bytes is None or self.head_bytes is None:
            return None
        return self.all_to_all_bytes + self.head_bytes

    def summary_line(self) -> str:
        padding = self.padding_tokens
        if padding is None:
            padding_text = "padding known after the first forward"
        else:
            padding_text = f"padding {_plural(padding, 'token')}"
        return (f"{self.title}: {self.blocks} blocks, {self.self_attention_rewritten} "
                f"self-attention rewritten, {self.cross_attention_touched} "
                f"cross-attention touched, {self.all_to_all_per_forward} all_to_all "
                f"per forward, world size {self.world_size}, {padding_text}")

    def _first_call_line(self) -> str:
        if self.first_call is None and not self.recording:
            return ("  first forward: not recorded, because the model was patched "
                    "without setup_model() or ParallelManager()")
        if self.first_call is None:
            return ("  first forward: not yet run (shapes, padding and byte counts "
                    "appear after it)")
        return (f"  first forward: B={self.first_call.batch}, "
                f"S={self.first_call.sequence_length} tokens, "
                f"{self.local_tokens} per rank, H={self.sizes[cost_model.HEADS]}, "
                f"D={self.sizes[cost_model.HEAD_SIZE]}, input "
                f"{str(self.first_call.block_input.dtype).replace('torch.', '')}")

    def _cost_lines(self) -> List[str]:
        if self.sequence_degree == 1:
            return ["  no collectives in the graphs: every rank has the whole sequence"]
        head = "not modeled" if self.head_formula is None else str(self.head_formula)
        lines = [
            "  bytes per rank per forward, sent = received:",
            f"    all_to_all: {self.all_to_all_formula} = "
            f"{format_number(self.all_to_all_bytes)}",
            f"    head all_gather: {head} = {format_number(self.head_bytes)}",
            f"  Ulysses lower bound for the all_to_all: {self.lower_bound_formula} = "
            f"{format_number(self.lower_bound_bytes)}",
        ]
        for graph in self.graphs.values():
            for node, reason in graph.cost.unsupported.items():
                lines.append(f"    {graph.name}: no byte count for {node}: {reason}")
                break
        if self.all_to_all_bytes is not None:
            excess = self.all_to_all_bytes - self.lower_bound_bytes
            if excess == 0:
                lines.append("    the graphs meet the bound")
            elif self.padding_tokens:
                tokens = _plural(self.padding_tokens, "padding token")
                lines.append(f"    the graphs exceed it by {format_number(excess)} bytes, "
                             f"the share of {tokens}")
            else:
                lines.append(f"    the graphs exceed it by {format_number(excess)} bytes")
        return lines

    def describe(self) -> str:
        degrees = f"Ulysses degree {self.ulysses_degree}"
        if self.ring_degree > 1 or self.cfg_degree > 1:
            degrees += f", ring degree {self.ring_degree}, CFG degree {self.cfg_degree}"
        lines = [self.summary_line(),
                 f"  {len(self.graphs)} attention graphs call {self.kernel}; {degrees}"]
        if self.plan_reason:
            lines.append(f"  degrees (cfg, ulysses, ring) = ({self.cfg_degree}, "
                         f"{self.ulysses_degree}, {self.ring_degree}): {self.plan_reason}")
        lines += [self._first_call_line(), *self._cost_lines()]
        warnings = [text for graph in self.graphs.values() for text in graph.warnings]
        lines += [f"  WARNING: {text}" for text in warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        first_call = None
        if self.first_call is not None:
            first_call = {
                "batch": self.first_call.batch,
                "sequence_length": self.first_call.sequence_length,
                "block_input": {"shape": list(self.first_call.block_input.shape),
                                "dtype": str(self.first_call.block_input.dtype)},
                "head_output": None if self.first_call.head_output is None else {
                    "shape": list(self.first_call.head_output.shape),
                    "dtype": str(self.first_call.head_output.dtype)},
            }
        return {
            "label": self.label,
            "class": self.class_name,
            "blocks": self.blocks,
            "world_size": self.world_size,
            "ulysses_degree": self.ulysses_degree,
            "ring_degree": self.ring_degree,
            "cfg_degree": self.cfg_degree,
            "plan_reason": self.plan_reason,
            "kernel": self.kernel,
            "self_attention_rewritten": self.self_attention_rewritten,
            "cross_attention_touched": self.cross_attention_touched,
            "all_to_all_per_forward": self.all_to_all_per_forward,
            "padding_tokens": self.padding_tokens,
            "first_call": first_call,
            "bytes_per_forward": {
                "all_to_all_formula": self.all_to_all_formula,
                "all_to_all": _json_number(self.all_to_all_bytes),
                "head_all_gather_formula": (None if self.head_formula is None
                                            else str(self.head_formula)),
                "head_all_gather": _json_number(self.head_bytes),
                "total": _json_number(self.bytes_per_forward),
                "lower_bound_formula": self.lower_bound_formula,
                "lower_bound": _json_number(self.lower_bound_bytes),
            },
            "graphs": {name: _graph_dict(graph) for name, graph in self.graphs.items()},
        }


def _graph_dict(graph: GraphReport) -> dict:
    value = graph.cost_value
    return {
        "attention": graph.attention,
        "all_to_all": graph.all_to_all,
        "node_counts": graph.counts,
        "changes": [dataclasses.asdict(change) for change in graph.changes],
        "bytes_sent_formula": str(graph.cost.bytes_sent),
        "bytes_received_formula": str(graph.cost.bytes_received),
        "lower_bound_formula": str(graph.cost.lower_bound),
        "bytes_sent": None if value is None else _json_number(value.bytes_sent),
        "bytes_received": None if value is None else _json_number(value.bytes_received),
        "lower_bound": None if value is None else _json_number(value.lower_bound),
        "unsupported_collectives": graph.cost.unsupported,
        "warnings": graph.warnings,
    }


@dataclasses.dataclass
class InspectionReport:
    """Report of what lite_boost rewrote in one target, from ``lite_boost.inspect``.

    Attributes:
        target_type: the inspected object's class name.
        rank: this process's rank; the shapes are of this rank's slice.
        models: model label -> its report ("" for a WanModel patched by itself).
        message: why there is nothing to inspect, or None.
    """

    target_type: str
    rank: int
    models: Dict[str, ModelReport]
    message: Optional[str] = None

    @property
    def patched(self) -> bool:
        return bool(self.models)

    def graph(self, name: str, model: Optional[str] = None) -> GraphReport:
        """Return the report of graph ``name`` ("blocks.0.self_attn").

        ``model`` names the pipeline attribute; it may be left out when the
        target has one patched model.

        Raises:
            KeyError: no such model or graph; the message lists valid names.
        """
        if model is None:
            if len(self.models) != 1:
                raise KeyError(
                    f"{self.target_type} has {len(self.models)} patched models; pass "
                    f"model= one of {list(self.models)}")
            model = next(iter(self.models))
        if model not in self.models:
            raise KeyError(f"no patched model {model!r}; valid: {list(self.models)}")
        graphs = self.models[model].graphs
        if name not in graphs:
            raise KeyError(f"no graph {name!r}; valid: {', '.join(list(graphs)[:4])}, ...")
        return graphs[name]

    def __str__(self) -> str:
        if not self.patched:
            return self.message
        return "\n".join(model.describe() for model in self.models.values())

    def to_dict(self) -> dict:
        return {
            "target": self.target_type,
            "rank": self.rank,
            "message": self.message,
            "models": {label: model.to_dict() for label, model in self.models.items()},
        }

    def write(self, directory: str) -> List[str]:
        """Write the dump files under ``directory``; return the paths written.

        Rank 0 writes. Another rank writes, under ``rank<N>/``, only when
        its graphs' code differs from rank 0's. See ``lite_boost.inspection.dump``.
        """
        from .dump import write_dump

        return write_dump(self, directory)


def _not_patched_message(target: object) -> str:
    type_name = type(target).__name__
    try:
        find_adapter(target)
    except RuntimeError:
        return (f"lite_boost.inspect: nothing to inspect in an object of type "
                f"{type(target).__module__}.{type(target).__qualname__}; lite_boost "
                f"patches {', '.join(SUPPORTED_TYPES)} (from the wan package)")
    return (f"lite_boost.inspect: this {type_name} is not patched by lite_boost, so "
            f"no graph was rewritten. Call initialize_usp() and "
            f"ParallelManager() on it first, then inspect it again.")


def _patched_models(target: object) -> Dict[str, torch.nn.Module]:
    attributes = vars(target) if hasattr(target, "__dict__") else {}
    pipeline_patch = attributes.get(PIPELINE_PATCH_ATTRIBUTE)
    if pipeline_patch is not None:
        return {label: model for label, model in pipeline_patch.dit_models.items()
                if DIT_PATCH_ATTRIBUTE in vars(model)}
    if DIT_PATCH_ATTRIBUTE in attributes:
        return {"": target}
    return {}


def _world_size(degree: int) -> int:
    return get_state().world_size if is_initialized() else degree


def build_model_report(label: str, model: torch.nn.Module) -> ModelReport:
    patch = vars(model)[DIT_PATCH_ATTRIBUTE]
    first_call = recorded_first_call(model)
    sizes = None
    if first_call is not None:
        sizes = model_sizes(model, patch.ulysses_degree, first_call)
    graphs = {
        name: build_graph_report(name, patch.originals[name], rewritten, sizes)
        for name, rewritten in patch.graphs.items()
    }
    return ModelReport(
        label=label, class_name=type(model).__name__, blocks=len(model.blocks),
        world_size=_world_size(patch.ulysses_degree), ulysses_degree=patch.ulysses_degree,
        kernel=patch.kernel, graphs=graphs, first_call=first_call,
        gathers_after_head=patch.hooks is not None, sizes=sizes,
        recording=RECORDER_ATTRIBUTE in vars(model),
        ring_degree=getattr(patch, "ring_degree", 1),
        cfg_degree=getattr(patch, "cfg_degree", 1),
        plan_reason=getattr(patch, "plan_reason", ""))


def inspect(target: object) -> InspectionReport:
    """Report what lite_boost rewrote in a pipeline or WanModel.

    Works on any object. An unpatched or unsupported one gives a report with
    no models, and its ``message`` (also ``str()``) gives the reason.

    Example::

        report = lite_boost.inspect(pipe)
        print(report)                                   # one summary per DiT
        print(report.graph("blocks.0.self_attn").diff)  # what the passes changed
        report.write("lite_boost_dump")
    """
    rank = get_state().rank if is_initialized() else 0
    models = _patched_models(target)
    if not models:
        return InspectionReport(type(target).__name__, rank, {},
                                message=_not_patched_message(target))
    reports = {label: build_model_report(label, model) for label, model in models.items()}
    return InspectionReport(type(target).__name__, rank, reports)
