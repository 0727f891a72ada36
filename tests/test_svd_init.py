"""SVD initialisation of MLA from a random Llama teacher (reference section 2), checked with numpy.

Torch layout W (out x in) = our kernel.T. Every expectation is computed here from the teacher's
weights with numpy (float64), never from the init code's output.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zebra_jax.config import ConfigError, HybridConfig, LlamaConfig
from zebra_jax.init import init_hybrid
from zebra_jax.init import svd_mla
from zebra_jax.models.hybrid import Llama

H, NKV, DH, D, L = 4, 2, 16, 64, 4


def _teacher(seed=0, tie=False, spectrum=None):
  cfg = LlamaConfig(
    vocab_size=48,
    hidden_size=D,
    intermediate_size=96,
    num_hidden_layers=L,
    num_attention_heads=H,
    num_key_value_heads=NKV,
    head_dim=DH,
    rope_theta=500000.0,
    tie_word_embeddings=tie,
    rms_norm_eps=1e-5,
  )
  t = Llama(cfg, rngs=nnx.Rngs(seed))
  rng = np.random.RandomState(seed + 100)
  for blk in t.layers:  # non-trivial norms so that copying them is visible
    for n in (blk.input_layernorm, blk.post_attention_layernorm):
      n.weight[...] = jnp.asarray(1 + 0.3 * rng.randn(D), jnp.float32)
    if spectrum is not None:  # decaying spectra make the energy rule pick different ranks per layer
      for name in ("q_proj", "k_proj", "v_proj"):
        k = getattr(blk.mixer, name).kernel
        u, _, vt = np.linalg.svd(rng.randn(*k.shape), full_matrices=False)
        decay = spectrum * (0.5 + rng.rand())
        k[...] = jnp.asarray((u * decay ** np.arange(u.shape[1])) @ vt, jnp.float32)
  t.norm.weight[...] = jnp.asarray(1 + 0.3 * rng.randn(D), jnp.float32)
  return t


def _W(lin):  # torch layout, float64
  return np.asarray(lin.kernel[...], np.float64).T


def _heads(w, n):
  return w.reshape(n, -1, w.shape[-1])


def _mla_products(m, cfg):
  """(q (H, d_qk, d) = q_b q_a or q_proj, kv (G, d_n + d_v, d) = kv_b kv_a[:r_kv], rope key rows)."""
  r_kv = m.r_kv
  q = _W(m.q_proj) if m.q_proj is not None else _W(m.q_b_proj) @ _W(m.q_a_proj)
  kva = _W(m.kv_a_proj_with_mqa)
  kv = _W(m.kv_b_proj) @ kva[:r_kv]
  return _heads(q, cfg.num_attention_heads), _heads(kv, cfg.mla_kv_heads), kva[r_kv:]


@pytest.fixture(scope="module")
def teacher():
  return _teacher()


def _close(a, b, tol=2e-5):
  np.testing.assert_allclose(a, b, atol=tol * max(np.abs(b).max(), 1e-30), rtol=0)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full_kv", [False, True])
def test_full_rank_reproduces_teacher(teacher, full_kv):
  cfg = HybridConfig.from_llama(
    teacher.config,
    mla_layers=(0, 1, 2),
    attn_layers=(3,),
    q_lora_rank=64,
    kv_lora_rank=64,
    use_full_kv_head=full_kv,
  )
  student = init_hybrid(teacher, cfg)
  G = H if full_kv else NKV
  d_n = d_r = DH // 2
  for i in range(3):
    m, a = student.layers[i].mixer, teacher.layers[i].mixer
    assert student.layers[i].mixer_type == "mla"
    q, kv, rope_k = _mla_products(m, cfg)
    wq, wk, wv = _heads(_W(a.q_proj), H), _heads(_W(a.k_proj), NKV), _heads(_W(a.v_proj), NKV)
    _close(q[:, :d_n], wq[:, :d_n])  # nope rows: first d_n of each head
    _close(q[:, d_n:], wq[:, DH - d_r :])  # rope rows: last d_r of each head
    src = np.arange(G) // (G // NKV)  # kv head g copies teacher head g // (G/n_kv)
    assert kv.shape == (G, d_n + DH, D)
    _close(kv[:, :d_n], wk[src, :d_n])
    _close(kv[:, d_n:], wv[src])
    np.testing.assert_allclose(rope_k, wk[:, DH - d_r :].mean(0), atol=1e-6)
    np.testing.assert_array_equal(_W(m.out_proj), _W(a.o_proj))
  # everything but the mixers comes from the teacher
  np.testing.assert_array_equal(student.embed_tokens.embedding[...], teacher.embed_tokens.embedding[...])
  np.testing.assert_array_equal(student.norm.weight[...], teacher.norm.weight[...])
  np.testing.assert_array_equal(student.lm_head.kernel[...], teacher.lm_head.kernel[...])
  for s, t in zip(student.layers, teacher.layers):
    np.testing.assert_array_equal(s.input_layernorm.weight[...], t.input_layernorm.weight[...])
    np.testing.assert_array_equal(
      s.post_attention_layernorm.weight[...], t.post_attention_layernorm.weight[...]
    )
    for n in ("gate_proj", "up_proj", "down_proj"):
      np.testing.assert_array_equal(getattr(s.mlp, n).kernel[...], getattr(t.mlp, n).kernel[...])
  for n in ("q_proj", "k_proj", "v_proj", "o_proj"):  # the attention layer is a copy
    np.testing.assert_array_equal(
      getattr(student.layers[3].mixer, n).kernel[...], getattr(teacher.layers[3].mixer, n).kernel[...]
    )


def test_sigma_sits_in_the_down_projections(teacher):
  """q_b and kv_b are U's columns (orthonormal when all rows are kept); q_a / kv_a carry S V^T."""
  cfg = HybridConfig.from_llama(
    teacher.config,
    mla_layers=(0,),
    attn_layers=(1, 2, 3),
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_rope_head_dim=0,
  )
  m = init_hybrid(teacher, cfg).layers[0].mixer
  qb = _W(m.q_b_proj)
  np.testing.assert_allclose(qb.T @ qb, np.eye(24), atol=1e-5)
  kvb = _W(m.kv_b_proj)  # with d_r = 0 every K row is kept, so the columns stay orthonormal
  np.testing.assert_allclose(kvb.T @ kvb, np.eye(16), atol=1e-5)
  a = teacher.layers[0].mixer
  s_q = np.linalg.svd(_W(a.q_proj), compute_uv=False)
  np.testing.assert_allclose(np.linalg.norm(_W(m.q_a_proj), axis=1), s_q[:24], rtol=1e-5)


def test_reduced_rank_is_eckart_young(teacher):
  """With d_r = 0 (all K rows kept) and d_qk = d_h (all Q rows kept) the products are the best
  rank-r approximations: ||W - W_r||_F^2 = sum of the discarded s^2 and ||W - W_r||_2 = s_{r+1}."""
  r_q, r_kv = 24, 16
  cfg = HybridConfig.from_llama(
    teacher.config,
    mla_layers=(1, 2),
    attn_layers=(0, 3),
    q_lora_rank=r_q,
    kv_lora_rank=r_kv,
    qk_rope_head_dim=0,
  )
  student = init_hybrid(teacher, cfg)
  for i in (1, 2):
    m, a = student.layers[i].mixer, teacher.layers[i].mixer
    q, kv, rope_k = _mla_products(m, cfg)
    assert rope_k.shape == (0, D)
    w_q = _W(a.q_proj)
    w_kv = np.concatenate([_W(a.k_proj), _W(a.v_proj)])  # [W_K; W_V]
    ours_kv = np.concatenate([kv[:, :DH].reshape(-1, D), kv[:, DH:].reshape(-1, D)])
    for w, approx, r in ((w_q, q.reshape(-1, D), r_q), (w_kv, ours_kv, r_kv)):
      s = np.linalg.svd(w, compute_uv=False)
      err = w - approx
      assert np.sum(err**2) == pytest.approx(np.sum(s[r:] ** 2), rel=1e-4)
      assert np.linalg.norm(err, 2) == pytest.approx(s[r], rel=1e-4)


@pytest.mark.parametrize("full_kv", [False, True])
def test_reduced_rank_rows_are_those_of_the_best_approximation(teacher, full_kv):
  """Default d_r = d_n = d_h/2, and d_n + d_r < d_h: the kept rows equal the same rows of numpy's
  rank-r truncated SVD of W_Q and of the (repeat-interleaved) [W_K; W_V]."""
  r_q, r_kv = 40, 24
  d_n, d_r = 4, 8
  cfg = HybridConfig.from_llama(
    teacher.config,
    mla_layers=(2,),
    attn_layers=(0, 1, 3),
    q_lora_rank=r_q,
    kv_lora_rank=r_kv,
    qk_nope_head_dim=d_n,
    qk_rope_head_dim=d_r,
    use_full_kv_head=full_kv,
  )
  m, a = init_hybrid(teacher, cfg).layers[2].mixer, teacher.layers[2].mixer
  q, kv, rope_k = _mla_products(m, cfg)

  def truncated(w, r):
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]

  wq_r = _heads(truncated(_W(a.q_proj), r_q), H)
  _close(q[:, :d_n], wq_r[:, :d_n], 1e-4)
  _close(q[:, d_n:], wq_r[:, DH - d_r :], 1e-4)
  G = H if full_kv else NKV
  wk, wv = _heads(_W(a.k_proj), NKV), _heads(_W(a.v_proj), NKV)
  src = np.arange(G) // (G // NKV)
  stack = np.concatenate([wk[src].reshape(-1, D), wv[src].reshape(-1, D)])
  st_r = truncated(stack, r_kv)
  _close(kv[:, :d_n], _heads(st_r[: G * DH], G)[:, :d_n], 1e-4)
  _close(kv[:, d_n:], _heads(st_r[G * DH :], G), 1e-4)
  np.testing.assert_allclose(rope_k, wk[:, DH - d_r :].mean(0), atol=1e-6)


def test_q_proj_without_low_rank(teacher):
  cfg = HybridConfig.from_llama(
    teacher.config,
    mla_layers=(0,),
    attn_layers=(1, 2, 3),
    q_lora_rank=None,
    kv_lora_rank=32,
    qk_nope_head_dim=6,
    qk_rope_head_dim=4,
  )
  m, a = init_hybrid(teacher, cfg).layers[0].mixer, teacher.layers[0].mixer
  assert m.q_a_proj is None
  q = _heads(_W(m.q_proj), H)
  wq = _heads(_W(a.q_proj), H)
  np.testing.assert_array_equal(q[:, :6], wq[:, :6])
  np.testing.assert_array_equal(q[:, 6:], wq[:, 12:])


def test_lora_layer_norms_are_ones(teacher):
  cfg = HybridConfig.from_llama(
    teacher.config,
    mla_layers=(0,),
    attn_layers=(1, 2, 3),
    q_lora_rank=32,
    kv_lora_rank=32,
    use_lora_layer_norm=True,
  )
  m = init_hybrid(teacher, cfg).layers[0].mixer
  np.testing.assert_array_equal(m.q_a_layernorm.weight[...], np.ones(32))
  np.testing.assert_array_equal(m.kv_a_layernorm.weight[...], np.ones(32))


# ---------------------------------------------------------------------------------------------
def _energy_rank_np(w, ratio, div, cap):
  s2 = np.linalg.svd(w, compute_uv=False) ** 2
  k = 0
  acc = 0.0
  for v in s2:  # count the leading singular values whose cumulative energy fraction is <= ratio
    acc += v
    if acc / s2.sum() <= ratio:
      k += 1
  k = max(k, 1)
  return min(-(-k // div) * div, cap // div * div)


@pytest.mark.parametrize("fixed_first_last, div", [(True, 8), (False, 8), (False, 1)])
def test_dynamic_ranks_energy_rule(fixed_first_last, div):
  teacher = _teacher(seed=3, spectrum=0.93)
  cfg = HybridConfig.from_llama(
    teacher.config, mla_layers=(0, 1, 2, 3), q_lora_rank=48, kv_lora_rank=40, qkv_rank_divisor=div
  )
  qr, kvr = 0.9, 0.75
  student = init_hybrid(
    teacher, cfg, q_energy_ratio=qr, kv_energy_ratio=kvr, fixed_rank_first_last=fixed_first_last
  )
  ranks = student.config.mla_layer_ranks
  assert sorted(ranks) == [0, 1, 2, 3]
  seen = set()
  for i in range(L):
    a = teacher.layers[i].mixer
    if fixed_first_last and i in (0, L - 1):
      expected = (48, 40)
    else:
      w_kv = np.concatenate([_W(a.k_proj), _W(a.v_proj)])
      expected = (_energy_rank_np(_W(a.q_proj), qr, div, 64), _energy_rank_np(w_kv, kvr, div, 64))
    assert ranks[i] == expected, i
    assert ranks[i][0] % div == 0 and ranks[i][1] % div == 0
    m = student.layers[i].mixer  # the student is built at those ranks
    assert m.q_a_proj.kernel.shape == (D, ranks[i][0])
    assert m.kv_a_proj_with_mqa.kernel.shape == (D, ranks[i][1] + DH // 2)
    seen.add(ranks[i])
  assert len(seen) > 1  # the rule is not a constant on this teacher


def test_energy_rank_counts_values_up_to_the_ratio():
  s = np.array([2.0, 2.0, 1.0, 1.0])  # cumulative energy fractions 0.4, 0.8, 0.9, 1.0 (exact)
  assert [svd_mla.energy_rank(s, r, 1, 4) for r in (0.1, 0.4, 0.79, 0.8, 0.85, 0.95, 1.0)] == [
    1,
    1,
    1,
    2,
    2,
    3,
    4,
  ]
  assert svd_mla.energy_rank(s, 0.8, 8, 64) == 8


def test_dynamic_ranks_none_ratio_keeps_fixed_rank_and_caps():
  teacher = _teacher(seed=4, spectrum=0.93)
  cfg = HybridConfig.from_llama(
    teacher.config, mla_layers=(1, 2), attn_layers=(0, 3), q_lora_rank=48, kv_lora_rank=40
  )
  ranks = svd_mla.dynamic_ranks(teacher, cfg, q_energy_ratio=None, kv_energy_ratio=1.0)
  for i in (1, 2):
    assert ranks[i][0] == 48
    assert 8 <= ranks[i][1] <= 64 and ranks[i][1] % 8 == 0
  tiny = svd_mla.dynamic_ranks(teacher, cfg, q_energy_ratio=1e-6, kv_energy_ratio=None)
  assert tiny == {1: (8, 40), 2: (8, 40)}  # clamped to >= 1, then rounded up to 8
  assert svd_mla.energy_rank(np.ones(10), 1.0, 8, 10) == 8  # capped at a multiple of 8 <= max


# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_config_error(teacher):
  base = teacher.config
  with pytest.raises(ConfigError, match="kv_lora_rank"):  # larger than [W_K; W_V] can have
    HybridConfig.from_llama(base, mla_layers=(0,), q_lora_rank=32, kv_lora_rank=72)
  with pytest.raises(ConfigError, match="q_lora_rank"):
    HybridConfig.from_llama(base, mla_layers=(0,), q_lora_rank=72, kv_lora_rank=32)
  bad_v = HybridConfig.from_llama(
    base, mla_layers=(0, 1, 2, 3), q_lora_rank=32, kv_lora_rank=32, v_head_dim=8
  )
  with pytest.raises(ConfigError, match="v_head_dim=8 must equal the teacher head_dim=16"):
    init_hybrid(teacher, bad_v)
  too_wide = HybridConfig.from_llama(
    base, mla_layers=(0, 1, 2, 3), q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=12, qk_rope_head_dim=8
  )
  with pytest.raises(ConfigError, match="qk_nope_head_dim \\+ qk_rope_head_dim = 12 \\+ 8"):
    svd_mla.check_teacher_shapes(too_wide)
  ok = HybridConfig.from_llama(base, mla_layers=(0, 1, 2, 3), q_lora_rank=32, kv_lora_rank=32)
  with pytest.raises(ConfigError, match="q_energy_ratio"):
    init_hybrid(teacher, ok, q_energy_ratio=1.5)
  with pytest.raises(ConfigError, match="kv_energy_ratio"):
    svd_mla.dynamic_ranks(teacher, ok, q_energy_ratio=None, kv_energy_ratio=0.0)
  no_q = HybridConfig.from_llama(base, mla_layers=(0, 1, 2, 3), q_lora_rank=None, kv_lora_rank=32)
  with pytest.raises(ConfigError, match="q_lora_rank"):
    init_hybrid(teacher, no_q, q_energy_ratio=0.9)
  # a mixer built at other ranks than the config's
  student = init_hybrid(teacher, ok)
  other = ok.replace(kv_lora_rank=16)
  with pytest.raises(ConfigError, match="kv_lora_rank"):
    svd_mla.init_mla_from_attention(student.layers[0].mixer, teacher.layers[0].mixer, other, 0)
