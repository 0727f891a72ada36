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

`MLA.cached` is the forward over a per-layer `LatentCache`, which holds [N_kv(c) | rope(k)] per
token: prefill decompresses it through kv_b_proj (reference 8.2), decode takes the absorbed path
(reference 1.6) with W_UK / W_UV as views of kv_b_proj's kernel (`kv_b_views`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax.config import ConfigError, HybridConfig
from zebra_jax.models import rope
from zebra_jax.models.attention import masked_attention, rope_for, write_rows
from zebra_jax.models.layers import Linear, RMSNorm, dtype_of
from zebra_jax.ops.attention import causal_attention
from zebra_jax.ops.mla import mla_decode


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LatentCache:
  rows: jax.Array  # (B, S, r_kv + d_r): [kv_a_layernorm(c_kv) | rope(k_pe)]
  AXES = {"rows": ("batch", "length", "kv_lora")}

  @classmethod
  def zeros(cls, config: HybridConfig, layer_idx: int, batch_size: int, max_len: int, dtype):
    _, r_kv = config.mla_ranks(layer_idx)
    return cls(jnp.zeros((batch_size, max_len, r_kv + config.qk_rope_head_dim), dtype))


def absorbed_attention(q_latent_BTHR, q_rope_BTHK, cache_BSC, kv_len_BT, scale):
  """Multi-query absorbed MLA over the latent cache (per-query lengths); the T > 1 twin of mla_decode."""
  R = q_latent_BTHR.shape[-1]
  f32 = jnp.float32
  latent, k_rope = cache_BSC[..., :R].astype(f32), cache_BSC[..., R:].astype(f32)
  scores = (
    jnp.einsum("bthr,bsr->bths", q_latent_BTHR.astype(f32), latent)
    + jnp.einsum("bthk,bsk->bths", q_rope_BTHK.astype(f32), k_rope)
  ) * scale
  valid = jnp.arange(cache_BSC.shape[1])[None, None, None, :] < kv_len_BT[:, :, None, None]
  probs = jax.nn.softmax(jnp.where(valid, scores, -jnp.inf), axis=-1)
  return jnp.einsum("bths,bsr->bthr", probs, latent).astype(q_latent_BTHR.dtype)


def mla_softmax_scale(config: HybridConfig) -> float:
  """(d_n + d_r)^-1/2, times mscale(factor, mscale_all_dim)^2 only if mla_rope_scaling sets a
  non-zero `mscale_all_dim` (DeepSeek's correction; Zebra and X-EcoMLA never set it, reference 1.4)."""
  scale = config.qk_head_dim**-0.5
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
    inv_freq, factor = rope_for(
      c.qk_rope_head_dim, c.mla_rope_theta, c.mla_rope_scaling, c.max_position_embeddings
    )
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
    c_kv, k_pe = kv_a[..., : self.r_kv], kv_a[..., self.r_kv :]
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
    c_kv, k_pe = cache_BSL[..., : self.r_kv], cache_BSL[..., self.r_kv :]
    kv = self.kv_b_proj(c_kv).reshape(B, S, G, d_n + c.v_head_dim)
    k_nope, v = kv[..., :d_n], kv[..., d_n:]
    k_pe_BSGR = jnp.broadcast_to(k_pe[:, :, None, :].astype(k_nope.dtype), (B, S, G, d_r))
    return jnp.concatenate([k_nope, k_pe_BSGR], axis=-1), v

  def _attend(self, q_nope, q_pe, rows_BSC, kv_len_BT=None) -> jax.Array:
    """Attention over decompressed rows: causal within the chunk (kv_len None, through
    `ops.attention.causal_attention`) or over the first kv_len[b, t] cache rows per query."""
    c = self.config
    q_BTHK = jnp.concatenate([q_nope, q_pe.astype(q_nope.dtype)], axis=-1)
    k_BSGK, v_BSGV = self.decompress(rows_BSC)
    if kv_len_BT is None:
      return causal_attention(q_BTHK, k_BSGK, v_BSGV, scale=self.softmax_scale, impl=c.impl)
    return masked_attention(
      q_BTHK, jnp.swapaxes(k_BSGK, 1, 2), jnp.swapaxes(v_BSGV, 1, 2), kv_len_BT, self.softmax_scale
    )

  def _absorbed(self, q_nope, q_pe, rows_BSC, kv_len_BT) -> jax.Array:
    """Absorbed attention (reference 1.6) over the latent rows: q_nope_h @ W_UK_g into the latent,
    `ops.mla.mla_decode` (T = 1) or its jnp multi-query twin, the context back through W_UV_g.
    Query head h uses kv head g = h // (H/G)."""
    c = self.config
    B, T = q_nope.shape[:2]
    H, G, d_n, d_v = c.num_attention_heads, c.mla_kv_heads, c.qk_nope_head_dim, c.v_head_dim
    w_uk, w_uv = self.kv_b_views()  # (r_kv, G, d_n), (r_kv, G, d_v)
    dt = q_nope.dtype
    R = w_uk.shape[0]
    q_nope_g = q_nope.reshape(B, T, G, H // G, d_n)
    q_latent = jnp.einsum("btgin,rgn->btgir", q_nope_g, w_uk.astype(dt)).reshape(B, T, H, R)
    if T == 1:
      ctx = mla_decode(
        q_latent[:, 0],
        q_pe[:, 0].astype(dt),
        rows_BSC,
        kv_len_BT[:, 0],
        scale=self.softmax_scale,
        impl=c.impl,
      )[:, None]
    else:
      ctx = absorbed_attention(q_latent, q_pe, rows_BSC, kv_len_BT, self.softmax_scale)
    return jnp.einsum(
      "btgir,rgv->btgiv", ctx.reshape(B, T, G, H // G, R).astype(dt), w_uv.astype(dt)
    ).reshape(B, T, H, d_v)

  # -- training path ----------------------------------------------------------------------------
  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array) -> jax.Array:
    cos_sin = self.rope_cos_sin(positions_BT)
    q_nope, q_pe = self.queries(x_BTD, positions_BT, cos_sin)
    out = self._attend(q_nope, q_pe, self.latent_cache_rows(x_BTD, positions_BT, cos_sin))
    return self.out_proj(out.reshape(*out.shape[:2], -1))

  # -- the forward over the cache (prefill, decode, speculative verification) --------------------
  def cached(
    self,
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    cache: LatentCache,
    *,
    n_valid_B=None,
    mode: str = "decode",
  ):
    """(y_BTD, new LatentCache, None): no record, a rollback only sets the length back.

    positions_BT as in `Attention.cached`. mode "fresh": causal attention over the chunk's own
    decompressed rows; "extend": over the whole cache decompressed; "decode": the absorbed path
    (T = K+1 for speculative verification)."""
    cos_sin = self.rope_cos_sin(positions_BT)
    rows_BTC = self.latent_cache_rows(x_BTD, positions_BT, cos_sin)
    new = LatentCache(write_rows(cache.rows, rows_BTC, positions_BT[:, 0]))
    q_nope, q_pe = self.queries(x_BTD, positions_BT, cos_sin)
    if mode == "fresh":
      out = self._attend(q_nope, q_pe, rows_BTC)
    elif mode == "extend":
      out = self._attend(q_nope, q_pe, new.rows, positions_BT + 1)
    else:
      out = self._absorbed(q_nope, q_pe, new.rows, positions_BT + 1)
    return self.out_proj(out.reshape(*out.shape[:2], -1)), new, None
