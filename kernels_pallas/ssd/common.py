"""Shared frame of the Pallas SSD kernels: input preparation, the custom VJP and the gradient epilogue.

Every backend kernel implements the same *core*: the chunked scan over already prepared per-step
quantities, with the chunk size ``Q`` fixed and the sequence padded to a multiple of it:

    x (b, L, h, p), B/C (b, L, g, n)            input dtype (bf16/f16/f32)
    dt   (b, h, L) float32                      dt_eff = softplus(dt + dt_bias), 0 on padded steps
    acum (b, h, L) float32                      in-chunk prefix sum of dt_eff * A (log-decay)
    D (h,) float32, s0 (b, h, p, n) float32     zeros when absent
    -> y (b, L, h, p) input dtype, s_final (b, h, p, n) float32

Per chunk and head (l, s steps of the chunk, S the state entering it, a_last = acum[Q-1]):

    y_l   = sum_{s<=l} (C_l . B_s) exp(acum_l - acum_s) dt_s x_s + exp(acum_l) S C_l + D x_l
    S_out = exp(a_last) S + sum_s exp(a_last - acum_s) dt_s x_s B_s^T

The core has a custom VJP whose backward returns gradients for dt and acum as *independent*
inputs; the softplus, bias, A and the cumsum in front of it are plain JAX, so autodiff chains
them (they touch only (b, l, h)-sized arrays, p times smaller than x). A backend module provides

    fwd(cfg, x, B, C, dt, acum, D, s0, save) -> (y, s_final, residual_states_or_None)
    bwd(cfg, x, B, C, dt, acum, D, states, dy, ds_final)
        -> (dx, dB_heads, dC_heads, ddt, dacum, dD, ds0)

with dB_heads/dC_heads per head (b, L, h, n); the epilogue here sums them over the heads of a
group (head i reads group i // (h // g), as in mamba_ssm and the reference).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from kernels_pallas.ssd.reference import effective_dt, validate_scan

__all__ = ["CoreConfig", "make_scan", "pad_len"]


@dataclasses.dataclass(frozen=True)
class CoreConfig:
  """Static description of one core call (hashable: it is a nondiff argument of the VJP)."""

  chunk: int
  interpret: bool = False
  # Backend-specific tuning (e.g. heads per block on TPU, sub-block on GPU); None = default.
  tuning: Optional[tuple] = None


def pad_len(l: int, chunk: int) -> int:
  return -(-l // chunk) * chunk


def make_scan(fwd: Callable, bwd: Callable) -> Callable:
  """Builds `core(cfg, x, B, C, dt, acum, D, s0) -> (y, s_final)` with a custom VJP."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def core(cfg, x, B, C, dt, acum, D, s0):
    y, s_final, _ = fwd(cfg, x, B, C, dt, acum, D, s0, False)
    return y, s_final

  def core_fwd(cfg, x, B, C, dt, acum, D, s0):
    y, s_final, states = fwd(cfg, x, B, C, dt, acum, D, s0, True)
    return (y, s_final), (x, B, C, dt, acum, D, s0, states)

  def core_bwd(cfg, res, cts):
    x, B, C, dt, acum, D, s0, states = res
    dy, ds_final = cts
    dy = dy.astype(x.dtype)
    ds_final = ds_final.astype(jnp.float32)
    dx, dB_h, dC_h, ddt, dacum, dD, ds0 = bwd(cfg, x, B, C, dt, acum, D, states, dy, ds_final)
    b, L, g, n = B.shape
    h = x.shape[2]
    r = h // g
    # Sum the per-head B/C gradients over the heads sharing a group (float32 when r > 1).
    dB = dB_h.astype(jnp.float32).reshape(b, L, g, r, n).sum(3) if r > 1 else dB_h
    dC = dC_h.astype(jnp.float32).reshape(b, L, g, r, n).sum(3) if r > 1 else dC_h
    return (
      dx.astype(x.dtype),
      dB.astype(B.dtype),
      dC.astype(C.dtype),
      ddt.astype(dt.dtype),
      dacum.astype(acum.dtype),
      dD.astype(D.dtype),
      ds0.astype(s0.dtype),
    )

  core.defvjp(core_fwd, core_bwd)
  return core


def prepare_and_run(
  core: Callable,
  cfg: CoreConfig,
  x,
  dt,
  A,
  B,
  C,
  *,
  D,
  dt_bias,
  dt_softplus,
  initial_state,
  return_final_state,
) -> Any:
  """Validates like the reference, builds the core inputs (padding to whole chunks), runs it."""
  b, l, h, p, g, n = validate_scan(x, dt, A, B, C, D, dt_bias, initial_state, cfg.chunk)
  Q = cfg.chunk
  L = pad_len(l, Q)
  f32 = jnp.float32
  # Softplus before padding so padded steps get dt_eff = 0: no decay and no input, so the
  # final state is the one after the last real token (as in the reference).
  dt_eff = effective_dt(dt, dt_bias, dt_softplus)  # (b, l, h)
  if L != l:
    pad_t = lambda a: jnp.pad(a, [(0, 0), (0, L - l)] + [(0, 0)] * (a.ndim - 2))
    x, B, C, dt_eff = map(pad_t, (x, B, C, dt_eff))
  dt_T = jnp.transpose(dt_eff, (0, 2, 1))  # (b, h, L)
  a = dt_T * A.astype(f32)[None, :, None]
  acum = jnp.cumsum(a.reshape(b, h, L // Q, Q), axis=-1).reshape(b, h, L)
  D32 = jnp.zeros((h,), f32) if D is None else D.astype(f32)
  s0 = jnp.zeros((b, h, p, n), f32) if initial_state is None else initial_state.astype(f32)
  y, s_final = core(cfg, x, B, C, dt_T, acum, D32, s0)
  y = y[:, :l] if L != l else y
  return (y, s_final) if return_final_state else y
