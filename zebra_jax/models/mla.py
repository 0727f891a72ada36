"""Multi-head Latent Attention (MLA) mixer, as in Zebra-Llama / X-EcoMLA (DeepSeek-V2/V3 style).

Per token x (already normalised by the block's input_layernorm):

  q      = q_b(N_q(q_a(x)))  or  q_proj(x)          (B, T, H, d_n + d_r), per head [nope | rope]
  [c, k] = kv_a_proj_with_mqa(x)                     latent c (r_kv) and ONE rope key k (d_r) for all heads
  kv     = kv_b(N_kv(c))                             (B, T, G, d_n + d_v), per kv head [k_nope | v]
  K_g    = [k_nope_g | rope(k)],  Q_h = [q_nope_h | rope(q_pe_h)],  query head h reads kv head h // (H/G)
  y      = out_proj(softmax(Q K^T * scale + causal) V)

RoPE is the DeepSeek interleaved pairing (channels 2j, 2j+1) on the d_r rope channels only, with
frequencies for dimension d_r from `mla_rope_theta` / `mla_rope_scaling` (YaRN multiplies cos/sin by
its attention factor). G = `config.mla_kv_heads` (n_kv, or H with `use_full_kv_head`).

The helpers `queries`, `latent_cache_rows` and `kv_b_views` are the pieces of the absorbed decode
path (reference 1.6): the cache holds [N_kv(c) | rope(k)] per token, and W_UK / W_UV are views of
kv_b_proj's kernel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax.config import ConfigError, HybridConfig
from zebra_jax.models import rope
from zebra_jax.models.attention import rope_for
from zebra_jax.models.layers import Linear, RMSNorm, dtype_of
from zebra_jax.ops.attention import causal_attention


def mla_softmax_scale(config: HybridConfig) -> float:
  """(d_n + d_r)^-1/2, times mscale(factor, mscale_all_dim)^2 only if mla_rope_scaling sets a
  non-zero `mscale_all_dim` (DeepSeek's correction; Zebra and X-EcoMLA never set it, reference 1.4)."""
  scale = config.qk_head_dim ** -0.5
  scaling = config.mla_rope_scaling
  if scaling and scaling.get("mscale_all_dim"):
    factor = float(scaling["factor"])
    m = 1.0 if factor <= 1 else 0.1 * float(scaling["mscale_all_dim"]) * math.log(factor) + 1.0
    scale *= m * m
  return scale


class MLA(nnx.Module):
  """MLA mixer of layer `layer_idx`: __call__(x_BTD, positions_BT) -> y_BTD."""

  def __init__(self, config: HybridConfig, layer_idx: int, *, rngs: nnx.Rngs):
    if not isinstance(config, HybridConfig):
      raise ConfigError(f"MLA needs a HybridConfig, got {type(config).__name__}")
    self.config = config
    self.layer_idx = layer_idx
    c = config
    d, H, G = c.hidden_size, c.num_attention_heads, c.mla_kv_heads
    d_n, d_r, d_v = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    self.r_q, self.r_kv = c.mla_ranks(layer_idx)
    kw = dict(rngs=rngs, dtype=dtype_of(c.dtype), param_dtype=dtype_of(c.param_dtype))
    pd = dtype_of(c.param_dtype)

    def lora_norm(dim):
      return RMSNorm(dim, eps=c.lora_layer_norm_eps, param_dtype=pd) if c.use_lora_layer_norm else None

    if self.r_q is None:
      self.q_proj = Linear(d, H * (d_n + d_r), axes=("embed", "q_heads"), **kw)
      self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
    else:
      self.q_proj = None
      self.q_a_proj = Linear(d, self.r_q, axes=("embed", "q_lora"), **kw)
      self.q_a_layernorm = lora_norm(self.r_q)
      self.q_b_proj = Linear(self.r_q, H * (d_n + d_r), axes=("q_lora", "q_heads"), **kw)
    self.kv_a_proj_with_mqa = Linear(d, self.r_kv + d_r, axes=("embed", "kv_lora"), **kw)
    self.kv_a_layernorm = lora_norm(self.r_kv)
    self.kv_b_proj = Linear(self.r_kv, G * (d_n + d_v), axes=("kv_lora", "kv_heads"), **kw)
    self.out_proj = Linear(H * d_v, d, axes=("q_heads", "embed"), **kw)

  # -- pieces (shared by the training path and the absorbed decode path) ------------------------
  @property
  def softmax_scale(self) -> float:
    return mla_softmax_scale(self.config)

  def rope_cos_sin(self, positions_BT: jax.Array):
    """cos, sin (B, T, d_r/2) for the rope channels (YaRN attention factor included)."""
    c = self.config
    if c.qk_rope_head_dim == 0:
      empty = jnp.zeros((*positions_BT.shape, 0), jnp.float32)
      return empty, empty
    inv_freq, factor = rope_for(c.qk_rope_head_dim, c.mla_rope_theta, c.mla_rope_scaling,
                                c.max_position_embeddings)
    return rope.rope_cos_sin(positions_BT, inv_freq, factor)

  def _rope(self, x_BTHR: jax.Array, cos_sin) -> jax.Array:
    if x_BTHR.shape[-1] == 0:  # d_r = 0: no positional channels
      return x_BTHR
    return rope.apply_rope_interleaved(x_BTHR, *cos_sin)

  def queries(self, x_BTD: jax.Array, positions_BT: jax.Array, cos_sin=None):
    """(q_nope (B,T,H,d_n), q_pe (B,T,H,d_r) after RoPE)."""
    c = self.config
    B, T, _ = x_BTD.shape
    H, d_n, d_r = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
    if self.q_proj is not None:
      q = self.q_proj(x_BTD)
    else:
      q_lat = self.q_a_proj(x_BTD)
      if self.q_a_layernorm is not None:
        q_lat = self.q_a_layernorm(q_lat)
      q = self.q_b_proj(q_lat)
    q_BTHK = q.reshape(B, T, H, d_n + d_r)
    if cos_sin is None:
      cos_sin = self.rope_cos_sin(positions_BT)
    return q_BTHK[..., :d_n], self._rope(q_BTHK[..., d_n:], cos_sin)

  def latent_cache_rows(self, x_BTD: jax.Array, positions_BT: jax.Array, cos_sin=None) -> jax.Array:
    """What an MLA KV cache stores per token: [N_kv(c_kv) | rope(k_pe)], shape (B, T, r_kv + d_r)."""
    if cos_sin is None:
      cos_sin = self.rope_cos_sin(positions_BT)
    kv_a = self.kv_a_proj_with_mqa(x_BTD)
    c_kv, k_pe = kv_a[..., :self.r_kv], kv_a[..., self.r_kv:]
    if self.kv_a_layernorm is not None:
      c_kv = self.kv_a_layernorm(c_kv)
    k_pe = self._rope(k_pe[:, :, None, :], cos_sin)[:, :, 0, :]
    return jnp.concatenate([c_kv, k_pe.astype(c_kv.dtype)], axis=-1)

  def kv_b_views(self) -> tuple[jax.Array, jax.Array]:
    """(W_UK (r_kv, G, d_n), W_UV (r_kv, G, d_v)): kv_b_proj's kernel split per kv head.

    k_nope[g] = c @ W_UK[:, g] and v[g] = c @ W_UV[:, g], so a decode step can score
    q_nope_h . k_nope_g = (W_UK[:, g] q_nope_h) . c without decompressing the cache.
    """
    c = self.config
    d_n = c.qk_nope_head_dim
    w_CGK = self.kv_b_proj.kernel[...].reshape(self.r_kv, c.mla_kv_heads, d_n + c.v_head_dim)
    return w_CGK[..., :d_n], w_CGK[..., d_n:]

  def decompress(self, cache_BSL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Latent cache rows -> (K (B,S,G,d_n+d_r), V (B,S,G,d_v)); the rope key is shared by all heads."""
    c = self.config
    B, S, _ = cache_BSL.shape
    G, d_n, d_r = c.mla_kv_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
    c_kv, k_pe = cache_BSL[..., :self.r_kv], cache_BSL[..., self.r_kv:]
    kv = self.kv_b_proj(c_kv).reshape(B, S, G, d_n + c.v_head_dim)
    k_nope, v = kv[..., :d_n], kv[..., d_n:]
    k_pe_BSGR = jnp.broadcast_to(k_pe[:, :, None, :].astype(k_nope.dtype), (B, S, G, d_r))
    return jnp.concatenate([k_nope, k_pe_BSGR], axis=-1), v

  # -- training / prefill path ------------------------------------------------------------------
  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array) -> jax.Array:
    c = self.config
    B, T, _ = x_BTD.shape
    H, d_v = c.num_attention_heads, c.v_head_dim
    cos_sin = self.rope_cos_sin(positions_BT)
    q_nope, q_pe = self.queries(x_BTD, positions_BT, cos_sin)
    q_BTHK = jnp.concatenate([q_nope, q_pe.astype(q_nope.dtype)], axis=-1)
    k_BTGK, v_BTGV = self.decompress(self.latent_cache_rows(x_BTD, positions_BT, cos_sin))
    out = causal_attention(q_BTHK, k_BTGK, v_BTGV, scale=self.softmax_scale, impl=c.impl)
    return self.out_proj(out.reshape(B, T, H * d_v))
