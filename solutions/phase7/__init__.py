"""Phase 7: the attention current models run: grouped-query and multi-query attention, sliding
windows, logit soft-capping, any head dim up to 256, decoding with a split KV cache, and ring
attention over a torch.distributed process group."""
from .attention import FlashAttentionFunction, flash_attention
from .backward import flash_attention_backward
from .decode import check_decode_lengths, flash_decode
from .forward import flash_attention_forward
from .ring import ring_attention, shard_sequence, unshard_sequence

__all__ = ["FlashAttentionFunction", "check_decode_lengths", "flash_attention", "flash_attention_backward",
           "flash_attention_forward", "flash_decode", "ring_attention", "shard_sequence",
           "unshard_sequence"]
