"""Mamba2's depthwise causal conv1d (+ SiLU): the one place that picks an implementation.

  pre[b, t, c] = bias[c] + sum_k x[b, t + k - (K-1), c] * w[k, c]   (x is 0, or the carried
                 state, before t = 0; K = d_conv, tiny: 4)
  y = silu(pre)

* "reference": K shifted multiply-adds accumulated in float32 (like mamba_ssm's causal_conv1d),
  differentiated by JAX. Any carried state; the model's cached paths (prefill, decode, verify) use
  it through `causal_conv1d`.
* "fused": the same forward with the SiLU in float32, and a hand-written backward
  (`jax.custom_vjp`) that keeps only x (the pre-activation is recomputed: K multiply-adds per
  element against writing and reading a float32 (B, T, C) tensor) and computes the SiLU
  derivative, dx and the K + 1 weight / bias reductions from it, for XLA to fuse. The op is all
  memory traffic (docs/benchmarks.md "The Mamba2 mixer split": 1.03 ms of the smollm2 mixer's
  4.30 on an H100); whether this beats the autodiff backward is for a GPU to say (on a CPU, XLA's
  cost model counts 3.1 GB accessed against the reference's 2.5 at the smollm2 step's shapes).
  Zero initial state only (the training forward).

`causal_conv1d_silu(..., impl="auto")` is the reference until a GPU measurement shows the fused
one faster (`python scripts/bench.py train --layers` prints both rows side by side).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["causal_conv1d", "causal_conv1d_silu", "IMPLS"]

IMPLS = ("auto", "reference", "fused")


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


def _pre_f32(x_BTC, w_KC, bias_C):
  """float32 pre-activation, zero initial state."""
  xpad = jnp.pad(x_BTC, ((0, 0), (w_KC.shape[0] - 1, 0), (0, 0)))
  return _taps_f32(xpad, w_KC, x_BTC.shape[1]) + bias_C.astype(jnp.float32)


@jax.custom_vjp
def _conv_silu_fused(x_BTC, w_KC, bias_C):
  pre = _pre_f32(x_BTC, w_KC, bias_C)
  return (pre * jax.nn.sigmoid(pre)).astype(x_BTC.dtype)


def _fused_fwd(x_BTC, w_KC, bias_C):
  # residuals: the inputs only; `pre` is recomputed in the backward (K multiply-adds per element
  # are cheaper than writing and reading a float32 (B, T, C) tensor)
  return _conv_silu_fused(x_BTC, w_KC, bias_C), (x_BTC, w_KC, bias_C)


def _fused_bwd(res, dy_BTC):
  x_BTC, w_KC, bias_C = res
  K, T = w_KC.shape[0], x_BTC.shape[1]
  pre = _pre_f32(x_BTC, w_KC, bias_C)
  s = jax.nn.sigmoid(pre)
  g = dy_BTC.astype(jnp.float32) * (s * (1.0 + pre * (1.0 - s)))  # d silu / d pre
  # x[t] feeds pre[t + K-1-k] through w[k]
  gpad = jnp.pad(g, ((0, 0), (0, K - 1), (0, 0)))
  w = w_KC.astype(jnp.float32)
  dx = sum(gpad[:, K - 1 - k : K - 1 - k + T] * w[k] for k in range(K))
  # dw[k] = sum_{b,t} x[t + k - (K-1)] g[t]; dbias = sum g: K+1 sibling reductions of the same
  # inputs, which XLA may fuse into one pass (a stacked (K+1, B, T, C) operand would be written out)
  xpad = jnp.pad(x_BTC, ((0, 0), (K - 1, 0), (0, 0)))
  dw = jnp.stack([jnp.sum(xpad[:, k : k + T].astype(jnp.float32) * g, axis=(0, 1)) for k in range(K)])
  return dx.astype(x_BTC.dtype), dw.astype(w_KC.dtype), jnp.sum(g, axis=(0, 1)).astype(bias_C.dtype)


_conv_silu_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.named_call, name="causal_conv1d_silu")
def causal_conv1d_silu(x_BTC, w_KC, bias_C=None, *, impl: str = "auto"):
  """silu(causal depthwise conv1d(x)) from a zero state, in x's dtype; see the module docstring."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} must be one of {IMPLS}")
  if x_BTC.ndim != 3 or w_KC.ndim != 2 or w_KC.shape[1] != x_BTC.shape[-1]:
    raise ValueError(
      f"causal_conv1d_silu: x (batch, time, channels) and w (d_conv, channels) expected, got "
      f"x {tuple(x_BTC.shape)} and w {tuple(w_KC.shape)}"
    )
  if impl == "fused":
    bias = jnp.zeros(w_KC.shape[1:], w_KC.dtype) if bias_C is None else bias_C
    return _conv_silu_fused(x_BTC, w_KC, bias)
  return jax.nn.silu(causal_conv1d(x_BTC, w_KC, bias_C)[0])
