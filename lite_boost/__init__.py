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


__all__ = ["restore", "__version__"]
