"""MLA mixer against an independent float64 numpy implementation of reference section 1.2.

The numpy reference follows DeepSeek's own formulation of the rope: the d_r channels are permuted to
[even | odd] and then rotated with the rotate-half formula and cos/sin = cat(freqs, freqs) * mscale.
That must give the same attention as the module's interleaved pairing. YaRN frequencies come from
transformers in the YaRN cases.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import LlamaConfig as HFLlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from zebra_jax.config import HybridConfig
from zebra_jax.models.attention import rope_for
from zebra_jax.models.mla import MLA

YARN32 = {
  "rope_type": "yarn",
  "factor": 32.0,
  "original_max_position_embeddings": 8192,
  "beta_fast": 32.0,
  "beta_slow": 1.0,
}
YARN8 = dict(YARN32, factor=8.0)

BASE = dict(
  vocab_size=32,
  hidden_size=64,
  intermediate_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=16,
  rope_theta=500000.0,
  mla_layers=(0, 1),
  q_lora_rank=32,
  kv_lora_rank=24,
)

CASES = {
  "gqa": dict(),
  "full_kv_head": dict(use_full_kv_head=True),
  "q_proj": dict(q_lora_rank=None),
  "lora_norm": dict(use_lora_layer_norm=True, lora_layer_norm_eps=1e-5),
  "odd_dims": dict(qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=8, num_key_value_heads=1),
  "yarn": dict(mla_rope_scaling=YARN32, use_lora_layer_norm=True),
  "per_layer_ranks": dict(mla_layer_ranks={1: (None, 16)}),
}


def _config(**kw):
  return HybridConfig(**{**BASE, **kw})


def _hf_inv_freq(d_r, theta, scaling):
  """(inv_freq float64, attention factor) from transformers."""
  if scaling is None:
    return 1.0 / theta ** (np.arange(0, d_r, 2, dtype=np.float64) / d_r), 1.0
  params = {"rope_theta": theta, **scaling}
  hf = HFLlamaConfig(
    hidden_size=4 * d_r,
    num_attention_heads=4,
    head_dim=d_r,
    max_position_embeddings=int(scaling["factor"] * scaling["original_max_position_embeddings"]),
    rope_parameters=params,
  )
  inv, factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
  return inv.numpy().astype(np.float64), float(factor)


def _randomise_norms(mla, seed):
  rng = np.random.RandomState(seed)
  for norm in (mla.q_a_layernorm, mla.kv_a_layernorm):
    if norm is not None:
      norm.weight[...] = jnp.asarray(1.0 + 0.5 * rng.randn(*norm.weight.shape), jnp.float32)


def _p(lin):
  return np.asarray(lin.kernel[...], np.float64)


# ---------------------------------------------------------------------------------------------
# independent numpy reference (DeepSeek layout: (B, heads, T, dim))
def _rms(x, w, eps):
  return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _deepseek_rope(x_BHTR, pos_BT, inv_freq, mscale):
  """DeepSeek apply_rotary_pos_emb: permute to [even | odd], then rotate-half with cat(freqs, freqs)."""
  B, Hh, T, R = x_BHTR.shape
  x = x_BHTR.reshape(B, Hh, T, R // 2, 2).swapaxes(-1, -2).reshape(B, Hh, T, R)
  freqs = pos_BT[:, None, :, None].astype(np.float64) * inv_freq  # (B, 1, T, R/2)
  emb = np.concatenate([freqs, freqs], axis=-1)
  cos, sin = np.cos(emb) * mscale, np.sin(emb) * mscale
  rot = np.concatenate([-x[..., R // 2 :], x[..., : R // 2]], axis=-1)
  return x * cos + rot * sin


def reference_mla(mla, cfg, x_BTD, pos_BT, inv_freq, mscale, layer=0):
  x = np.asarray(x_BTD, np.float64)
  B, T, _ = x.shape
  H, G = cfg.num_attention_heads, cfg.mla_kv_heads
  d_n, d_r, d_v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
  r_q, r_kv = cfg.mla_ranks(layer)
  eps = cfg.lora_layer_norm_eps
  if r_q is None:
    q = x @ _p(mla.q_proj)
  else:
    q = x @ _p(mla.q_a_proj)
    if cfg.use_lora_layer_norm:
      q = _rms(q, np.asarray(mla.q_a_layernorm.weight[...], np.float64), eps)
    q = q @ _p(mla.q_b_proj)
  q = q.reshape(B, T, H, d_n + d_r).transpose(0, 2, 1, 3)
  q_nope, q_pe = q[..., :d_n], q[..., d_n:]
  ckv = x @ _p(mla.kv_a_proj_with_mqa)
  c, k_pe = ckv[..., :r_kv], ckv[..., r_kv:][:, None]  # (B, 1, T, d_r): one head shared by all
  if cfg.use_lora_layer_norm:
    c = _rms(c, np.asarray(mla.kv_a_layernorm.weight[...], np.float64), eps)
  kv = (c @ _p(mla.kv_b_proj)).reshape(B, T, G, d_n + d_v).transpose(0, 2, 1, 3)
  kv = np.repeat(kv, H // G, axis=1)  # repeat_kv: query head h uses kv head h // (H/G)
  k_nope, v = kv[..., :d_n], kv[..., d_n:]
  q_pe = _deepseek_rope(q_pe, pos_BT, inv_freq, mscale)
  k_pe = _deepseek_rope(k_pe, pos_BT, inv_freq, mscale)
  Q = np.concatenate([q_nope, q_pe], -1)
  K = np.concatenate([k_nope, np.broadcast_to(k_pe, (B, H, T, d_r))], -1)
  s = Q @ K.swapaxes(-1, -2) * (d_n + d_r) ** -0.5
  s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H * d_v)
  return o @ _p(mla.out_proj)


def _inputs(cfg, B=2, T=9, start=0, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.randn(B, T, cfg.hidden_size).astype(np.float32)
  pos = (start + np.arange(T)[None] + np.array([[0], [37]])[:B]).astype(np.int32)
  return x, pos


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_numpy_reference(name):
  cfg = _config(**CASES[name])
  layer = 1 if name == "per_layer_ranks" else 0
  mla = MLA(cfg, layer, rngs=nnx.Rngs(1))
  _randomise_norms(mla, 2)
  start = 5000 if cfg.mla_rope_scaling else 3
  x, pos = _inputs(cfg, start=start)
  inv_freq, mscale = _hf_inv_freq(cfg.qk_rope_head_dim, cfg.mla_rope_theta, cfg.mla_rope_scaling)
  ref = reference_mla(mla, cfg, x, pos, inv_freq, mscale, layer)
  out = np.asarray(jax.jit(lambda m, a, b: m(a, b))(mla, jnp.asarray(x), jnp.asarray(pos)))
  assert out.shape == ref.shape
  # float32 angles at positions ~5000 limit the YaRN case to ~1e-4 relative
  tol = 2e-4 if cfg.mla_rope_scaling else 2e-5
  np.testing.assert_allclose(out, ref, atol=tol * np.abs(ref).max(), rtol=0)


def test_parameter_shapes_and_axes():
  cfg = _config(use_lora_layer_norm=True)
  mla = MLA(cfg, 0, rngs=nnx.Rngs(0))
  H, G, d = 4, 2, 64
  assert mla.q_proj is None
  assert mla.q_a_proj.kernel.shape == (d, 32)
  assert mla.q_b_proj.kernel.shape == (32, H * 16)
  assert mla.kv_a_proj_with_mqa.kernel.shape == (d, 24 + 8)
  assert mla.kv_b_proj.kernel.shape == (24, G * (8 + 16))
  assert mla.out_proj.kernel.shape == (H * 16, d)
  assert mla.q_a_layernorm.weight.shape == (32,) and mla.kv_a_layernorm.weight.shape == (24,)
  axes = {
    n: getattr(mla, n).kernel.get_metadata()["out_sharding"]
    for n in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "out_proj")
  }
  assert axes == {
    "q_a_proj": ("embed", "q_lora"),
    "q_b_proj": ("q_lora", "q_heads"),
    "kv_a_proj_with_mqa": ("embed", "kv_lora"),
    "kv_b_proj": ("kv_lora", "kv_heads"),
    "out_proj": ("q_heads", "embed"),
  }
  assert mla.kv_a_layernorm.weight.get_metadata()["out_sharding"] == ("norm",)
  full = MLA(_config(q_lora_rank=None, use_full_kv_head=True), 0, rngs=nnx.Rngs(0))
  assert full.q_a_proj is None and full.q_proj.kernel.shape == (d, H * 16)
  assert full.kv_b_proj.kernel.shape == (24, H * 24)
  assert full.q_a_layernorm is None and full.kv_a_layernorm is None


@pytest.mark.parametrize("factor, expected", [(32.0, 1.3466), (8.0, 1.2079)])
@pytest.mark.parametrize("d_r", [8, 32, 64])
def test_yarn_frequencies_match_transformers(factor, expected, d_r):
  scaling = dict(YARN32, factor=factor)
  ref_inv, ref_factor = _hf_inv_freq(d_r, 500000.0, scaling)
  inv, att = rope_for(d_r, 500000.0, scaling, 131072)
  np.testing.assert_allclose(inv, ref_inv, rtol=1e-6)
  assert att == pytest.approx(ref_factor, rel=1e-7)
  assert att == pytest.approx(expected, abs=1e-4)
  assert att == pytest.approx(0.1 * math.log(factor) + 1.0, rel=1e-12)


def test_softmax_scale():
  assert MLA(_config(mla_rope_scaling=YARN32), 0, rngs=nnx.Rngs(0)).softmax_scale == pytest.approx(16**-0.5)
  odd = MLA(_config(qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=8), 0, rngs=nnx.Rngs(0))
  assert odd.softmax_scale == pytest.approx(16**-0.5)
  odd2 = MLA(_config(qk_nope_head_dim=4, qk_rope_head_dim=8), 0, rngs=nnx.Rngs(0))
  assert odd2.softmax_scale == pytest.approx(12**-0.5)
  # DeepSeek's correction exists only for a non-zero mscale_all_dim, which Zebra never sets
  ds = MLA(_config(mla_rope_scaling=dict(YARN32, mscale=1.0, mscale_all_dim=1.0)), 0, rngs=nnx.Rngs(0))
  assert ds.softmax_scale == pytest.approx(16**-0.5 * (0.1 * math.log(32) + 1) ** 2)


def test_causal():
  cfg = _config(mla_rope_scaling=YARN32, use_lora_layer_norm=True)
  mla = MLA(cfg, 0, rngs=nnx.Rngs(3))
  x, pos = _inputs(cfg, T=12, start=100)
  x2 = x.copy()
  x2[:, 7:] += np.random.RandomState(9).randn(*x2[:, 7:].shape).astype(np.float32) * 3
  y1 = np.asarray(mla(jnp.asarray(x), jnp.asarray(pos)))
  y2 = np.asarray(mla(jnp.asarray(x2), jnp.asarray(pos)))
  np.testing.assert_array_equal(y1[:, :7], y2[:, :7])
  assert np.abs(y1[:, 7:] - y2[:, 7:]).max() > 1e-3


def test_bfloat16_compute_is_close():
  cfg = _config(mla_rope_scaling=YARN32)
  x, pos = _inputs(cfg, start=4000)
  m32 = MLA(cfg, 0, rngs=nnx.Rngs(4))
  m16 = MLA(cfg.replace(dtype="bfloat16"), 0, rngs=nnx.Rngs(4))
  y32 = np.asarray(m32(jnp.asarray(x), jnp.asarray(pos)))
  y16 = m16(jnp.asarray(x), jnp.asarray(pos))
  assert y16.dtype == jnp.bfloat16
  err = np.abs(np.asarray(y16, np.float32) - y32).max() / np.abs(y32).max()
  assert err < 3e-2


def test_latent_cache_rows_and_absorbed_attention():
  """The decode helpers: cache rows are [N(c_kv) | rope(k_pe)], and scoring in latent space with
  W_UK / W_UV (reference 1.6) reproduces the forward pass."""
  cfg = _config(mla_rope_scaling=YARN8, use_lora_layer_norm=True)
  mla = MLA(cfg, 0, rngs=nnx.Rngs(5))
  _randomise_norms(mla, 6)
  x, pos = _inputs(cfg, T=7, start=9000)
  B, T = pos.shape
  H, G, d_n, d_r, r_kv = 4, 2, 8, 8, 24
  inv_freq, mscale = _hf_inv_freq(d_r, cfg.mla_rope_theta, cfg.mla_rope_scaling)

  rows = np.asarray(mla.latent_cache_rows(jnp.asarray(x), jnp.asarray(pos)), np.float64)
  assert rows.shape == (B, T, r_kv + d_r)
  ckv = np.asarray(x, np.float64) @ _p(mla.kv_a_proj_with_mqa)
  c = _rms(ckv[..., :r_kv], np.asarray(mla.kv_a_layernorm.weight[...], np.float64), 1e-6)
  np.testing.assert_allclose(rows[..., :r_kv], c, atol=1e-5)
  # our interleaved rope, permuted to [even | odd], is DeepSeek's rotated vector
  k_ref = _deepseek_rope(ckv[..., r_kv:][:, None], pos, inv_freq, mscale)[:, 0]
  ours = np.concatenate([rows[..., r_kv::2], rows[..., r_kv + 1 :: 2]], -1)
  np.testing.assert_allclose(ours, k_ref, atol=2e-4 * np.abs(k_ref).max())

  w_uk, w_uv = (np.asarray(w, np.float64) for w in mla.kv_b_views())
  assert w_uk.shape == (r_kv, G, d_n) and w_uv.shape == (r_kv, G, 16)
  q_nope, q_pe = (np.asarray(a, np.float64) for a in mla.queries(jnp.asarray(x), jnp.asarray(pos)))
  g_of_h = np.arange(H) // (H // G)
  q_lat = np.einsum("bthn,chn->bthc", q_nope, w_uk[:, g_of_h])  # q_nope mapped into latent space
  s = (
    np.einsum("bthc,bsc->bhts", q_lat, rows[..., :r_kv]) + np.einsum("bthr,bsr->bhts", q_pe, rows[..., r_kv:])
  ) * mla.softmax_scale
  s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ctx = np.einsum("bhts,bsc->bthc", p, rows[..., :r_kv])
  o = np.einsum("bthc,chv->bthv", ctx, w_uv[:, g_of_h]).reshape(B, T, -1) @ _p(mla.out_proj)
  y = np.asarray(mla(jnp.asarray(x), jnp.asarray(pos)))
  np.testing.assert_allclose(y, o, atol=1e-4 * np.abs(o).max())
  ref = reference_mla(mla, cfg, x, pos, inv_freq, mscale)
  np.testing.assert_allclose(o, ref, atol=3e-4 * np.abs(ref).max())


def test_rope_changes_scores_with_position():
  """Shifting every position by the same offset leaves attention unchanged (relative positions);
  the rope channels do carry position (a non-uniform shift changes the output)."""
  cfg = _config()
  mla = MLA(cfg, 0, rngs=nnx.Rngs(7))
  x, pos = _inputs(cfg, T=6)
  y0 = np.asarray(mla(jnp.asarray(x), jnp.asarray(pos)))
  y1 = np.asarray(mla(jnp.asarray(x), jnp.asarray(pos + 50)))
  np.testing.assert_allclose(y0, y1, atol=1e-4 * np.abs(y0).max())
  y2 = np.asarray(mla(jnp.asarray(x), jnp.asarray(pos * 3)))
  assert np.abs(y2 - y0).max() > 1e-3 * np.abs(y0).max()
