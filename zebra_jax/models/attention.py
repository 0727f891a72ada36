"""GQA self-attention of the Llama teacher (rotate-half RoPE, HF layout); `Attention.cached` runs it
over its `KVCache` (prefill, decode, verification). `write_rows` serves MLA too; `masked_attention`
(k and v as separate arrays) is MLA's extend path."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax.config import LlamaConfig
from zebra_jax.models import rope
from zebra_jax.models.layers import Linear, dtype_of
from zebra_jax.ops.attention import causal_attention, decode_attention, kv_rows_attention_reference


@functools.lru_cache(maxsize=64)
def _frequencies(dim, theta, scaling_items, max_pos):
  return rope.rope_frequencies(dim, theta, dict(scaling_items) if scaling_items else None, max_pos)


def rope_for(dim: int, theta: float, scaling: dict | None, max_pos: int | None):
  """Cached (inv_freq, attention_factor) for a rope config (scaling dicts made hashable)."""
  items = tuple(sorted(scaling.items())) if scaling else None
  return _frequencies(dim, float(theta), items, max_pos)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  # (B, G, S, V + K): one row per kv head and position, the value first, the rotated key last. One
  # array read row by row is what the decode kernels stream (a [v | k] row is a latent row of the MLA
  # decode kernels, `ops.attention.decode_attention`); heads before length so a sequence's rows of a
  # head are contiguous (a (B, S, G, .) cache made XLA transpose the whole cache every step).
  rows: jax.Array
  AXES = {"rows": ("batch", "kv_heads", "length", None)}

  @classmethod
  def zeros(cls, config: LlamaConfig, layer_idx: int, batch_size: int, max_len: int, dtype):
    shape = (batch_size, config.num_key_value_heads, max_len, 2 * config.head_dim)
    return cls(jnp.zeros(shape, dtype))

  @property
  def k(self) -> jax.Array:
    """(B, G, S, K) rotated keys (a slice: for tests and inspection, not the decode path)."""
    return self.rows[..., self.rows.shape[-1] // 2 :]

  @property
  def v(self) -> jax.Array:
    """(B, G, S, V) values (a slice, as `k`)."""
    return self.rows[..., : self.rows.shape[-1] // 2]


def write_rows(buf_BS, rows_BT, start_B, axis: int = 0):
  """buf[b, ..., start[b] : start[b] + T (on `axis` of the per-sequence array), ...] = rows[b].

  The caller guarantees start + T <= S (XLA would clamp the start)."""
  one = lambda buf, rows, s: jax.lax.dynamic_update_slice_in_dim(buf, rows.astype(buf.dtype), s, axis)
  return jax.vmap(one)(buf_BS, rows_BT, start_B)


def masked_attention(q_BTHK, k_BGSK, v_BGSV, kv_len_BT, scale):
  """softmax(q k^T * scale) v over the first kv_len[b, t] keys of each query (GQA sharing).

  Keys / values are (B, G, S, K) as the cache stores them."""
  B, T, H, K = q_BTHK.shape
  G, S = k_BGSK.shape[1], k_BGSK.shape[2]
  q = q_BTHK.reshape(B, T, G, H // G, K)
  scores = (
    jnp.einsum("btgrk,bgsk->bgrts", q, k_BGSK.astype(q.dtype), preferred_element_type=jnp.float32) * scale
  )
  valid_BTS = jnp.arange(S)[None, None, :] < kv_len_BT[:, :, None]
  scores = jnp.where(valid_BTS[:, None, None], scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum("bgrts,bgsv->btgrv", probs, v_BGSV.astype(q.dtype))
  return out.reshape(B, T, H, v_BGSV.shape[-1])


class Attention(nnx.Module):
  """q/k/v/o projections, RoPE on full heads, causal GQA attention."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, H, G, K = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    kw = dict(rngs=rngs, dtype=dtype_of(config.dtype), param_dtype=dtype_of(config.param_dtype))
    self.q_proj = Linear(d, H * K, axes=("embed", "q_heads"), **kw)
    self.k_proj = Linear(d, G * K, axes=("embed", "kv_heads"), **kw)
    self.v_proj = Linear(d, G * K, axes=("embed", "kv_heads"), **kw)
    self.o_proj = Linear(H * K, d, axes=("q_heads", "embed"), **kw)

  def _qkv(self, x_BTD: jax.Array, positions_BT: jax.Array):
    """q (B, T, H, K), k and v (B, T, G, K); q and k rotated."""
    c = self.config
    B, T, _ = x_BTD.shape
    H, G, K = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q = self.q_proj(x_BTD).reshape(B, T, H, K)
    k = self.k_proj(x_BTD).reshape(B, T, G, K)
    v = self.v_proj(x_BTD).reshape(B, T, G, K)
    inv_freq, factor = rope_for(K, c.rope_theta, c.rope_scaling, c.max_position_embeddings)
    cos, sin = rope.rope_cos_sin(positions_BT, inv_freq, factor)
    return rope.apply_rope_half(q, cos, sin), rope.apply_rope_half(k, cos, sin), v

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array) -> jax.Array:
    q, k, v = self._qkv(x_BTD, positions_BT)
    out = causal_attention(q, k, v, scale=self.config.head_dim**-0.5, impl=self.config.impl)
    return self.o_proj(out.reshape(*out.shape[:2], -1))

  def cached(
    self, x_BTD: jax.Array, positions_BT: jax.Array, cache: KVCache, *, n_valid_B=None, mode: str = "decode"
  ):
    """(y_BTD, new KVCache, None): no record, a rollback only sets the length back.

    positions_BT[b] = sequence b's cache length + arange(T): the K/V rows are written there and
    query t reads the keys at positions <= its own. mode "fresh" (empty cache) attends within the
    chunk (`ops.attention.causal_attention`), "extend" / "decode" over the cache. n_valid_B is
    unused: rows of pad tokens lie past the new length, are never read and get overwritten."""
    q, k, v = self._qkv(x_BTD, positions_BT)
    rows_BTGC = jnp.concatenate([v, k.astype(v.dtype)], axis=-1)  # [v | k] per kv head
    new = KVCache(write_rows(cache.rows, jnp.swapaxes(rows_BTGC, 1, 2), positions_BT[:, 0], axis=1))
    scale = self.config.head_dim**-0.5
    if mode == "fresh":
      out = causal_attention(q, k, v, scale=scale, impl=self.config.impl)
    elif mode == "decode" and q.shape[1] == 1:
      out = decode_attention(q[:, 0], new.rows, positions_BT[:, 0] + 1, scale=scale, impl=self.config.impl)
      out = out[:, None]
    else:  # extend (chunked prefill) or speculative verification: T queries over the cache
      out = kv_rows_attention_reference(q, new.rows, positions_BT + 1, scale=scale)
    return self.o_proj(out.reshape(*out.shape[:2], -1)), new, None
