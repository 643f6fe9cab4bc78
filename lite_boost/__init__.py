"""lite_boost: multi-device inference for Wan2.x video pipelines.

Importing lite_boost lets ``import wan`` succeed on hosts without CUDA (see
``lite_boost._wan_import``); it imports neither wan nor torch_npu itself.
"""

from . import _wan_import

_wan_import.install()

__version__ = "0.1.0"


def restore(target):
    """Undo ``ParallelManager(target)``: original forwards, VAE and generate()."""
    from .model import restore_model

    return restore_model(target)


def inspect(target):
    """Report what lite_boost rewrote in ``target``; see ``lite_boost.inspection``.

    Returns an ``InspectionReport``. ``print()`` gives one summary per patched
    DiT. For an unpatched or unsupported target it prints the reason instead.
    """
    from .inspection import inspect as inspect_target

    return inspect_target(target)


__all__ = ["inspect", "restore", "__version__"]
