"""Pure-JAX reference for the Mamba2 SSD (state-space duality) scan.

This is the numerical oracle for the Pallas kernels and the CPU path of the
models. Per head (A scalar, state S of shape (p, n)):

    dt_t = softplus(dt_t + dt_bias)          (or dt_t + dt_bias)
    S_t  = exp(dt_t * A) * S_{t-1} + dt_t * outer(x_t, B_t)
    y_t  = S_t @ C_t + D * x_t

Heads share B/C within contiguous groups: head i uses group i // (h // g),
as in mamba_ssm. All accumulation is float32 whatever the input dtype.

Einsum index letters used throughout:
    b batch, c chunk, l target step in chunk, s source step in chunk,
    g B/C group, r head within its group, p head dim, n state dim.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp

__all__ = ["ssd_scan_reference", "ssd_step_reference", "ssd_sequential_reference"]

Array = jax.Array
ScanOut = Union[Array, Tuple[Array, Array]]

# Oracle quality: on GPU/TPU the default f32 matmul precision may be TF32/bf16.
_HI = jax.lax.Precision.HIGHEST


def _einsum(eq: str, *operands: Array) -> Array:
  return jnp.einsum(eq, *operands, precision=_HI, preferred_element_type=jnp.float32)


def _shape(a) -> tuple:
  return tuple(jnp.shape(a))


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
def _check_ndim(name: str, a, ndim: int, layout: str) -> None:
  if jnp.ndim(a) != ndim:
    raise ValueError(f"{name} must have {ndim} dims {layout}, got shape {_shape(a)}")


def _check_head_params(h: int, A, D, dt_bias) -> None:
  if _shape(A) != (h,):
    raise ValueError(f"A must have shape (heads,)=({h},), got {_shape(A)}")
  if D is not None and _shape(D) != (h,):
    raise ValueError(f"D must have shape (heads,)=({h},), got {_shape(D)}")
  if dt_bias is not None and _shape(dt_bias) != (h,):
    raise ValueError(f"dt_bias must have shape (heads,)=({h},), got {_shape(dt_bias)}")


def _check_groups(h: int, B, C, g_axis: int) -> int:
  g = _shape(B)[g_axis]
  if g == 0 or h % g != 0:
    raise ValueError(f"B has {g} groups but heads={h} is not a multiple")
  if _shape(C) != _shape(B):
    raise ValueError(f"C must have the same shape as B {_shape(B)}, got {_shape(C)}")
  return g


def validate_scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size) -> Tuple[int, ...]:
  """Checks the shapes of an SSD scan's inputs (ValueError naming the first that is wrong) and returns
  (batch, seqlen, heads, headdim, groups, dstate); the references and the kernels check alike."""
  _check_ndim("x", x, 4, "(batch, seqlen, heads, headdim)")
  b, l, h, p = _shape(x)
  _check_ndim("dt", dt, 3, "(batch, seqlen, heads)")
  if _shape(dt) != (b, l, h):
    raise ValueError(f"dt must have shape (batch, seqlen, heads)={(b, l, h)}, got {_shape(dt)}")
  _check_ndim("B", B, 4, "(batch, seqlen, groups, dstate)")
  if _shape(B)[:2] != (b, l):
    raise ValueError(f"B must have leading (batch, seqlen)={(b, l)} like x {_shape(x)}, got {_shape(B)}")
  g = _check_groups(h, B, C, g_axis=2)
  n = _shape(B)[3]
  _check_head_params(h, A, D, dt_bias)
  if initial_state is not None and _shape(initial_state) != (b, h, p, n):
    raise ValueError(
      f"initial_state must have shape (batch, heads, headdim, dstate)={(b, h, p, n)}, "
      f"got {_shape(initial_state)}"
    )
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  return b, l, h, p, g, n


def effective_dt(dt: Array, dt_bias: Optional[Array], dt_softplus: bool) -> Array:
  """The step size the scan uses, in float32: softplus(dt + dt_bias) (without softplus when
  `dt_softplus` is False); shared by the references and the kernels."""
  dt = dt.astype(jnp.float32)
  if dt_bias is not None:
    dt = dt + dt_bias.astype(jnp.float32)
  return jax.nn.softplus(dt) if dt_softplus else dt


# --------------------------------------------------------------------------- #
# Chunked scan
# --------------------------------------------------------------------------- #
def ssd_scan_reference(
  x: Array,
  dt: Array,
  A: Array,
  B: Array,
  C: Array,
  *,
  D: Optional[Array] = None,
  dt_bias: Optional[Array] = None,
  dt_softplus: bool = True,
  initial_state: Optional[Array] = None,
  chunk_size: int = 256,
  return_final_state: bool = False,
) -> ScanOut:
  """Chunked SSD scan (ssd_minimal algorithm), float32 accumulation.

  Args:
    x: (b, l, h, p). dt: (b, l, h) raw (pre-bias/softplus). A: (h,), negative.
    B, C: (b, l, g, n) with h % g == 0. D, dt_bias: None or (h,).
    initial_state: None or (b, h, p, n).
  Returns:
    y (b, l, h, p) in x.dtype, plus the float32 final state (b, h, p, n)
    after the last real token when ``return_final_state``.
  """
  b, l, h, p, g, n = validate_scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size)
  r = h // g
  Q = chunk_size
  nc = -(-l // Q)
  pad = nc * Q - l

  f32 = jnp.float32
  # Softplus BEFORE padding so padded steps get dt_eff = 0 exactly: exp(0*A) = 1
  # (no decay) and 0 * x*B (no input), so the final state is the last real one.
  dt_eff = effective_dt(dt, dt_bias, dt_softplus)
  xf, Bf, Cf = x.astype(f32), B.astype(f32), C.astype(f32)
  if pad:
    pad_t = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    xf, dt_eff, Bf, Cf = map(pad_t, (xf, dt_eff, Bf, Cf))

  # Split time into chunks and heads into (group, head-in-group).
  xc = xf.reshape(b, nc, Q, g, r, p)
  dtc = dt_eff.reshape(b, nc, Q, g, r)
  Bc = Bf.reshape(b, nc, Q, g, n)
  Cc = Cf.reshape(b, nc, Q, g, n)
  Ag = A.astype(f32).reshape(g, r)

  # Log-decay per step (<= 0 for A < 0, dt >= 0) and its in-chunk prefix sum.
  a = dtc * Ag  # (b, c, l, g, r)
  a_cum = jnp.cumsum(a, axis=2)  # (b, c, l, g, r)
  a_last = a_cum[:, :, -1]  # (b, c, g, r): whole-chunk log-decay

  # 1) Intra-chunk (diagonal blocks): y[l] = sum_{s<=l} C_l.B_s exp(a_cum[l]-a_cum[s]) dt_s x_s.
  # The exponent for s > l is positive and can overflow; mask it to -inf BEFORE
  # exp so the forward is 0 and the backward never sees inf * 0 = NaN.
  seg = a_cum[:, :, :, None] - a_cum[:, :, None, :]  # (b, c, l, s, g, r)
  causal = jnp.tril(jnp.ones((Q, Q), dtype=bool))[:, :, None, None]
  decay = jnp.exp(jnp.where(causal, seg, -jnp.inf))  # (b, c, l, s, g, r)
  cb = _einsum("bclgn,bcsgn->bclsg", Cc, Bc)  # (b, c, l, s, g)
  w = cb[..., None] * decay * dtc[:, :, None]  # (b, c, l, s, g, r)
  y_diag = _einsum("bclsgr,bcsgrp->bclgrp", w, xc)

  # 2) State contributed by each chunk alone (decayed to the chunk end).
  decay_to_end = jnp.exp(a_last[:, :, None] - a_cum)  # (b, c, s, g, r), exponent <= 0
  chunk_states = _einsum("bcsgn,bcsgr,bcsgrp->bcgrpn", Bc, decay_to_end * dtc, xc)

  # 3) Inter-chunk recurrence: sequential over chunks with lax.scan so memory is
  # O(nchunks) (ssd_minimal's segsum over chunks would be O(nchunks^2)).
  if initial_state is None:
    s0 = jnp.zeros((b, g, r, p, n), f32)
  else:
    s0 = initial_state.astype(f32).reshape(b, g, r, p, n)

  def step(state, inp):
    chunk_decay, new = inp  # (b,g,r), (b,g,r,p,n)
    nxt = jnp.exp(chunk_decay)[..., None, None] * state + new
    return nxt, state  # emit state entering the chunk

  final, states_in = jax.lax.scan(step, s0, (jnp.moveaxis(a_last, 1, 0), jnp.moveaxis(chunk_states, 1, 0)))
  states_in = jnp.moveaxis(states_in, 0, 1)  # (b, c, g, r, p, n)

  # 4) Off-diagonal: contribution of the state entering each chunk, decayed to step l.
  y_off = _einsum("bclgn,bcgrpn,bclgr->bclgrp", Cc, states_in, jnp.exp(a_cum))

  y = y_diag + y_off
  if D is not None:
    y = y + D.astype(f32).reshape(g, r)[:, :, None] * xc
  y = y.reshape(b, nc * Q, h, p)[:, :l].astype(x.dtype)
  if return_final_state:
    return y, final.reshape(b, h, p, n)
  return y


# --------------------------------------------------------------------------- #
# Single step and sequential oracle
# --------------------------------------------------------------------------- #
def ssd_step_reference(
  state: Array,
  x: Array,
  dt: Array,
  A: Array,
  B: Array,
  C: Array,
  *,
  D: Optional[Array] = None,
  dt_bias: Optional[Array] = None,
  dt_softplus: bool = True,
) -> Tuple[Array, Array]:
  """One decode step. state (b,h,p,n), x (b,h,p), dt (b,h), B/C (b,g,n).

  Returns (y (b,h,p) in x.dtype, new_state (b,h,p,n) float32).
  """
  _check_ndim("x", x, 3, "(batch, heads, headdim)")
  b, h, p = _shape(x)
  if _shape(dt) != (b, h):
    raise ValueError(f"dt must have shape (batch, heads)={(b, h)}, got {_shape(dt)}")
  _check_ndim("B", B, 3, "(batch, groups, dstate)")
  if _shape(B)[0] != b:
    raise ValueError(f"B must have batch={b} like x {_shape(x)}, got {_shape(B)}")
  g = _check_groups(h, B, C, g_axis=1)
  n = _shape(B)[2]
  _check_head_params(h, A, D, dt_bias)
  if _shape(state) != (b, h, p, n):
    raise ValueError(
      f"state must have shape (batch, heads, headdim, dstate)={(b, h, p, n)}, got {_shape(state)}"
    )
  r = h // g

  f32 = jnp.float32
  dt_eff = effective_dt(dt, dt_bias, dt_softplus).reshape(b, g, r)
  xg = x.astype(f32).reshape(b, g, r, p)
  Sg = state.astype(f32).reshape(b, g, r, p, n)
  dA = jnp.exp(dt_eff * A.astype(f32).reshape(g, r))  # (b, g, r)

  S_new = dA[..., None, None] * Sg + _einsum("bgr,bgrp,bgn->bgrpn", dt_eff, xg, B.astype(f32))
  y = _einsum("bgrpn,bgn->bgrp", S_new, C.astype(f32))
  if D is not None:
    y = y + D.astype(f32).reshape(g, r)[:, :, None] * xg
  return y.reshape(b, h, p).astype(x.dtype), S_new.reshape(b, h, p, n)


def ssd_sequential_reference(
  x: Array,
  dt: Array,
  A: Array,
  B: Array,
  C: Array,
  *,
  D: Optional[Array] = None,
  dt_bias: Optional[Array] = None,
  dt_softplus: bool = True,
  initial_state: Optional[Array] = None,
  chunk_size: int = 256,
  return_final_state: bool = False,
) -> ScanOut:
  """Token-by-token lax.scan of ssd_step_reference; simple independent oracle.

  Same signature/returns as ssd_scan_reference (chunk_size is only validated).
  """
  b, l, h, p, g, n = validate_scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size)
  s0 = jnp.zeros((b, h, p, n), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)

  def step(state, inp):
    xt, dtt, Bt, Ct = inp
    # Keep y in float32 inside the scan; cast once at the end like the chunked path.
    y, new = ssd_step_reference(
      state, xt.astype(jnp.float32), dtt, A, Bt, Ct, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus
    )
    return new, y

  tmaj = lambda a: jnp.moveaxis(a, 1, 0)
  final, ys = jax.lax.scan(step, s0, (tmaj(x), tmaj(dt), tmaj(B), tmaj(C)))
  y = jnp.moveaxis(ys, 0, 1).astype(x.dtype)
  if return_final_state:
    return y, final
  return y
