"""Phase 3: the complete FlashAttention forward pass (causal block skipping, the logsumexp)."""
from .forward import flash_attention_forward
from .merge import merge_partials

__all__ = ["flash_attention_forward", "merge_partials"]
