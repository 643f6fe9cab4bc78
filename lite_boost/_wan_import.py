"""Make ``import wan`` work on hosts without CUDA.

``wan/modules/t5.py`` (PyPI ``wan22==2.2.11``) has a default argument
``device=torch.cuda.current_device()``, which Python evaluates when the module
is imported, so the import raises on a host without a CUDA driver. The finder
below wraps the loader of that one module: while it executes,
``torch.cuda.current_device`` returns 0, and the original function is put back
as soon as the module body has run. Wan's files are not edited and no other
module can call the stand-in.
"""

import importlib.abc
import importlib.machinery
import sys

import torch

_T5_MODULE = "wan.modules.t5"


def _cuda_unavailable_device_index():
    return 0


class _CudaFreeLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        original = torch.cuda.current_device
        torch.cuda.current_device = _cuda_unavailable_device_index
        try:
            self._loader.exec_module(module)
        finally:
            torch.cuda.current_device = original


class _WanT5Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _T5_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _CudaFreeLoader(spec.loader)
        return spec


def install():
    """Install the finder once, and only where CUDA is unavailable."""
    if torch.cuda.is_available():
        return
    if any(isinstance(finder, _WanT5Finder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _WanT5Finder())
