"""Mamba2's depthwise causal conv1d: the one copy the mixer's training and cached paths share.

  pre[b, t, c] = bias[c] + sum_k x[b, t + k - (K-1), c] * w[k, c]   (x is 0, or the carried
                 state, before t = 0; K = d_conv, tiny: 4)

K shifted multiply-adds accumulated in float32 (like mamba_ssm's causal_conv1d), differentiated
by JAX; the mixer applies the SiLU after it. A hand-written backward (custom_vjp recomputing the
pre-activation, the K + 1 weight / bias reductions in one pass) was measured against this on an
H100 and was not faster (0.58 against 0.56 ms fwd+bwd at the smollm2 KD step's shapes,
docs/benchmarks.md "The Mamba2 mixer split"), so there is one implementation.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["causal_conv1d"]


def causal_conv1d(x_BTC, w_KC, bias_C=None, state_BKC=None):
  """(pre-activation conv in x's dtype, the new state: the last K-1 inputs (B, K-1, C)).

  `state_BKC` (B, K-1, C), oldest first, continues a sequence (None: zeros)."""
  Bsz, T, C = x_BTC.shape
  K = w_KC.shape[0]
  if state_BKC is None:
    state_BKC = jnp.zeros((Bsz, K - 1, C), x_BTC.dtype)
  xpad = jnp.concatenate([state_BKC.astype(x_BTC.dtype), x_BTC], axis=1)  # (B, K-1+T, C)
  out = _taps_f32(xpad, w_KC, T)
  if bias_C is not None:
    out = out + bias_C.astype(jnp.float32)
  return out.astype(x_BTC.dtype), xpad[:, T:]


def _taps_f32(xpad_BSC, w_KC, T: int):
  """sum_k xpad[:, t + k] * w[k] for t < T, accumulated in float32 (xpad holds K-1 steps before t=0)."""
  w = w_KC.astype(jnp.float32)
  return sum(xpad_BSC[:, k : k + T].astype(jnp.float32) * w[k] for k in range(w_KC.shape[0]))
