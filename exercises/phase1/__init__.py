"""Phase 1: from naive to tiled attention (S and P still go through memory)."""
from .attention import tiled_attention
from .scores import tiled_scores

__all__ = ["tiled_attention", "tiled_scores"]
