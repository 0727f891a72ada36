"""Generation: compressed caches, prefill / decode, sampling, speculative decoding.

    tokens = zebra_jax.generate(model, [[1, 2, 3], [4, 5]], 32, temperature=0.7, top_p=0.9)
    tokens, stats = zebra_jax.generate(model, prompts, 32, draft=small_model, num_draft_tokens=4,
                                       return_stats=True)

See docs/inference.md.
"""

from zebra_jax.infer.cache import (Cache, KVCache, LatentCache, MambaState, cache_bytes_per_token,
                                   cache_logical_axes, cache_nbytes, cache_shardings, init_cache,
                                   shard_cache, state_bytes_per_sequence)
from zebra_jax.infer.decode import decode_step, forward_chunk, generate, prefill, stream
from zebra_jax.infer.sampling import SamplingConfig, filter_logits, probs, sample

__all__ = ["Cache", "KVCache", "LatentCache", "MambaState", "cache_bytes_per_token",
           "cache_logical_axes", "cache_nbytes", "cache_shardings", "init_cache", "shard_cache",
           "state_bytes_per_sequence", "decode_step", "forward_chunk", "generate", "prefill", "stream",
           "SamplingConfig", "filter_logits", "probs", "sample"]
