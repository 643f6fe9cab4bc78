"""Install Ulysses sequence parallelism on a ``WanModel``, and take it off again.

For every block, ``self_attn`` and ``cross_attn`` are traced, rewritten by the
pass pipeline and installed as the module's ``forward`` (an instance attribute,
so the class, the module tree and the ``state_dict`` stay Wan's own). With a
Ulysses degree above 1, ``SequenceShardHooks`` split the sequence before the
first block and gather it after the head.
"""

import dataclasses
import logging
import weakref
from typing import Dict, List, Optional

import torch
import torch.fx as fx

from ..ops.attention import select_attention_kernel
from ..parallel.state import ParallelState
from ..passes import attention_passes, run_passes, trace_attention
from .sequence_shard import SequenceShardHooks

logger = logging.getLogger(__name__)

# Patched models that are alive; the planner does not change the degrees
# under them.
_patched_models: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def has_patched_models() -> bool:
    return len(_patched_models) > 0


# Attribute name of a patched WanModel's record. It is a plain attribute, not a
# submodule, so state_dict(), named_modules() and .to() never see it.
PATCH_ATTRIBUTE = "_lite_boost_dit_patch"


@dataclasses.dataclass
class DitPatch:
    """What ``patch_dit`` installed on one WanModel.

    Attributes:
        graphs: qualified module name -> the rewritten GraphModule now serving
            as that module's forward, e.g. "blocks.0.self_attn".
        originals: qualified module name -> the graph as traced, before the
            passes ran (for reading and diffing).
        hooks: the sequence-sharding hooks, or None when one rank has the
            whole sequence.
        ulysses_degree, ring_degree, cfg_degree: the degrees the graphs and
            hooks were built for.
        plan_reason: why those degrees (the planner's or the caller's choice).
        kernel: name of the attention kernel the graphs call.
    """

    graphs: Dict[str, fx.GraphModule]
    originals: Dict[str, fx.GraphModule]
    hooks: Optional[SequenceShardHooks]
    ulysses_degree: int
    kernel: str
    ring_degree: int = 1
    cfg_degree: int = 1
    plan_reason: str = ""

    @property
    def sequence_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree


def valid_ulysses_degrees(num_heads: int, world_size: int) -> List[int]:
    return [d for d in range(1, world_size + 1)
            if num_heads % d == 0 and world_size % d == 0]


def check_dit_supported(model: torch.nn.Module, state: ParallelState) -> None:
    """Raise before any collective when ``model`` cannot run at this degree.

    Every rank runs the same check on the same model, so every rank raises.
    """
    num_heads = model.num_heads
    degree = state.ulysses_degree
    if num_heads % degree != 0:
        raise ValueError(
            f"{type(model).__name__} has num_heads={num_heads}, which is not "
            f"divisible by ulysses_degree={degree} (world size "
            f"{state.world_size}); Ulysses splits heads across ranks, so the "
            f"valid degrees for this model are "
            f"{valid_ulysses_degrees(num_heads, state.world_size)}")
    window_size = tuple(getattr(model, "window_size", (-1, -1)))
    if window_size != (-1, -1):
        raise NotImplementedError(
            f"{type(model).__name__} uses window_size={window_size}; lite_boost "
            "supports only global attention, window_size=(-1, -1)")


def _rewrite(module: torch.nn.Module, state: ParallelState, kernel,
             rope: Optional[str]) -> tuple:
    original = trace_attention(module)
    rewritten = trace_attention(module)
    rewritten.meta = {}
    run_passes(rewritten, attention_passes(state.ulysses_degree, kernel, rope=rope,
                                           ring_degree=state.ring_degree))
    return original, rewritten


def is_dit_patched(model: torch.nn.Module) -> bool:
    return PATCH_ATTRIBUTE in vars(model)


def patch_dit(model: torch.nn.Module, state: ParallelState,
              rope: Optional[str] = None) -> DitPatch:
    """Rewrite and install every attention module of ``model``; idempotent.

    ``rope="float32"`` replaces Wan's float64 rope with lite_boost's float32
    rope (see ``lite_boost.passes.lower_rope``); None keeps Wan's.
    """
    if is_dit_patched(model):
        return vars(model)[PATCH_ATTRIBUTE]
    check_dit_supported(model, state)

    kernel = select_attention_kernel(
        state.device.type, head_dim=model.dim // model.num_heads)
    graphs, originals = {}, {}
    for index, block in enumerate(model.blocks):
        for attribute in ("self_attn", "cross_attn"):
            name = f"blocks.{index}.{attribute}"
            module = getattr(block, attribute)
            originals[name], graphs[name] = _rewrite(module, state, kernel, rope)

    for name, graph_module in graphs.items():
        # An instance attribute shadows the class's forward; deleting it
        # brings Wan's forward back.
        model.get_submodule(name).forward = graph_module.forward
    hooks = SequenceShardHooks(model) if state.sequence_degree > 1 else None

    patch = DitPatch(graphs, originals, hooks, state.ulysses_degree,
                     kernel.__name__, ring_degree=state.ring_degree,
                     cfg_degree=state.cfg_degree, plan_reason=state.plan_reason)
    _patched_models.add(model)
    vars(model)[PATCH_ATTRIBUTE] = patch
    logger.info(
        "patched %s: %d blocks, %d attention graphs, degrees cfg %d, ulysses "
        "%d, ring %d, kernel %s, rope %s", type(model).__name__,
        len(model.blocks), len(graphs), state.cfg_degree,
        state.ulysses_degree, state.ring_degree, kernel.__name__,
        rope or "Wan's float64")
    return patch


def restore_dit(model: torch.nn.Module) -> bool:
    """Bring back Wan's own forwards; return False when nothing was patched."""
    patch = vars(model).pop(PATCH_ATTRIBUTE, None)
    if patch is None:
        return False
    _patched_models.discard(model)
    for name in patch.graphs:
        vars(model.get_submodule(name)).pop("forward", None)
    if patch.hooks is not None:
        patch.hooks.remove()
    return True
