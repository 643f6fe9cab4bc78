"""``initialize_usp()``: torch.distributed set-up from torchrun's environment.

On Ascend NPUs the backend is hccl and each rank calls
``torch.npu.set_device(LOCAL_RANK)`` before ``init_process_group``, as the
torch_npu migration guide does. torch_npu is imported only on that path, or to
check for an NPU when torch_npu is installed.

``torch_npu.contrib.transfer_to_npu`` lets a script written for CUDA run on
NPUs. With it, import it before lite_boost and ``wan``::

    import torch
    import torch_npu
    from torch_npu.contrib import transfer_to_npu
    import lite_boost
    from wan.textimage2video import WanTI2V

transfer_to_npu (``torch_npu/contrib/transfer_to_npu.py`` in Ascend/pytorch)
replaces the ``torch.cuda`` functions with ``torch.npu``'s and rewrites "cuda"
device arguments of tensor factories, ``Tensor.to`` and ``Module.to`` to
"npu". Code that runs while ``wan`` is imported must already see that:
``wan/modules/t5.py`` evaluates ``torch.cuda.current_device()`` as a default
argument. transfer_to_npu leaves ``torch.device("cuda")`` and checks such as
``x.device.type == "cuda"`` unchanged. Its ``init_process_group`` wrapper
turns "nccl" into "hccl", and ``initialize_usp`` does the same for
``backend="nccl"`` when an NPU is present, so the device it records is the NPU.

NOTE: that source rebinds ``torch.autocast`` and ``torch.cuda.amp`` but not
``torch.amp.autocast``, which Wan calls with "cuda". Whether Wan's autocast
regions take effect on an NPU has not been checked on hardware.
"""

import datetime
import importlib
import importlib.util
import logging
import os
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import state as parallel_state
from .layout import clear_group_cache, complete_degrees, configure_degrees

logger = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("gloo", "nccl", "hccl")
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


def _npu_available() -> bool:
    # torch_npu is imported only here, and only when it is installed: importing
    # it without the CANN toolkit fails, so lite_boost never needs it.
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        importlib.import_module("torch_npu")
    except ImportError as error:
        logger.warning("torch_npu is installed but failed to import (%s); "
                       "not using an NPU", error)
        return False
    return hasattr(torch, "npu") and torch.npu.is_available()


def _resolve_backend(backend: Optional[str]) -> Optional[str]:
    """Map "nccl" to "hccl" on an NPU host, as transfer_to_npu does."""
    if backend == "nccl" and _npu_available():
        logger.info("backend nccl requested on a host with an Ascend NPU; "
                    "using hccl")
        return "hccl"
    return backend


def default_backend() -> str:
    """Pick hccl when an Ascend NPU is present, nccl with CUDA, else gloo."""
    if _npu_available():
        return "hccl"
    if torch.cuda.is_available():
        return "nccl"
    return "gloo"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer") from None


def _device_for(backend: str, local_rank: int) -> torch.device:
    # LOCAL_RANK, not RANK, selects the device: on node 2 of a multi-node run
    # RANK starts at the size of node 1, which is not a valid device index.
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if backend == "hccl":
        # Importing torch_npu registers torch.npu and the "npu" device type.
        importlib.import_module("torch_npu")
        torch.npu.set_device(local_rank)
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def _as_timedelta(timeout: Union[datetime.timedelta, float, int]) -> datetime.timedelta:
    if isinstance(timeout, datetime.timedelta):
        return timeout
    if isinstance(timeout, (int, float)) and timeout > 0:
        return datetime.timedelta(seconds=timeout)
    raise ValueError(
        f"timeout={timeout!r} is invalid: pass a datetime.timedelta or a "
        "positive number of seconds")


def initialize_usp(
    backend: Optional[str] = None,
    timeout: Union[datetime.timedelta, float, int] = DEFAULT_TIMEOUT,
    ulysses_degree: Optional[int] = None,
    ring_degree: Optional[int] = None,
    cfg_degree: Optional[int] = None,
) -> parallel_state.ParallelState:
    """Initialize torch.distributed and lite_boost's parallel state.

    Reads torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT. Without them it sets up a single process (rank 0, world size
    1) and creates no process group, so no collective ever runs. A process
    group that the caller initialized already is reused as it is.

    Calling it again returns the state of the first call; a second call that
    requests a different backend or degree raises instead.

    Args:
        backend: "gloo", "nccl" or "hccl". Default: hccl when torch_npu and an
            NPU are present, nccl with CUDA, gloo otherwise. "nccl" becomes
            "hccl" when torch_npu and an NPU are present.
        timeout: collective timeout (timedelta or seconds).
        ulysses_degree: ranks that split heads and exchange them with
            all_to_all (must divide the model's head count).
        ring_degree: ranks that pass keys and values around a ring.
        cfg_degree: 2 to run the prompt and the negative prompt of
            classifier-free guidance on two halves of the ranks.

    With no degree given, every rank runs Ulysses until the first
    ``ParallelManager()`` call, where the planner
    (``lite_boost.parallel.planner``) chooses degrees from the model's head
    count and whether guidance is on. Given degrees are kept (left-out ones
    complete the product) and checked against the model instead.

    Returns:
        The ParallelState of this process.

    Example::

        # torchrun --nproc-per-node 2 my_script.py
        state = initialize_usp()
        print(state.rank, state.world_size, state.device)
    """
    if backend is not None and backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not supported; valid choices: "
            f"{', '.join(SUPPORTED_BACKENDS)}")
    timeout = _as_timedelta(timeout)
    backend = _resolve_backend(backend)

    requested = (cfg_degree, ulysses_degree, ring_degree)
    if parallel_state.is_initialized():
        return _check_repeated_call(backend, requested)

    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        backend = backend or dist.get_backend()
    else:
        rank = _env_int("RANK", 0)
        world_size = _env_int("WORLD_SIZE", 1)
        backend = backend or default_backend()
    local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    _check_layout(rank, world_size, local_rank)

    fixed = any(degree is not None for degree in requested)
    degrees = complete_degrees(world_size, *requested)

    device = _device_for(backend, local_rank)
    owns_process_group = world_size > 1 and not dist.is_initialized()
    if owns_process_group:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        # hccl gets no device_id: the torch_npu guide binds the device with
        # torch.npu.set_device only, which _device_for has done.
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=timeout,
            device_id=device if backend == "nccl" else None)

    group = dist.group.WORLD if world_size > 1 else None
    state = parallel_state.ParallelState(
        backend=backend, rank=rank, local_rank=local_rank,
        world_size=world_size, device=device, ulysses_degree=world_size,
        ulysses_group=group, timeout=timeout,
        owns_process_group=owns_process_group, sequence_group=group,
        world_group=group)
    parallel_state.set_state(state)
    logger.info(
        "lite_boost initialized: rank %d/%d, local rank %d, backend %s, "
        "device %s", rank, world_size, local_rank, backend, device)
    if fixed:
        state = configure_degrees(*degrees, fixed=True)
    return state


def _check_layout(rank: int, world_size: int, local_rank: int) -> None:
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE={world_size} is invalid: it must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"RANK={rank} is invalid for WORLD_SIZE={world_size}: valid ranks "
            f"are 0..{world_size - 1}")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK={local_rank} is invalid: it must be >= 0")


def _check_repeated_call(
        backend: Optional[str],
        requested: tuple) -> parallel_state.ParallelState:
    current = parallel_state.get_state()
    if backend is not None and backend != current.backend:
        raise ValueError(
            f"initialize_usp(backend={backend!r}) called after lite_boost was "
            f"initialized with backend {current.backend!r}; call "
            "destroy_usp() first to change it")
    if any(degree is not None for degree in requested):
        degrees = complete_degrees(current.world_size, *requested)
        if degrees != current.degrees:
            raise ValueError(
                f"initialize_usp() called with degrees (cfg, ulysses, ring) = "
                f"{degrees} after lite_boost was initialized with "
                f"{current.degrees}; call lite_boost.parallel.configure_degrees() "
                "on every rank to change them")
    return current


def destroy_usp() -> None:
    """Forget the parallel state; destroy the process group if we created it."""
    if not parallel_state.is_initialized():
        return
    if parallel_state.get_state().owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
    clear_group_cache()
    parallel_state.set_state(None)
