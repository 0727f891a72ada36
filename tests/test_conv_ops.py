"""ops.conv: the depthwise causal conv1d + SiLU, reference and fused-VJP implementations, against
a float64 numpy oracle (forward and the hand-derived gradients), never against each other."""

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


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("K", [2, 4])
def test_forward_and_gradients_match_float64_numpy(impl, K):
  x, w, b, dy = _inputs(0, K=K)
  y_ref, _ = numpy_conv_silu(x, w, b)
  dx_ref, dw_ref, db_ref = numpy_conv_silu_grads(x, w, b, dy)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  y, vjp = jax.vjp(lambda x, w, b: conv_ops.causal_conv1d_silu(x, w, b, impl=impl), f32(x), f32(w), f32(b))
  dx, dw, db = vjp(f32(dy))
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(db), db_ref, rtol=1e-5, atol=1e-5)


def test_fused_in_bfloat16_is_as_close_to_float64_as_the_reference():
  x, w, b, dy = _inputs(1, Bsz=2, T=64, C=32)
  y64, _ = numpy_conv_silu(x, w, b)
  grads64 = numpy_conv_silu_grads(x, w, b, dy)
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
  errs = {}
  for impl in ("reference", "fused"):
    # activations in bf16, parameters in float32 as the model keeps them
    y, vjp = jax.vjp(
      lambda x, w, b: conv_ops.causal_conv1d_silu(x, w, b, impl=impl),
      bf(x),
      jnp.asarray(w, jnp.float32),
      jnp.asarray(b, jnp.float32),
    )
    got = (y,) + vjp(bf(dy))
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16 and got[2].dtype == jnp.float32
    errs[impl] = [
      float(np.linalg.norm(np.asarray(a, np.float64) - r) / np.linalg.norm(r))
      for a, r in zip(got, (y64,) + grads64)
    ]
  for e_fused, e_ref in zip(errs["fused"], errs["reference"]):
    assert e_fused < 1.5 * e_ref + 1e-3, errs


def test_no_bias_and_the_cached_conv_agree_with_numpy():
  x, w, _, dy = _inputs(2)
  zero = np.zeros(w.shape[1])
  y_ref, pre_ref = numpy_conv_silu(x, w, zero)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  np.testing.assert_allclose(
    np.asarray(conv_ops.causal_conv1d_silu(f32(x), f32(w), impl="fused")), y_ref, rtol=1e-5, atol=1e-5
  )
  # the model's cached path: the pre-activation and the carried state (last K-1 inputs)
  pre, state = conv_ops.causal_conv1d(f32(x), f32(w))
  np.testing.assert_allclose(np.asarray(pre), pre_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(state), np.asarray(f32(x))[:, -(w.shape[0] - 1) :])


def test_bad_calls_name_the_problem():
  x = jnp.zeros((2, 5, 6))
  with pytest.raises(ValueError, match="impl='nope' must be one of"):
    conv_ops.causal_conv1d_silu(x, jnp.zeros((4, 6)), impl="nope")
  with pytest.raises(ValueError, match=r"w \(d_conv, channels\) expected, got x \(2, 5, 6\) and w \(4, 7\)"):
    conv_ops.causal_conv1d_silu(x, jnp.zeros((4, 7)))
