"""Phase 6: attention dropout without a stored mask, and variable-length (packed) batches."""
from .attention import FlashAttentionVarlenFunction, flash_attention, flash_attention_varlen
from .dropout import dropout_mask

__all__ = ["FlashAttentionVarlenFunction", "dropout_mask", "flash_attention", "flash_attention_varlen"]
