"""torch.fx tracer and passes that rewrite Wan's attention modules."""

from .pipeline import PassFailedError, attention_passes, run_passes
from .tracer import trace_attention

__all__ = ["PassFailedError", "attention_passes", "run_passes", "trace_attention"]
