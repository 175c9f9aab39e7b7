"""Phase 2: online softmax, and the first fused attention kernel (K/V streamed, no S or P in memory)."""
from .flash import flash_attention_v1
from .online_softmax import online_softmax

__all__ = ["flash_attention_v1", "online_softmax"]
