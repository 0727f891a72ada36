"""GQA self-attention of the Llama teacher (rotate-half RoPE, HF layout)."""

from __future__ import annotations

import functools

import jax
from flax import nnx

from zebra_jax.config import LlamaConfig
from zebra_jax.models import rope
from zebra_jax.models.layers import Linear, dtype_of
from zebra_jax.ops.attention import causal_attention


@functools.lru_cache(maxsize=64)
def _frequencies(dim, theta, scaling_items, max_pos):
  return rope.rope_frequencies(dim, theta, dict(scaling_items) if scaling_items else None, max_pos)


def rope_for(dim: int, theta: float, scaling: dict | None, max_pos: int | None):
  """Cached (inv_freq, attention_factor) for a rope config (scaling dicts made hashable)."""
  items = tuple(sorted(scaling.items())) if scaling else None
  return _frequencies(dim, float(theta), items, max_pos)


class Attention(nnx.Module):
  """q/k/v/o projections, RoPE on full heads, causal GQA attention."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, H, G, K = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                  config.head_dim)
    kw = dict(rngs=rngs, dtype=dtype_of(config.dtype), param_dtype=dtype_of(config.param_dtype))
    self.q_proj = Linear(d, H * K, axes=("embed", "q_heads"), **kw)
    self.k_proj = Linear(d, G * K, axes=("embed", "kv_heads"), **kw)
    self.v_proj = Linear(d, G * K, axes=("embed", "kv_heads"), **kw)
    self.o_proj = Linear(H * K, d, axes=("q_heads", "embed"), **kw)

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array) -> jax.Array:
    c = self.config
    B, T, _ = x_BTD.shape
    H, G, K = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q = self.q_proj(x_BTD).reshape(B, T, H, K)
    k = self.k_proj(x_BTD).reshape(B, T, G, K)
    v = self.v_proj(x_BTD).reshape(B, T, G, K)
    inv_freq, factor = rope_for(K, c.rope_theta, c.rope_scaling, c.max_position_embeddings)
    cos, sin = rope.rope_cos_sin(positions_BT, inv_freq, factor)
    q, k = rope.apply_rope_half(q, cos, sin), rope.apply_rope_half(k, cos, sin)
    out = causal_attention(q, k, v, scale=K**-0.5, impl=c.impl)
    return self.o_proj(out.reshape(B, T, H * K))
