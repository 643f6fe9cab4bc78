"""Adapters: which parts of each supported Wan object lite_boost patches.

| target     | DiT attributes                        | VAE  | generate methods    |
|------------|---------------------------------------|------|---------------------|
| WanTI2V    | model                                 | vae  | generate, t2v, i2v  |
| WanT2V     | low_noise_model, high_noise_model     | vae  | generate            |
| WanI2V     | low_noise_model, high_noise_model     | vae  | generate            |
| WanModel   | the object itself (USP only)          | -    | -                   |
"""

import dataclasses
import functools
import inspect
import logging
import random
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from ..ops.collectives import run_collective
from ..parallel.layout import configure_degrees
from ..parallel.planner import check_degrees, plan_degrees
from ..parallel.state import ParallelState, get_state
from .cfg_parallel import install_cfg_parallel, remove_cfg_parallel
from .dit import check_dit_supported, has_patched_models, patch_dit, restore_dit

logger = logging.getLogger(__name__)

PATCH_ATTRIBUTE = "_lite_boost_pipeline_patch"
SUPPORTED_TYPES = ("WanTI2V", "WanT2V", "WanI2V", "WanModel")


@dataclasses.dataclass(frozen=True)
class Adapter:
    name: str
    dit_attributes: Tuple[str, ...]
    vae_attribute: Optional[str]
    generate_methods: Tuple[str, ...]


def _adapters() -> List[Tuple[type, Adapter]]:
    from wan.image2video import WanI2V
    from wan.modules.model import WanModel
    from wan.text2video import WanT2V
    from wan.textimage2video import WanTI2V

    experts = ("low_noise_model", "high_noise_model")
    return [
        (WanTI2V, Adapter("WanTI2V", ("model",), "vae", ("generate", "t2v", "i2v"))),
        (WanT2V, Adapter("WanT2V", experts, "vae", ("generate",))),
        (WanI2V, Adapter("WanI2V", experts, "vae", ("generate",))),
        (WanModel, Adapter("WanModel", (), None, ())),
    ]


def find_adapter(target: object) -> Adapter:
    """Return the adapter for ``target``'s type.

    Raises:
        RuntimeError: the type is not supported; the message lists what is.
    """
    for cls, adapter in _adapters():
        if isinstance(target, cls):
            return adapter
    raise RuntimeError(
        f"lite_boost cannot patch an object of type "
        f"{type(target).__module__}.{type(target).__qualname__}; supported "
        f"types: {', '.join(SUPPORTED_TYPES)} (from the wan package)")


@dataclasses.dataclass
class PipelinePatch:
    """Record of what ``setup_model`` installed on a target, for restore()."""

    adapter: Adapter
    dit_models: Dict[str, torch.nn.Module]
    vae_patched: bool
    wrapped_methods: List[str]


def _dit_models(target: object, adapter: Adapter) -> Dict[str, torch.nn.Module]:
    if not adapter.dit_attributes:
        return {"": target}
    return {name: getattr(target, name) for name in adapter.dit_attributes}


def _check_not_wan_sequence_parallel(models: Dict[str, torch.nn.Module]) -> None:
    # Wan's use_sp=True binds its own forwards on the instances; lite_boost's
    # would silently stack on top of them.
    for name, model in models.items():
        rebound = "forward" in vars(model) or any(
            "forward" in vars(block.self_attn) for block in model.blocks)
        if rebound:
            label = name or type(model).__name__
            raise RuntimeError(
                f"{label} already has a replaced forward (was the pipeline "
                "built with use_sp=True?); build it with use_sp=False and let "
                "lite_boost add sequence parallelism")


def check_generate_arguments(target: object, arguments: Dict[str, object]) -> None:
    """Reject frame counts and sizes that Wan would fail on deep inside.

    Raises ValueError on every rank, before any collective, naming the value
    and the valid choices.
    """
    frame_num = arguments.get("frame_num")
    if frame_num is not None and (not isinstance(frame_num, int) or frame_num < 1
                                  or (frame_num - 1) % 4 != 0):
        raise ValueError(
            f"frame_num={frame_num!r} is invalid: Wan's VAE turns 4n+1 frames "
            "into n+1 latent frames, so use 4n+1 frames (1, 5, 9, ..., 81, 121)")

    size = arguments.get("size")
    uses_size = arguments.get("img") is None and "size" in arguments
    if uses_size and size is not None:
        stride = target.vae_stride[1] * target.patch_size[1]
        if (len(size) != 2 or any(not isinstance(side, int) or side <= 0
                                  or side % stride != 0 for side in size)):
            raise ValueError(
                f"size={tuple(size)!r} is invalid for {type(target).__name__}: "
                f"width and height must be positive multiples of {stride} "
                f"(VAE stride {target.vae_stride[1]} x patch size "
                f"{target.patch_size[1]})")


def agreed_seed(state: ParallelState) -> int:
    """Draw a seed on rank 0 and broadcast it, so every rank uses the same one."""
    seed = torch.tensor([random.randint(0, 2**62)], dtype=torch.int64,
                        device=state.device)
    run_collective(dist.broadcast, "generate(seed=-1)", seed,
                   src=0, group=state.world_group)
    return int(seed.item())


def _parallel_generate(target: object, method: Callable,
                       state: ParallelState) -> Callable:
    """Wrap a generate method of a pipeline for the parallel run.

    - Arguments Wan would fail on deep inside raise ValueError first.
    - ``seed=-1`` (Wan's "random") is drawn once on rank 0 and broadcast, so
      every rank starts from the same noise.
    - Wan's generate() decodes only ``if self.rank == 0``, but the
      data-parallel VAE needs every rank. The wrapper sets ``target.rank`` to
      0 for the duration of the call (Wan reads it only for that decision) and
      puts the real rank back afterwards. Every rank then returns the same
      full video.
    """
    signature = inspect.signature(method)

    @functools.wraps(method)
    def generate_in_parallel(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        check_generate_arguments(target, bound.arguments)
        if state.world_size == 1:
            return method(*bound.args, **bound.kwargs)

        seed = bound.arguments.get("seed")
        if isinstance(seed, int) and seed < 0:
            bound.arguments["seed"] = agreed_seed(state)
        saved_rank = target.rank
        target.rank = 0
        try:
            return method(*bound.args, **bound.kwargs)
        finally:
            target.rank = saved_rank

    return generate_in_parallel


def uses_guidance(target: object, adapter: Adapter,
                  guidance: Optional[bool] = None) -> bool:
    """Whether the DiT is called twice per step (classifier-free guidance).

    ``guidance`` overrides the inference. Otherwise pipelines use guidance unless
    ``lightning`` is set, and a raw WanModel does not.
    """
    if guidance is not None:
        return guidance
    if not adapter.generate_methods:
        return False
    return not getattr(target, "lightning", False)


def choose_degrees(target: object, adapter: Adapter,
                   models: Dict[str, torch.nn.Module],
                   state: ParallelState,
                   guidance: bool) -> ParallelState:
    """Let the planner pick degrees, or check the ones already in place.

    The planner runs only when the caller gave no degrees and no model is
    patched yet, because changing the degrees under a patched model would
    change the groups it runs on.
    """
    if state.world_size == 1:
        return state
    head_counts = sorted({model.num_heads for model in models.values()})
    if not state.degrees_fixed and not has_patched_models():
        plan = plan_degrees(head_counts[0], state.world_size, guidance)
        for num_heads in head_counts[1:]:
            check_degrees(num_heads, state.world_size, guidance, *plan.degrees)
        if plan.degrees != state.degrees:
            return configure_degrees(*plan.degrees, reason=plan.reason, fixed=False)
        return state

    if state.cfg_degree == 2 and not guidance:
        # Valid, only wasteful: both CFG halves compute the same calls.
        logger.warning(
            "%s has no guidance but the degrees have cfg 2: both halves of the "
            "ranks compute the same calls", adapter.name)
    for num_heads in head_counts:
        check_degrees(num_heads, state.world_size, guidance or state.cfg_degree == 2,
                      *state.degrees)
    return state


def is_patched(target: object) -> bool:
    return PATCH_ATTRIBUTE in vars(target)


def apply_adapter(target: object, state: ParallelState,
                  vae_options: Dict[str, object],
                  rope: Optional[str] = None,
                  guidance: Optional[bool] = None) -> PipelinePatch:
    adapter = find_adapter(target)
    models = _dit_models(target, adapter)
    _check_not_wan_sequence_parallel(models)
    guidance = uses_guidance(target, adapter, guidance)
    state = choose_degrees(target, adapter, models, state, guidance)

    # Check every model before patching any, so a rejected target is left
    # as it was and every rank raises the same error before any collective.
    for model in models.values():
        check_dit_supported(model, state)
    for model in models.values():
        patch_dit(model, state, rope=rope)
    if state.cfg_degree == 2 and guidance:
        for model in models.values():
            install_cfg_parallel(model)

    vae_patched = False
    if adapter.vae_attribute is not None:
        from ..vae import patch_vae

        patch_vae(getattr(target, adapter.vae_attribute), **vae_options)
        vae_patched = True

    wrapped = []
    for name in adapter.generate_methods:
        method = getattr(target, name)
        setattr(target, name, _parallel_generate(target, method, state))
        wrapped.append(name)

    patch = PipelinePatch(adapter, models, vae_patched, wrapped)
    vars(target)[PATCH_ATTRIBUTE] = patch
    logger.info("lite_boost patched %s on %d ranks (DiTs: %s)", adapter.name,
                state.world_size, ", ".join(n or adapter.name for n in models))
    from ..inspection.hooks import after_patch

    after_patch(target, models)
    return patch


def setup_model(target: object, *, vae_parallel: Optional[str] = None,
                vae_chunk_size: Optional[int] = None,
                vae_overlap: int = 2, vae_blend: int = 1,
                rope: Optional[str] = None,
                guidance: Optional[bool] = None) -> object:
    """Detect ``target``'s type and patch it in place; return ``target``.

    A second call on a patched target changes nothing. See ``ParallelManager``
    for the options.

    Raises:
        RuntimeError: ``initialize_usp()`` has not run, or the type is not
            supported.
        ValueError: the model cannot run at this degree (for example heads not
            divisible by the world size), or the VAE options are invalid.
    """
    from ..vae import resolve_mode

    state = get_state()
    if is_patched(target):
        return target
    # Resolved before anything is patched, so an invalid mode leaves the
    # target as it was.
    vae_options = {"mode": resolve_mode(vae_parallel, vae_chunk_size),
                   "chunk_size": vae_chunk_size, "overlap": vae_overlap,
                   "blend": vae_blend}
    apply_adapter(target, state, vae_options, rope=rope, guidance=guidance)
    return target


def restore_model(target: object) -> object:
    """Undo ``setup_model``; a target that was never patched is returned as is."""
    patch = vars(target).pop(PATCH_ATTRIBUTE, None)
    if patch is None:
        return target
    for name in patch.wrapped_methods:
        vars(target).pop(name, None)
    if patch.vae_patched:
        from ..vae import restore_vae

        restore_vae(getattr(target, patch.adapter.vae_attribute))
    for model in patch.dit_models.values():
        remove_cfg_parallel(model)
        restore_dit(model)
    return target
