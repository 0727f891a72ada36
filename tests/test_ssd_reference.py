"""Tests for the pure-JAX SSD reference against an independent float64 numpy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.ssd import reference as ref

# jit the references in the tests: compiling each whole graph once is much faster
# than op-by-op eager dispatch (keeps the file well under the time budget).
_STATIC = ("dt_softplus", "chunk_size", "return_final_state")
ssd_scan_reference = jax.jit(ref.ssd_scan_reference, static_argnames=_STATIC)
ssd_sequential_reference = jax.jit(ref.ssd_sequential_reference, static_argnames=_STATIC)
ssd_step_reference = jax.jit(ref.ssd_step_reference, static_argnames=("dt_softplus",))


# --------------------------------------------------------------------------- #
# Independent oracle: float64 numpy, explicit loop over time.
# --------------------------------------------------------------------------- #
def numpy_ssd(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, initial_state=None):
  x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
  b, l, h, p = x.shape
  g, n = B.shape[2], B.shape[3]
  rep = h // g
  # Contiguous grouping: head i uses group i // rep.
  Bh = np.repeat(B, rep, axis=2)
  Ch = np.repeat(C, rep, axis=2)
  if dt_bias is not None:
    dt = dt + np.asarray(dt_bias, np.float64)
  if dt_softplus:
    dt = np.logaddexp(0.0, dt)
  S = np.zeros((b, h, p, n)) if initial_state is None else np.asarray(initial_state, np.float64).copy()
  y = np.zeros((b, l, h, p))
  for t in range(l):
    dtt = dt[:, t][:, :, None, None]
    S = np.exp(dtt * A[None, :, None, None]) * S + dtt * x[:, t, :, :, None] * Bh[:, t, :, None, :]
    y[:, t] = np.einsum("bhpn,bhn->bhp", S, Ch[:, t])
    if D is not None:
      y[:, t] += np.asarray(D, np.float64)[None, :, None] * x[:, t]
  return y, S


def make_inputs(
  seed, b, l, h, p, g, n, *, with_D=True, with_bias=True, with_init=False, softplus=True, a_scale=1.0
):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.standard_normal(s).astype(np.float32)
  inp = dict(
    x=f(b, l, h, p),
    # Raw dt: any sign pre-softplus; positive when used directly.
    dt=(0.5 * f(b, l, h) - 1.0) if softplus else rng.uniform(0.01, 0.3, (b, l, h)).astype(np.float32),
    A=(-np.exp(rng.uniform(-1.0, 1.0, h)) * a_scale).astype(np.float32),
    B=f(b, l, g, n) * 0.5,
    C=f(b, l, g, n) * 0.5,
  )
  kw = dict(
    D=f(h) if with_D else None,
    dt_bias=(0.1 * f(h) if softplus else rng.uniform(0.0, 0.1, h).astype(np.float32)) if with_bias else None,
    initial_state=f(b, h, p, n) if with_init else None,
    dt_softplus=softplus,
  )
  return inp, kw


def to_jnp(kw):
  return {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


# (b, l, h, p, g, n, chunk)
SHAPES = [
  (2, 37, 4, 8, 2, 16, 16),  # GQA groups, ragged length
  (1, 64, 4, 8, 4, 8, 16),  # exact multiple of chunk, g == h
  (2, 5, 6, 4, 1, 8, 16),  # shorter than one chunk, single group
  (1, 33, 8, 4, 2, 4, 8),  # several chunks + 1 leftover token
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
  "with_D,with_bias,with_init,softplus",
  [
    (True, True, True, True),
    (False, False, False, True),
    (True, False, True, False),
    (False, True, False, False),
  ],
)
def test_scan_matches_float64_oracle(shape, with_D, with_bias, with_init, softplus):
  b, l, h, p, g, n, chunk = shape
  inp, kw = make_inputs(
    0, b, l, h, p, g, n, with_D=with_D, with_bias=with_bias, with_init=with_init, softplus=softplus
  )
  y_ref, s_ref = numpy_ssd(**inp, **kw)
  y, s = ssd_scan_reference(**to_jnp(inp), **to_jnp(kw), chunk_size=chunk, return_final_state=True)
  assert y.shape == (b, l, h, p) and y.dtype == jnp.float32
  assert s.shape == (b, h, p, n) and s.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-4, atol=1e-4)

  # The sequential oracle must agree too.
  y2, s2 = ssd_sequential_reference(**to_jnp(inp), **to_jnp(kw), return_final_state=True)
  np.testing.assert_allclose(np.asarray(y2), y_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(s2), s_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_chunk_size_invariance(chunk):
  inp, kw = make_inputs(1, 1, 37, 4, 4, 2, 8, with_init=True)
  y_ref, s_ref = numpy_ssd(**inp, **kw)
  y, s = ssd_scan_reference(**to_jnp(inp), **to_jnp(kw), chunk_size=chunk, return_final_state=True)
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-4, atol=1e-4)


def test_default_returns_only_y():
  inp, kw = make_inputs(2, 1, 9, 2, 4, 1, 4)
  y = ssd_scan_reference(**to_jnp(inp), **to_jnp(kw), chunk_size=4)
  assert isinstance(y, jax.Array) and y.shape == (1, 9, 2, 4)


def test_eager_unjitted_path():
  # The rest of the file calls jitted wrappers; exercise the plain eager call once.
  inp, kw = make_inputs(3, 1, 20, 4, 4, 2, 8, with_init=True)
  y, s = ref.ssd_scan_reference(**to_jnp(inp), **to_jnp(kw), chunk_size=8, return_final_state=True)
  y_ref, s_ref = numpy_ssd(**inp, **kw)
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-4, atol=1e-4)


def test_bf16_inputs_finite_and_close():
  inp, kw = make_inputs(4, 2, 37, 4, 8, 2, 16, with_init=True)
  j32, kw32 = to_jnp(inp), to_jnp(kw)
  y32, s32 = ssd_scan_reference(**j32, **kw32, chunk_size=16, return_final_state=True)
  jbf = {k: v.astype(jnp.bfloat16) for k, v in j32.items()}
  kwbf = {k: (v.astype(jnp.bfloat16) if isinstance(v, jax.Array) else v) for k, v in kw32.items()}
  ybf, sbf = ssd_scan_reference(**jbf, **kwbf, chunk_size=16, return_final_state=True)
  assert ybf.dtype == jnp.bfloat16 and sbf.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(ybf.astype(jnp.float32)))) and bool(jnp.all(jnp.isfinite(sbf)))
  scale = float(jnp.max(jnp.abs(y32)))
  np.testing.assert_allclose(
    np.asarray(ybf.astype(jnp.float32)), np.asarray(y32), atol=5e-2 * scale, rtol=5e-2
  )
  np.testing.assert_allclose(
    np.asarray(sbf), np.asarray(s32), atol=5e-2 * float(jnp.max(jnp.abs(s32))), rtol=5e-2
  )


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #
GRAD_ARGS = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state")


def _loss(fn, chunk, softplus, w_y, w_s):
  def loss(params):
    y, s = fn(
      params["x"],
      params["dt"],
      params["A"],
      params["B"],
      params["C"],
      D=params["D"],
      dt_bias=params["dt_bias"],
      initial_state=params["initial_state"],
      dt_softplus=softplus,
      chunk_size=chunk,
      return_final_state=True,
    )
    return jnp.sum(y * w_y) + jnp.sum(s * w_s)

  return loss


def _grads(seed, shape, softplus, a_scale=1.0, dt_shift=0.0):
  b, l, h, p, g, n, chunk = shape
  inp, kw = make_inputs(seed, b, l, h, p, g, n, with_init=True, softplus=softplus, a_scale=a_scale)
  params = {**to_jnp(inp), **{k: jnp.asarray(kw[k]) for k in ("D", "dt_bias", "initial_state")}}
  params["dt"] = params["dt"] + dt_shift
  rng = np.random.default_rng(seed + 100)
  w_y = jnp.asarray(rng.standard_normal((b, l, h, p)), jnp.float32)
  w_s = jnp.asarray(rng.standard_normal((b, h, p, n)), jnp.float32)
  g_scan = jax.grad(_loss(ssd_scan_reference, chunk, softplus, w_y, w_s))(params)
  g_seq = jax.grad(_loss(ssd_sequential_reference, chunk, softplus, w_y, w_s))(params)
  return g_scan, g_seq


@pytest.mark.parametrize("softplus", [True, False])
def test_grads_match_sequential(softplus):
  g_scan, g_seq = _grads(5, (2, 21, 4, 4, 2, 8, 8), softplus)
  for k in GRAD_ARGS:
    a, r = np.asarray(g_scan[k]), np.asarray(g_seq[k])
    assert np.all(np.isfinite(a)), k
    np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(r).max()), err_msg=k)


def test_grads_finite_with_strong_decay():
  # A*dt ~ -250 per step: the upper-triangle exponents reach +thousands, which would
  # overflow exp (and give inf*0 = NaN gradients) without masking before the exp.
  g_scan, g_seq = _grads(6, (1, 40, 4, 4, 2, 8, 16), True, a_scale=50.0, dt_shift=6.0)
  for k in GRAD_ARGS:
    a, r = np.asarray(g_scan[k]), np.asarray(g_seq[k])
    assert np.all(np.isfinite(a)), k
    np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(r).max()), err_msg=k)


# --------------------------------------------------------------------------- #
# Decode step
# --------------------------------------------------------------------------- #
def test_step_token_by_token_matches_scan():
  b, l, h, p, g, n = 2, 13, 6, 4, 3, 8
  inp, kw = make_inputs(7, b, l, h, p, g, n, with_init=True)
  j, k = to_jnp(inp), to_jnp(kw)
  y_scan, s_scan = ssd_scan_reference(**j, **k, chunk_size=4, return_final_state=True)
  state = k["initial_state"]
  ys = []
  for t in range(l):
    y_t, state = ssd_step_reference(
      state, j["x"][:, t], j["dt"][:, t], j["A"], j["B"][:, t], j["C"][:, t], D=k["D"], dt_bias=k["dt_bias"]
    )
    assert y_t.shape == (b, h, p) and state.dtype == jnp.float32
    ys.append(y_t)
  np.testing.assert_allclose(np.stack(ys, 1), np.asarray(y_scan), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(state), np.asarray(s_scan), rtol=1e-4, atol=1e-4)


def test_scan_continues_from_state():
  # Splitting a sequence and carrying the final state must equal one pass.
  inp, kw = make_inputs(8, 1, 30, 4, 4, 2, 8, with_init=True)
  j, k = to_jnp(inp), to_jnp(kw)
  y_full, s_full = ssd_scan_reference(**j, **k, chunk_size=8, return_final_state=True)
  cut = 11
  first = {n_: v[:, :cut] if n_ != "A" else v for n_, v in j.items()}
  second = {n_: v[:, cut:] if n_ != "A" else v for n_, v in j.items()}
  y1, s1 = ssd_scan_reference(**first, **k, chunk_size=8, return_final_state=True)
  k2 = {**k, "initial_state": s1}
  y2, s2 = ssd_scan_reference(**second, **k2, chunk_size=8, return_final_state=True)
  np.testing.assert_allclose(np.concatenate([y1, y2], 1), np.asarray(y_full), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(s2), np.asarray(s_full), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- #
# Shape validation
# --------------------------------------------------------------------------- #
def _good(b=1, l=6, h=8, p=4, g=2, n=4):
  z = lambda *s: jnp.zeros(s, jnp.float32)
  return dict(x=z(b, l, h, p), dt=z(b, l, h), A=-jnp.ones((h,)), B=z(b, l, g, n), C=z(b, l, g, n))


@pytest.mark.parametrize(
  "override,match",
  [
    (dict(B=jnp.zeros((1, 6, 3, 4)), C=jnp.zeros((1, 6, 3, 4))), r"B has 3 groups but heads=8"),
    (dict(C=jnp.zeros((1, 6, 2, 5))), r"C must have the same shape as B"),
    (dict(dt=jnp.zeros((1, 6, 4))), r"dt must have shape"),
    (dict(A=jnp.zeros((4,))), r"A must have shape \(heads,\)=\(8,\)"),
    (dict(x=jnp.zeros((1, 6, 8))), r"x must have 4 dims"),
    (dict(B=jnp.zeros((1, 7, 2, 4)), C=jnp.zeros((1, 7, 2, 4))), r"B must have leading"),
  ],
)
def test_bad_shapes_scan(override, match):
  args = {**_good(), **override}
  for fn in (ssd_scan_reference, ssd_sequential_reference):
    with pytest.raises(ValueError, match=match):
      fn(**args)


def test_bad_optional_shapes():
  args = _good()
  with pytest.raises(ValueError, match=r"D must have shape"):
    ssd_scan_reference(**args, D=jnp.zeros((3,)))
  with pytest.raises(ValueError, match=r"dt_bias must have shape"):
    ssd_scan_reference(**args, dt_bias=jnp.zeros((8, 1)))
  with pytest.raises(ValueError, match=r"initial_state must have shape .*\(1, 8, 4, 4\)"):
    ssd_scan_reference(**args, initial_state=jnp.zeros((1, 8, 4, 5)))
  with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
    ssd_scan_reference(**args, chunk_size=0)


def test_bad_shapes_step():
  z = lambda *s: jnp.zeros(s, jnp.float32)
  with pytest.raises(ValueError, match=r"B has 3 groups but heads=8"):
    ssd_step_reference(z(1, 8, 4, 4), z(1, 8, 4), z(1, 8), -jnp.ones((8,)), z(1, 3, 4), z(1, 3, 4))
  with pytest.raises(ValueError, match=r"state must have shape"):
    ssd_step_reference(z(1, 8, 4, 5), z(1, 8, 4), z(1, 8), -jnp.ones((8,)), z(1, 2, 4), z(1, 2, 4))
  with pytest.raises(ValueError, match=r"dt must have shape"):
    ssd_step_reference(z(1, 8, 4, 4), z(1, 8, 4), z(1, 4), -jnp.ones((8,)), z(1, 2, 4), z(1, 2, 4))
