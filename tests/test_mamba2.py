"""Mamba2 mixer, the SSD dispatch and the Mamba2-from-attention init.

The mixer is checked against a float64 numpy implementation written here from the reference spec
(section 3), which reads the weights in PyTorch layout through the documented mapping.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from zebra_jax.config import ConfigError, HybridConfig, LlamaConfig
from zebra_jax.init import init_hybrid
from zebra_jax.init.mamba_from_attention import init_mamba2_from_attention
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.models.mamba2 import Mamba2, MambaState
from zebra_jax.ops import ssd
from zebra_jax.ops.dispatch import Kernel

LLAMA = dict(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=3,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-5,
)
# Zebra shape: ngroups = nheads = H, headdim = d_state = head_dim, d_xb = n_kv*head_dim.
ZEBRA = dict(chunk_size=16)
# headdim 4, d_state 16: nheads 8, ngroups 2 (< nheads), x in 4 kv groups, B in 1 group.
GROUPED = dict(chunk_size=16, headdim=4, d_state=16)


def hybrid(**kw):
  return HybridConfig(**{**LLAMA, **kw})


# --------------------------------------------------------------------------------------------- #
# Float64 numpy oracle (PyTorch-layout weights)
# --------------------------------------------------------------------------------------------- #
def torch_layout(m: Mamba2) -> dict:
  """The mixer's weights as mamba_ssm stores them, via the mapping documented in mamba2.py."""
  f = lambda a: np.asarray(a[...], np.float64)
  return dict(
    in_proj=f(m.in_proj.kernel).T,
    conv_w=f(m.conv1d.kernel).T[:, None, :],
    conv_b=f(m.conv1d.bias),
    A_log=f(m.A_log),
    D=f(m.D),
    dt_bias=f(m.dt_bias),
    norm_w=f(m.norm.weight),
    out_proj=f(m.out_proj.kernel).T,
  )


def numpy_conv(xBC, conv_w, conv_b, left):
  """Causal depthwise conv: torch cross-correlation over [left padding | x]."""
  K = conv_w.shape[-1]
  xp = np.concatenate([left, xBC], axis=1)
  out = np.zeros_like(xBC)
  for t in range(xBC.shape[1]):
    for k in range(K):
      out[:, t] += conv_w[:, 0, k] * xp[:, t + k]
  return out + conv_b, xp[:, xp.shape[1] - (K - 1) :]


def numpy_mamba2(p, cfg, u, ssm0=None, conv0=None):
  u = np.asarray(u, np.float64)
  Bsz, T, _ = u.shape
  E, X, P, N, G, K = cfg.d_inner, cfg.d_xb, cfg.headdim, cfg.d_state, cfg.ngroups, cfg.d_conv
  H = E // P
  proj = u @ p["in_proj"].T
  z, xBC, dt = proj[..., :E], proj[..., E : 2 * E + 2 * X], proj[..., 2 * E + 2 * X :]
  assert dt.shape[-1] == H
  left = np.zeros((Bsz, K - 1, xBC.shape[-1])) if conv0 is None else np.asarray(conv0, np.float64)
  conv, conv_state = numpy_conv(xBC, p["conv_w"], p["conv_b"], left)
  act = conv / (1.0 + np.exp(-conv))
  xs, Bs, Cs = act[..., :X], act[..., X : 2 * X], act[..., 2 * X :]
  dt = np.logaddexp(0.0, dt + p["dt_bias"])
  A = -np.exp(p["A_log"])
  S = np.zeros((Bsz, H, P, N)) if ssm0 is None else np.asarray(ssm0, np.float64).copy()
  y = np.zeros((Bsz, T, H, P))
  x_groups, b_groups = X // P, X // N
  for h in range(H):
    xi = h // (H // x_groups)  # value (kv) group of this head
    gi = h // (H // G)  # B/C group of this head after B's repeat to G groups
    bi = gi // (G // b_groups)  # B's original group
    xh = xs[..., xi * P : (xi + 1) * P]
    Bh, Ch = Bs[..., bi * N : (bi + 1) * N], Cs[..., gi * N : (gi + 1) * N]
    for t in range(T):
      d = dt[:, t, h][:, None, None]
      S[:, h] = np.exp(d * A[h]) * S[:, h] + d * xh[:, t, :, None] * Bh[:, t, None, :]
      y[:, t, h] = np.einsum("bpn,bn->bp", S[:, h], Ch[:, t]) + p["D"][h] * xh[:, t]
  g = y.reshape(Bsz, T, E) * z / (1.0 + np.exp(-z))
  gg = g.reshape(Bsz, T, G, E // G)
  gg = gg / np.sqrt(np.mean(gg * gg, axis=-1, keepdims=True) + cfg.gated_norm_eps)
  out = (gg.reshape(Bsz, T, E) * p["norm_w"]) @ p["out_proj"].T
  return out, S, conv_state


def make_mixer(cfg, seed=0):
  m = Mamba2(cfg, 0, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed + 100)
  # D = 1 and norm weight = 1 at init would hide mistakes in how they are applied.
  m.D[...] = jnp.asarray(rng.uniform(0.5, 1.5, m.D.shape), jnp.float32)
  m.norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, m.norm.weight.shape), jnp.float32)
  return m


@nnx.jit(static_argnames=("return_state",))
def forward(m, u, ssm0=None, conv0=None, return_state=True):
  return m(u, initial_state=ssm0, conv_state=conv0, return_state=return_state)


@nnx.jit
def step(m, u_BD, ssm, conv):
  """One decode token through the cached forward decode_step runs: (y_BD, ssm, conv)."""
  y, st, _ = m.cached(
    u_BD[:, None], None, MambaState(ssm, conv), n_valid_B=jnp.ones(u_BD.shape[:1], jnp.int32), mode="decode"
  )
  return y[:, 0], st.ssm, st.conv


def random_states(cfg, rng, Bsz):
  H = cfg.d_inner // cfg.headdim
  ssm0 = 0.5 * rng.standard_normal((Bsz, H, cfg.headdim, cfg.d_state)).astype(np.float32)
  conv0 = 0.5 * rng.standard_normal((Bsz, cfg.d_conv - 1, cfg.mamba_conv_dim)).astype(np.float32)
  return ssm0, conv0


def close(a, b, tol=2e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


# --------------------------------------------------------------------------------------------- #
# Forward against the oracle
# --------------------------------------------------------------------------------------------- #
# T = 37: two full chunks of 16 and a partial one; T = 7: shorter than one chunk.
@pytest.mark.parametrize(
  "shape,T,with_state",
  [(ZEBRA, 37, False), (ZEBRA, 7, True), (GROUPED, 37, True), (GROUPED, 7, False)],
  ids=["zebra-37", "zebra-7-state", "grouped-37-state", "grouped-7"],
)
def test_forward_matches_numpy_oracle(shape, T, with_state):
  cfg = hybrid(**shape)
  if shape is GROUPED:
    assert cfg.ngroups < cfg.mamba_nheads and cfg.headdim != cfg.d_state
  m = make_mixer(cfg)
  rng = np.random.default_rng(T)
  u = rng.standard_normal((2, T, cfg.hidden_size)).astype(np.float32)
  ssm0, conv0 = random_states(cfg, rng, 2) if with_state else (None, None)
  y, (ssm, conv) = forward(m, u, ssm0, conv0)
  y_ref, ssm_ref, conv_ref = numpy_mamba2(torch_layout(m), cfg, u, ssm0, conv0)
  assert y.shape == (2, T, cfg.hidden_size) and ssm.dtype == jnp.float32
  close(y, y_ref)
  close(ssm, ssm_ref)
  close(conv, conv_ref)


def test_numpy_conv_matches_torch_conv1d():
  """Pins the documented kernel mapping (torch weight[c, 0, k] = kernel[k, c]) for converters."""
  cfg = hybrid(**ZEBRA)
  m = make_mixer(cfg)
  p = torch_layout(m)
  x = np.random.default_rng(0).standard_normal((2, 11, cfg.mamba_conv_dim))
  ours, _ = numpy_conv(x, p["conv_w"], p["conv_b"], np.zeros((2, cfg.d_conv - 1, x.shape[-1])))
  C = x.shape[-1]
  theirs = torch.nn.functional.conv1d(
    torch.from_numpy(x).transpose(1, 2),
    torch.from_numpy(p["conv_w"]),
    torch.from_numpy(p["conv_b"]),
    padding=cfg.d_conv - 1,
    groups=C,
  )[..., :11].transpose(1, 2)
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-12)
  # And the module itself (no state) against torch.
  y, _ = m.conv1d(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(y), theirs.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [ZEBRA, GROUPED], ids=["zebra", "grouped"])
def test_split_sequence_with_carried_state_equals_one_pass(shape):
  cfg = hybrid(**shape)
  m = make_mixer(cfg, seed=1)
  u = np.random.default_rng(1).standard_normal((2, 37, cfg.hidden_size)).astype(np.float32)
  y_ref, ssm_ref, conv_ref = numpy_mamba2(torch_layout(m), cfg, u)
  y_all, (ssm_all, conv_all) = forward(m, u)
  # Three parts: the first shorter than d_conv-1 (the conv state then spans two parts), the cuts
  # inside chunks.
  ys, s, c = [], None, None
  for lo, hi in ((0, 2), (2, 20), (20, 37)):
    y, (s, c) = forward(m, u[:, lo:hi], s, c)
    ys.append(y)
  y = np.concatenate(ys, axis=1)
  close(y, y_ref)
  close(s, ssm_ref)
  close(c, conv_ref)
  close(y, y_all, tol=1e-5)
  close(s, ssm_all, tol=1e-5)
  close(c, conv_all, tol=1e-6)


@pytest.mark.parametrize("shape", [ZEBRA, GROUPED], ids=["zebra", "grouped"])
def test_step_token_by_token_equals_forward(shape):
  cfg = hybrid(**shape)
  m = make_mixer(cfg, seed=2)
  T, prefix = 12, 5
  u = np.random.default_rng(2).standard_normal((2, T, cfg.hidden_size)).astype(np.float32)
  y_ref, ssm_ref, conv_ref = numpy_mamba2(torch_layout(m), cfg, u)
  y_fwd = forward(m, u, return_state=False)  # the plain call DecoderBlock makes
  # From an empty state, every token by step.
  st = MambaState.zeros(cfg, 0, 2, T, m.dtype)
  ssm, conv = st.ssm, st.conv
  ys = []
  for t in range(T):
    y_t, ssm, conv = step(m, u[:, t], ssm, conv)
    ys.append(y_t)
  ys = np.stack(ys, axis=1)
  close(ys, y_ref)
  close(ys, y_fwd, tol=1e-5)
  close(ssm, ssm_ref)
  close(conv, conv_ref)
  # Prefill a prefix, then decode the rest.
  y_pre, (ssm, conv) = forward(m, u[:, :prefix])
  ys = [y_pre]
  for t in range(prefix, T):
    y_t, ssm, conv = step(m, u[:, t], ssm, conv)
    ys.append(y_t[:, None])
  close(np.concatenate(ys, axis=1), y_ref)
  close(ssm, ssm_ref)


def test_bf16_compute_runs_and_is_close_to_float32():
  cfg = hybrid(**ZEBRA)
  m32 = make_mixer(cfg, seed=3)
  m16 = make_mixer(cfg.replace(dtype="bfloat16"), seed=3)
  u = np.random.default_rng(3).standard_normal((2, 37, cfg.hidden_size)).astype(np.float32)
  y32, (s32, _) = forward(m32, u)
  y16, (s16, c16) = forward(m16, jnp.asarray(u, jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16 and c16.dtype == jnp.bfloat16 and s16.dtype == jnp.float32
  y16 = np.asarray(y16, np.float32)
  assert np.isfinite(y16).all()
  assert np.linalg.norm(y16 - y32) / np.linalg.norm(y32) < 3e-2
  assert np.linalg.norm(s16 - s32) / np.linalg.norm(s32) < 3e-2
  # bf16 parameters: the per-head vectors stay float32.
  mb = Mamba2(cfg.replace(dtype="bfloat16", param_dtype="bfloat16"), 0, rngs=nnx.Rngs(3))
  assert mb.in_proj.kernel.dtype == jnp.bfloat16
  assert {mb.A_log.dtype, mb.D.dtype, mb.dt_bias.dtype} == {jnp.dtype(jnp.float32)}
  assert np.isfinite(np.asarray(forward(mb, jnp.asarray(u, jnp.bfloat16))[0], np.float32)).all()


# --------------------------------------------------------------------------------------------- #
# Parameters, config errors
# --------------------------------------------------------------------------------------------- #
def test_default_init_and_logical_axes():
  cfg = hybrid(**ZEBRA)
  m = Mamba2(cfg, 0, rngs=nnx.Rngs(0))
  H = cfg.mamba_nheads
  assert m.in_proj.kernel.shape == (cfg.hidden_size, cfg.mamba_in_proj_dim)
  assert m.conv1d.kernel.shape == (cfg.d_conv, cfg.mamba_conv_dim)
  assert m.out_proj.kernel.shape == (cfg.d_inner, cfg.hidden_size)
  assert m.A_log.shape == m.D.shape == m.dt_bias.shape == (H,)
  bound = 1 / np.sqrt(cfg.d_conv)
  assert np.abs(np.asarray(m.conv1d.kernel[...])).max() <= bound
  np.testing.assert_array_equal(np.asarray(m.norm.weight[...]), 1.0)
  axes = {k: v.out_sharding for k, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
  assert axes[("in_proj", "kernel")] == ("embed", "mamba_in")
  assert axes[("out_proj", "kernel")] == ("mamba_inner", "embed")
  assert axes[("conv1d", "kernel")] == ("conv_kernel", "mamba_conv")
  assert axes[("A_log",)] == axes[("D",)] == axes[("dt_bias",)] == ("mamba_heads",)
  assert axes[("norm", "weight")] == ("mamba_inner",)


def test_bad_mamba_configs_raise_config_error_naming_the_field():
  with pytest.raises(ConfigError, match=r"d_inner=36 is not a multiple of headdim=8"):
    hybrid(d_inner=36, ngroups=4, d_state=9)
  with pytest.raises(ConfigError, match=r"d_inner=32 must equal ngroups\*d_state=2\*8"):
    hybrid(ngroups=2)
  # A config without Mamba2 layers skips that validation; the mixer still refuses.
  no_mamba = hybrid(attn_layers=(0, 1, 2), d_inner=36)
  with pytest.raises(ConfigError, match=r"d_inner=36"):
    Mamba2(no_mamba, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="HybridConfig"):
    Mamba2(LlamaConfig(**LLAMA), 0, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------------------------- #
# ops.ssd dispatch
# --------------------------------------------------------------------------------------------- #
def _ssd_inputs():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return f(1, 5, 2, 3), f(1, 5, 2), -jnp.ones((2,)), f(1, 5, 1, 4), f(1, 5, 1, 4)


def scan(x, dt, A, B, C, impl):
  return ssd.ssd_scan(x, dt, A, B, C, chunk_size=4, impl=impl)  # small chunks: fast eager


def test_ssd_dispatch_errors():
  x, dt, A, B, C = _ssd_inputs()
  assert "reference" in ssd.available_impls()
  with pytest.raises(NotImplementedError, match=r"no Pallas SSD scan kernel is registered"):
    scan(x, dt, A, B, C, "pallas")
  with pytest.raises(NotImplementedError, match=r"no Pallas SSD step kernel is registered"):
    ssd.ssd_step(jnp.zeros((1, 2, 3, 4)), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], impl="pallas")
  with pytest.raises(ValueError, match="bogus"):
    scan(x, dt, A, B, C, "bogus")
  with pytest.raises(ValueError, match="bogus"):
    ssd.ssd_step(jnp.zeros((1, 2, 3, 4)), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], impl="bogus")
  # The mixer passes config.impl through: an explicit "pallas" must not fall back.
  cfg = hybrid(**ZEBRA, impl="pallas")
  m = Mamba2(cfg, 0, rngs=nnx.Rngs(0))
  with pytest.raises(NotImplementedError, match="Pallas"):
    m(jnp.zeros((1, 3, cfg.hidden_size)))


def test_ssd_registry_routes_auto_and_pallas(monkeypatch):
  x, dt, A, B, C = _ssd_inputs()
  calls = []
  ref = ssd.ssd_scan_reference

  def fake_scan(*a, **kw):
    calls.append("scan")
    return ref(*a, **kw)

  reason = [None]
  kernel = Kernel(fake_scan, supports=lambda **kw: reason[0])
  monkeypatch.setitem(ssd.SCAN_KERNELS.kernels, ("pallas", jax.default_backend()), kernel)
  assert "pallas" in ssd.available_impls()
  y_ref = ref(x, dt, A, B, C, chunk_size=4)
  for impl in ("auto", "pallas"):
    np.testing.assert_array_equal(scan(x, dt, A, B, C, impl), y_ref)
  assert calls == ["scan", "scan"]
  scan(x, dt, A, B, C, "reference")
  assert calls == ["scan", "scan"]
  # A kernel that declines a call: auto uses the reference, an explicit request raises the reason.
  reason[0] = "headdim 3 is not supported"
  scan(x, dt, A, B, C, "auto")
  assert calls == ["scan", "scan"]
  with pytest.raises(NotImplementedError, match="headdim 3 is not supported"):
    scan(x, dt, A, B, C, "pallas")
  # The kernel has no step: auto steps with the reference, "pallas" refuses.
  reason[0] = None
  state = jnp.zeros((1, 2, 3, 4))
  ssd.ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], impl="auto")
  with pytest.raises(NotImplementedError, match="step"):
    ssd.ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], impl="pallas")


# --------------------------------------------------------------------------------------------- #
# Init from attention (through init_hybrid)
# --------------------------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def teacher():
  t = CausalLM(LlamaConfig(**LLAMA), rngs=nnx.Rngs(7))
  rng = np.random.default_rng(7)
  # Norm weights are 1 at init; make them distinctive so the copy is checked.
  for blk in t.layers:
    for norm in (blk.input_layernorm, blk.post_attention_layernorm):
      norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.weight.shape), jnp.float32)
  t.norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, t.norm.weight.shape), jnp.float32)
  return t


def _a(v):
  return np.asarray(v[...])


@pytest.mark.parametrize("attn_layers", [(), (1,)], ids=["all_mamba", "mixed"])
def test_init_from_attention_copies_qkvo_and_keeps_mamba_defaults(teacher, attn_layers):
  cfg = HybridConfig.from_llama(teacher.config, mla_layers=(), attn_layers=attn_layers, chunk_size=8)
  student = init_hybrid(teacher, cfg, seed=3)
  E, X, H = cfg.d_inner, cfg.d_xb, cfg.mamba_nheads
  assert cfg.layer_types() == tuple("attention" if i in attn_layers else "mamba2" for i in range(3))
  for i, (s, t) in enumerate(zip(student.layers, teacher.layers)):
    np.testing.assert_array_equal(_a(s.input_layernorm.weight), _a(t.input_layernorm.weight))
    np.testing.assert_array_equal(
      _a(s.post_attention_layernorm.weight), _a(t.post_attention_layernorm.weight)
    )
    for name in ("gate_proj", "up_proj", "down_proj"):
      np.testing.assert_array_equal(_a(getattr(s.mlp, name).kernel), _a(getattr(t.mlp, name).kernel))
    if i in attn_layers:
      assert isinstance(s.mixer, type(t.mixer))
      continue
    mx, at = s.mixer, t.mixer
    assert isinstance(mx, Mamba2)
    w_in = _a(mx.in_proj.kernel)
    # torch in_proj.weight rows = our columns: [z | x | B | C | dt].
    np.testing.assert_array_equal(w_in[:, E : E + X], _a(at.v_proj.kernel))
    np.testing.assert_array_equal(w_in[:, E + X : E + 2 * X], _a(at.k_proj.kernel))
    np.testing.assert_array_equal(w_in[:, E + 2 * X : 2 * E + 2 * X], _a(at.q_proj.kernel))
    np.testing.assert_array_equal(_a(mx.out_proj.kernel), _a(at.o_proj.kernel))
    # z and dt columns keep torch Linear's default U(+-1/sqrt(d)) init.
    bound = 1 / np.sqrt(cfg.hidden_size)
    for cols in (w_in[:, :E], w_in[:, 2 * E + 2 * X :]):
      assert np.abs(cols).max() <= bound and cols.std() > bound / 4
    A = -np.exp(_a(mx.A_log))
    assert A.shape == (H,) and (A >= -16.0).all() and (A <= -1.0).all()
    np.testing.assert_array_equal(_a(mx.D), 1.0)
    dt = np.logaddexp(0.0, _a(mx.dt_bias).astype(np.float64))
    assert (dt >= 1e-3 * (1 - 1e-5)).all() and (dt <= 1e-1 * (1 + 1e-5)).all()
    np.testing.assert_array_equal(_a(mx.norm.weight), 1.0)
  np.testing.assert_array_equal(_a(student.embed_tokens.embedding), _a(teacher.embed_tokens.embedding))
  np.testing.assert_array_equal(_a(student.norm.weight), _a(teacher.norm.weight))
  # Tokens run through the hybrid.
  logits = student(jnp.asarray(np.arange(10).reshape(2, 5) % LLAMA["vocab_size"]))
  assert logits.shape == (2, 5, LLAMA["vocab_size"]) and np.isfinite(np.asarray(logits)).all()


def test_init_from_attention_checks_shapes(teacher):
  for field, value in (("d_inner", 64), ("d_xb", 32)):
    cfg = HybridConfig.from_llama(teacher.config, **{field: value})
    with pytest.raises(ConfigError, match=rf"{field}={value} != "):
      init_hybrid(teacher, cfg)
    with pytest.raises(ConfigError, match=rf"{field}={value}"):
      init_mamba2_from_attention(Mamba2(cfg, 0, rngs=nnx.Rngs(0)), teacher.layers[0].mixer, cfg)


def test_all_attention_hybrid_reproduces_teacher_logits(teacher):
  cfg = HybridConfig.from_llama(teacher.config, attn_layers=(0, 1, 2))
  student = init_hybrid(teacher, cfg)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, LLAMA["vocab_size"], (2, 9)))
  np.testing.assert_array_equal(np.asarray(student(tokens)), np.asarray(teacher(tokens)))
