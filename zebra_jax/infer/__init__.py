"""Generation: compressed caches, prefill / decode, sampling, speculative decoding.

    tokens = zebra_jax.generate(model, [[1, 2, 3], [4, 5]], 32, temperature=0.7, top_p=0.9)
    tokens, stats = zebra_jax.generate(model, prompts, 32, draft=small_model, num_draft_tokens=4,
                                       return_stats=True)
    tokens = zebra_jax.generate(model, prompts, 32, mesh=make_mesh(2, 1, 4))  # zebra_jax.parallel

See docs/inference.md.
"""

from zebra_jax.infer.cache import (
  CACHE_RULES,
  Cache,
  KVCache,
  LatentCache,
  MambaState,
  cache_bytes_per_token,
  cache_logical_axes,
  cache_mesh,
  cache_nbytes,
  cache_shardings,
  grow_cache,
  init_cache,
  shard_cache,
  state_bytes_per_sequence,
)
from zebra_jax.infer.decode import (
  decode_step,
  forward_chunk,
  model_mesh,
  prefill,
  shard_for_inference,
  stream,
)
from zebra_jax.infer.generation import generate
from zebra_jax.infer.sampling import SamplingConfig, filter_logits, probs, sample

__all__ = [
  "CACHE_RULES",
  "Cache",
  "KVCache",
  "LatentCache",
  "MambaState",
  "cache_bytes_per_token",
  "cache_logical_axes",
  "cache_mesh",
  "cache_nbytes",
  "cache_shardings",
  "grow_cache",
  "init_cache",
  "shard_cache",
  "state_bytes_per_sequence",
  "decode_step",
  "forward_chunk",
  "generate",
  "model_mesh",
  "prefill",
  "shard_for_inference",
  "stream",
  "SamplingConfig",
  "filter_logits",
  "probs",
  "sample",
]
