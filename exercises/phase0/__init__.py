"""Phase 0: the computational model of attention and its bottleneck."""
from .cost import attention_cost
from .reference import attention_reference
from .softmax import softmax

__all__ = ["attention_reference", "attention_cost", "softmax"]
