"""Phase 5: the Phase 3 forward and Phase 4 backward, tuned: descriptors (TMA), a pruned
configuration space with pinned choices per GPU, and re-tuned backward configurations."""
from .attention import FlashAttentionFunction, flash_attention
from .backward import flash_attention_backward
from .forward import Config, Switches, fits, flash_attention_forward, forward

__all__ = ["Config", "FlashAttentionFunction", "Switches", "fits", "flash_attention", "flash_attention_backward",
           "flash_attention_forward", "forward"]
