"""Record the shapes and dtypes of a patched WanModel's first forward, once.

``FirstCallRecorder`` registers one-shot hooks on the model. At the model's
first forward they record:

- the batch size and the sequence length S that enters the first block,
  before ``SequenceShardHooks`` pads and slices it;
- the shape and dtype of every node of every rewritten attention graph, on
  this rank's slice. The first call of each graph runs through
  ``ShapeRecorder``, an ``fx.Interpreter`` that executes the same nodes,
  collectives included, and stores ``node.meta["tensor_meta"]`` as
  ``torch.fx.passes.shape_prop.ShapeProp`` does;
- the shape and dtype of the DiT head's local output, the input of the
  all_gather after the head.

Each hook removes itself after its first call, and each attention module gets
back the very forward that ``patch_dit`` installed. Later forwards run with no
hook and no interpreter, so they cost nothing extra.
"""

import dataclasses
import logging
from typing import Callable, List, Optional

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.utils.hooks import RemovableHandle

from ..model.dit import PATCH_ATTRIBUTE

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    shape: tuple
    dtype: torch.dtype

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorSpec":
        return cls(tuple(tensor.shape), tensor.dtype)


@dataclasses.dataclass
class FirstCall:
    """Sizes recorded at the first forward of a patched WanModel.

    Attributes:
        batch: B of the tokens ``[B, S, C]`` entering the first block.
        sequence_length: S, the tokens entering the first block (Wan's
            ``seq_len``), before lite_boost pads it to a multiple of P.
        block_input: the first block's input before sharding.
        head_output: the DiT head's output on this rank, before the
            all_gather; None when the head was not reached.
        graphs_recorded: names of the attention graphs whose nodes carry
            ``tensor_meta`` from this call.
    """

    batch: int
    sequence_length: int
    block_input: TensorSpec
    head_output: Optional[TensorSpec] = None
    graphs_recorded: List[str] = dataclasses.field(default_factory=list)


class ShapeRecorder(fx.Interpreter):
    """Run a GraphModule node by node and store each result's ``tensor_meta``.

    The results and exceptions are those of the compiled forward: the same
    nodes run in the same order.
    """

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            node.meta["tensor_meta"] = _extract_tensor_metadata(result)
        return result


def tensor_meta(node: fx.Node) -> Optional[TensorMetadata]:
    meta = node.meta.get("tensor_meta")
    return meta if isinstance(meta, TensorMetadata) else None


def _placeholder_arguments(graph_module: fx.GraphModule, args: tuple,
                           kwargs: dict) -> list:
    """Order ``args`` and ``kwargs`` like the graph's placeholders."""
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    ordered = list(args)
    for node in placeholders[len(args):]:
        if node.target in kwargs:
            ordered.append(kwargs[node.target])
        elif node.args:
            ordered.append(node.args[0])  # the placeholder's default value
        else:
            raise TypeError(
                f"{graph_module.__class__.__name__}.forward() missing argument "
                f"{node.target!r}")
    return ordered


# Where a patched WanModel keeps its FirstCallRecorder: a plain attribute, as
# dit.PATCH_ATTRIBUTE, so state_dict() and named_modules() never see it.
RECORDER_ATTRIBUTE = "_lite_boost_first_call"


class FirstCallRecorder:
    """One-shot hooks that fill a ``FirstCall`` at a patched model's first forward.

    A forward that raises records nothing: the hooks stay and record the next
    one.

    Args:
        model: a WanModel patched by ``patch_dit``.
        on_complete: called with this recorder after the first forward
            returns, for the INFO summary and the dump refresh. An exception
            it raises is logged, never passed to the caller of the forward.
    """

    def __init__(self, model: torch.nn.Module,
                 on_complete: Optional[Callable[["FirstCallRecorder"], None]] = None):
        self.model = model
        self.patch = vars(model)[PATCH_ATTRIBUTE]
        self.on_complete = on_complete
        self.first_call: Optional[FirstCall] = None
        self.handles: List[RemovableHandle] = []

        # prepend=True: these hooks see the unsharded block input and the head
        # output before SequenceShardHooks slice or gather them.
        self.handles.append(model.register_forward_pre_hook(
            self._on_model_call, prepend=True))
        self.handles.append(model.register_forward_hook(self._on_model_return))
        if len(model.blocks) > 0:
            self.handles.append(model.blocks[0].register_forward_pre_hook(
                self._on_first_block, prepend=True))
        self.handles.append(model.head.register_forward_hook(
            self._on_head_return, prepend=True))

    @property
    def done(self) -> bool:
        return not self.handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _still_patched(self) -> bool:
        return vars(self.model).get(PATCH_ATTRIBUTE) is self.patch

    def _on_model_call(self, model, args):
        if not self._still_patched():
            self.remove()
            return None
        self.first_call = None
        for name, graph_module in self.patch.graphs.items():
            self._record_next_call(model.get_submodule(name), name, graph_module)
        return None

    def _record_next_call(self, module: torch.nn.Module, name: str,
                          graph_module: fx.GraphModule) -> None:
        # Module.__call__ reads the module's forward before the module's own
        # hooks run, so the recording forward is put in place from the
        # model's pre-hook. It restores the compiled forward before it runs.
        compiled = vars(module).get("forward")
        if compiled != graph_module.forward:
            return  # restored, or still waiting from a forward that raised

        def record_shapes(*args, **kwargs):
            module.forward = compiled
            result = ShapeRecorder(graph_module).run(
                *_placeholder_arguments(graph_module, args, kwargs))
            if self.first_call is not None:
                self.first_call.graphs_recorded.append(name)
            return result

        module.forward = record_shapes

    def _on_first_block(self, block, args):
        x = args[0]
        self.first_call = FirstCall(
            batch=x.size(0), sequence_length=x.size(1),
            block_input=TensorSpec.of(x))
        return None

    def _on_head_return(self, head, args, output):
        if self.first_call is not None and isinstance(output, torch.Tensor):
            self.first_call.head_output = TensorSpec.of(output)
        return None

    def _on_model_return(self, model, args, output):
        self.remove()
        if self.first_call is None or self.on_complete is None:
            return None
        try:
            self.on_complete(self)
        except Exception:  # an error in the report is logged, not raised into the forward
            logger.exception("lite_boost could not report the first forward of %s",
                             type(model).__name__)
        return None


def install_recorder(model: torch.nn.Module,
                     on_complete: Optional[Callable[[FirstCallRecorder], None]] = None
                     ) -> FirstCallRecorder:
    """Install a ``FirstCallRecorder`` on a patched model, replacing an older one."""
    previous = vars(model).get(RECORDER_ATTRIBUTE)
    if previous is not None:
        previous.remove()
    recorder = FirstCallRecorder(model, on_complete)
    vars(model)[RECORDER_ATTRIBUTE] = recorder
    return recorder


def recorded_first_call(model: torch.nn.Module) -> Optional[FirstCall]:
    """Return the model's ``FirstCall``, or None before its first forward."""
    recorder = vars(model).get(RECORDER_ATTRIBUTE)
    if recorder is None or recorder.patch is not vars(model).get(PATCH_ATTRIBUTE):
        return None
    return recorder.first_call if recorder.done else None
