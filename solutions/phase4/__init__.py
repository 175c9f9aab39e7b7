"""Phase 4: the backward pass with recomputation, and attention as an autograd function."""
from .attention import FlashAttentionFunction, flash_attention
from .backward import flash_attention_backward

__all__ = ["FlashAttentionFunction", "flash_attention", "flash_attention_backward"]
