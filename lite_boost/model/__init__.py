"""Model adapters: detect a Wan object's type and patch it in place."""

from .adapters import SUPPORTED_TYPES, find_adapter, is_patched, restore_model, setup_model

__all__ = ["SUPPORTED_TYPES", "find_adapter", "is_patched", "restore_model", "setup_model"]
