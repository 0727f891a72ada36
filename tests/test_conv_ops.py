"""ops.conv: Mamba2's depthwise causal conv1d (+ the mixer's SiLU) against a float64 numpy oracle,
forward and hand-derived gradients, and its carried state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zebra_jax.ops import conv as conv_ops


def numpy_conv_silu(x, w, b):
  """float64: pre[t] = b + sum_k x[t + k - (K-1)] w[k] (zeros before t = 0); silu(pre)."""
  Bsz, T, C = x.shape
  K = w.shape[0]
  xpad = np.concatenate([np.zeros((Bsz, K - 1, C)), x], axis=1)
  pre = b + sum(xpad[:, k : k + T] * w[k] for k in range(K))
  return pre / (1.0 + np.exp(-pre)), pre


def numpy_conv_silu_grads(x, w, b, dy):
  """float64 gradients of <silu(conv(x)), dy> w.r.t. x, w, b, by direct loops over the taps."""
  Bsz, T, C = x.shape
  K = w.shape[0]
  _, pre = numpy_conv_silu(x, w, b)
  s = 1.0 / (1.0 + np.exp(-pre))
  g = dy * (s + pre * s * (1.0 - s))
  dx = np.zeros_like(x)
  dw = np.zeros_like(w)
  for t in range(T):
    for k in range(K):
      src = t + k - (K - 1)
      if src >= 0:
        dx[:, src] += g[:, t] * w[k]
        dw[k] += np.sum(x[:, src] * g[:, t], axis=0)
  return dx, dw, g.sum(axis=(0, 1))


def _inputs(seed, Bsz=2, T=13, C=6, K=4):
  r = np.random.default_rng(seed)
  return (
    r.normal(size=(Bsz, T, C)),
    0.5 * r.normal(size=(K, C)),
    0.3 * r.normal(size=(C,)),
    r.normal(size=(Bsz, T, C)),
  )


def _conv_silu(x, w, b=None):
  """What the mixer computes: silu of the conv's pre-activation, zero initial state."""
  return jax.nn.silu(conv_ops.causal_conv1d(x, w, b)[0])


@pytest.mark.parametrize("K", [2, 4])
def test_forward_and_gradients_match_float64_numpy(K):
  x, w, b, dy = _inputs(0, K=K)
  y_ref, _ = numpy_conv_silu(x, w, b)
  dx_ref, dw_ref, db_ref = numpy_conv_silu_grads(x, w, b, dy)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  y, vjp = jax.vjp(_conv_silu, f32(x), f32(w), f32(b))
  dx, dw, db = vjp(f32(dy))
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(db), db_ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_activations_accumulate_in_float32():
  """bf16 activations with float32 parameters (as the model keeps them): the taps accumulate in
  float32, so the output is within bf16 rounding of float64."""
  x, w, b, _ = _inputs(1, Bsz=2, T=64, C=32)
  y64, _ = numpy_conv_silu(x, w, b)
  y = _conv_silu(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
  assert y.dtype == jnp.bfloat16
  err = float(np.linalg.norm(np.asarray(y, np.float64) - y64) / np.linalg.norm(y64))
  assert err < 6e-3, err


def test_no_bias_and_the_cached_conv_agree_with_numpy():
  x, w, _, dy = _inputs(2)
  zero = np.zeros(w.shape[1])
  y_ref, pre_ref = numpy_conv_silu(x, w, zero)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  np.testing.assert_allclose(np.asarray(_conv_silu(f32(x), f32(w))), y_ref, rtol=1e-5, atol=1e-5)
  # the model's cached path: the pre-activation and the carried state (last K-1 inputs)
  pre, state = conv_ops.causal_conv1d(f32(x), f32(w))
  np.testing.assert_allclose(np.asarray(pre), pre_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(state), np.asarray(f32(x))[:, -(w.shape[0] - 1) :])
