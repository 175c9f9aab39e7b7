"""Phase 5: the Phase 3 forward and Phase 4 backward, tuned: descriptors (TMA), pruned autotuning, reordered work."""
from .forward import forward
