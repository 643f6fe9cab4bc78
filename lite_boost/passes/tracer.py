"""Symbolic tracing of Wan's attention modules.

The traced unit is the attention module (``WanSelfAttention`` and
``WanCrossAttention``), not the whole ``WanAttentionBlock``, because:

- the block asserts on tensor dtypes, which symbolic tracing cannot evaluate;
- the block wraps its modulation steps in ``torch.amp.autocast`` blocks.
  Tracing would run them once at trace time and drop them from the graph, so
  a traced block would lose its fp32 regions under a bf16 pipeline;
- everything in the block outside attention works token by token, so it is
  already correct on a slice of the sequence and needs no rewrite.

The block therefore keeps running eagerly with its autocast regions intact,
and only the attention modules are replaced by rewritten graphs. The traced
graphs contain no autocast region: ``rope_apply`` (decorated with
``autocast(enabled=False)``) and the attention function stay leaf calls, so
they run with their own decorators.

Two things in Wan's code need help to trace:

- ``b, s, n, d = *x.shape[:2], ...`` iterates a Proxy. ``ShapeSliceProxy``
  computes the length of a constant slice of a shape and unpacks it.
- Submodules (``q``, ``k``, ``v``, ``o``, the RMS norms) are kept as
  ``call_module`` leaves, so the graph refers to the model's own module objects
  and never copies a weight.
"""

import operator
from typing import Callable, Iterator, Sequence

import torch
import torch.fx as fx


def _is_shape_node(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] == "shape"
    if node.op == "call_method" and node.target == "size":
        return len(node.args) == 1 and not node.kwargs
    return False


def _constant_slice_length(index: object) -> int:
    """Return the length of ``index`` when it does not depend on the rank.

    Returns -1 when the slice needs the tensor's rank to resolve (negative or
    open-ended bounds).
    """
    if not isinstance(index, slice):
        return -1
    start = 0 if index.start is None else index.start
    step = 1 if index.step is None else index.step
    bounds = (start, index.stop, step)
    if not all(isinstance(bound, int) for bound in bounds):
        return -1
    if start < 0 or index.stop < 0 or step <= 0:
        return -1
    return len(range(start, index.stop, step))


class ShapeSliceProxy(fx.Proxy):
    """A Proxy that can be unpacked when it is a constant slice of a shape."""

    def _shape_slice_length(self) -> int:
        node = self.node
        if node.op != "call_function" or node.target is not operator.getitem:
            return -1
        base, index = node.args
        if not (isinstance(base, fx.Node) and _is_shape_node(base)):
            return -1
        return _constant_slice_length(index)

    def __len__(self) -> int:
        # Python calls len() before it unpacks `*x.shape[:2]`.
        length = self._shape_slice_length()
        if length >= 0:
            return length
        return super().__len__()

    def __iter__(self) -> Iterator[fx.Proxy]:
        length = self._shape_slice_length()
        if length >= 0:
            return iter([self[i] for i in range(length)])
        return super().__iter__()


class WanAttentionTracer(fx.Tracer):
    """Trace one Wan attention module with its submodules as leaves.

    Args:
        leaf_functions: module-level functions of ``wan.modules.model`` to
            record as single ``call_function`` nodes (rope and attention).
    """

    def __init__(self, leaf_functions: Sequence[Callable]):
        super().__init__(autowrap_functions=tuple(leaf_functions))

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapeSliceProxy(node, self)

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return True


def wan_leaf_functions() -> tuple:
    """Return the functions of ``wan.modules.model`` that stay leaf calls.

    The attention function is read from ``wan.modules.model`` at call time, so
    a replacement bound there (as Wan's own CPU workarounds do) is recorded.
    """
    import wan.modules.model as wan_model

    return (wan_model.rope_apply, wan_model.flash_attention)


def trace_attention(module: torch.nn.Module) -> fx.GraphModule:
    """Trace a Wan attention module into a GraphModule that shares its weights.

    Example::

        gm = trace_attention(model.blocks[0].self_attn)
        gm.print_readable()
    """
    tracer = WanAttentionTracer(wan_leaf_functions())
    graph = tracer.trace(module)
    class_name = f"{type(module).__name__}Graph"
    return fx.GraphModule(module, graph, class_name=class_name)
