"""Process groups and the user-facing entry point, ``ParallelManager``."""

from .init import default_backend, destroy_usp, initialize_usp
from .layout import configure_degrees
from .planner import DegreePlan, plan_degrees
from .state import ParallelState, get_state, is_initialized


def __getattr__(name):
    # ParallelManager pulls in the adapters, which import wan; load it on first
    # use so that `from lite_boost.parallel import initialize_usp` stays light.
    if name == "ParallelManager":
        from .manager import ParallelManager

        return ParallelManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ParallelManager",
    "ParallelState",
    "DegreePlan",
    "configure_degrees",
    "plan_degrees",
    "default_backend",
    "destroy_usp",
    "get_state",
    "initialize_usp",
    "is_initialized",
]
