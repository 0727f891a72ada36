"""Mosaic TPU Pallas kernels for the chunked SSD scan (forward and backward).

Design (after axlearn's TPU SSD kernel): one kernel per direction with grid
(batch, head blocks, chunks). The chunk axis is "arbitrary" (sequential on a core) and the
running state of every head of the block lives in a float32 VMEM scratch across it, so x, B, C
are read once and y written once. Inside a grid step a static loop over the block's heads does
the chunk's dense work on the MXU:

    CB = C B^T (Q x Q), W = CB * exp(segsum) * dt, y = W x + exp(acum) C S^T + D x,
    S <- exp(a_last) S + (x * exp(a_last - acum) dt)^T B

The backward runs the chunks in reverse (reversed index maps) carrying dS in VMEM and reads the
chunk-entry states saved by the forward. Both accumulate in float32; bf16 inputs feed the MXU
in bf16 (the Q x Q weights are rounded to the input dtype before multiplying x, as mamba_ssm).

Layouts (all reshapes are free except the (b, h, L) -> (b, L, h) transposes of the two small
per-step float32 arrays, and, only when groups < heads, B/C to (b, g, L, n)):
    x, y, dy, dx          (b, L, h*p)            block (1, Q, hb*p)
    B, C (g == h)         (b, L, h*n)            block (1, Q, hb*n)
    B, C (g <  h)         (b, g, L, n)           block (1, gb, Q, n)
    dt, acum  "rows"      (b, h/hb, hb, L)       block (1, 1, hb, Q)  (per-head row vectors)
    dt, acum  "cols"      (b, h/hb, L, hb)       block (1, 1, Q, hb)  (per-head column vectors)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.ssd.common import CoreConfig, make_scan, prepare_and_run

__all__ = ["ssd_scan_tpu", "ssd_core_tpu", "tpu_supports", "heads_per_block"]

f32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))  # a @ b
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def heads_per_block(h: int, g: int, p: int, n: int) -> int:
  """Heads per grid step: lane-dense blocks (hb*p and hb*n multiples of 128, or all heads),
  at most ~512 lanes so double-buffered blocks stay a few MiB, and block-aligned groups."""
  r = h // g
  ok = []
  for hb in range(1, h + 1):
    if h % hb:
      continue
    lanes_ok = hb == h or ((hb * p) % 128 == 0 and (hb * n) % 128 == 0)
    groups_ok = g == h or hb % r == 0 or r % hb == 0
    if lanes_ok and groups_ok:
      ok.append(hb)
  small = [hb for hb in ok if hb * max(p, n) <= 512]
  return max(small) if small else min(ok)


def tpu_supports(*, x, B, chunk_size, **_) -> str | None:
  """Why the Mosaic kernel cannot take a call (None: it can). Only what was AOT-compiled."""
  _, _, h, p = x.shape
  n = B.shape[-1]
  if chunk_size % 128:
    return f"chunk_size={chunk_size} is not a multiple of 128 (TPU lane tiling)"
  if p not in (64, 128) or n not in (64, 128):
    return f"headdim={p}, dstate={n}: the TPU kernel is compiled for 64 or 128 only"
  if jnp.dtype(x.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)):
    return f"dtype {x.dtype} is not bf16/f32"
  return None


# --------------------------------------------------------------------------- #
# Kernels
# --------------------------------------------------------------------------- #
def _mm(a, b, dims, mm_dtype, precision):
  return lax.dot_general(
    a.astype(mm_dtype), b.astype(mm_dtype), dims, precision=precision, preferred_element_type=f32
  )


def _bc_loader(g_eq_h: bool, n: int, r: int, hb: int):
  """Returns load(ref, j) -> (Q, n) for head j of the block, for either B/C layout."""
  if g_eq_h:
    return lambda ref, j: ref[0, :, j * n : (j + 1) * n]
  local = (lambda j: j // r) if hb >= r else (lambda j: 0)
  return lambda ref, j: ref[0, local(j)]


def _fwd_kernel(
  D_ref,
  x_ref,
  B_ref,
  C_ref,
  dtr_ref,
  acr_ref,
  dtc_ref,
  acc_ref,
  s0_ref,
  y_ref,
  sf_ref,
  *rest,
  hb,
  p,
  n,
  r,
  g_eq_h,
  nchunks,
  mm_dtype,
  precision,
  save,
):
  if save:
    st_ref, s_scr = rest
  else:
    (s_scr,) = rest
  hblk, c = pl.program_id(1), pl.program_id(2)
  Q = x_ref.shape[1]
  load_bc = _bc_loader(g_eq_h, n, r, hb)

  @pl.when(c == 0)
  def _():
    s_scr[...] = s0_ref[0]

  causal = lax.broadcasted_iota(jnp.int32, (Q, Q), 0) >= lax.broadcasted_iota(jnp.int32, (Q, Q), 1)
  for j in range(hb):
    x_j = x_ref[0, :, j * p : (j + 1) * p]  # (Q, p)
    B_j, C_j = load_bc(B_ref, j), load_bc(C_ref, j)  # (Q, n)
    dt_r, ac_r = dtr_ref[0, 0, j : j + 1, :], acr_ref[0, 0, j : j + 1, :]  # (1, Q)
    dt_c, ac_c = dtc_ref[0, 0, :, j : j + 1], acc_ref[0, 0, :, j : j + 1]  # (Q, 1)
    a_last = ac_r[:, Q - 1 : Q]  # (1, 1)
    # Mask the exponent (not the product): exp of the positive upper triangle can overflow.
    L = jnp.exp(jnp.where(causal, ac_c - ac_r, -jnp.inf))  # (Q, Q) [l, s]
    w = _mm(C_j, B_j, _NT, mm_dtype, precision) * L * dt_r
    S = s_scr[j]  # (p, n) f32
    if save:
      st_ref[0, 0, j] = S
    y = _mm(w, x_j, _NN, mm_dtype, precision)
    y = y + jnp.exp(ac_c) * _mm(C_j, S, _NT, mm_dtype, precision)
    y = y + D_ref[hblk * hb + j] * x_j.astype(f32)
    y_ref[0, :, j * p : (j + 1) * p] = y.astype(y_ref.dtype)
    xw = x_j.astype(f32) * (jnp.exp(a_last - ac_c) * dt_c)  # (Q, p)
    s_scr[j] = jnp.exp(a_last) * S + _mm(xw, B_j, _TN, mm_dtype, precision)

  @pl.when(c == nchunks - 1)
  def _():
    sf_ref[0] = s_scr[...]


def _bwd_kernel(
  D_ref,
  x_ref,
  B_ref,
  C_ref,
  dtr_ref,
  acr_ref,
  dtc_ref,
  acc_ref,
  st_ref,
  dy_ref,
  dsf_ref,
  dx_ref,
  dB_ref,
  dC_ref,
  ddtr_ref,
  dacr_ref,
  ddtc_ref,
  dacc_ref,
  dD_ref,
  ds0_ref,
  ds_scr,
  *,
  hb,
  p,
  n,
  r,
  g_eq_h,
  nchunks,
  mm_dtype,
  precision,
):
  hblk, c = pl.program_id(1), pl.program_id(2)  # c counts steps; the chunk is nchunks-1-c
  Q = x_ref.shape[1]
  load_bc = _bc_loader(g_eq_h, n, r, hb)

  @pl.when(c == 0)
  def _():
    ds_scr[...] = dsf_ref[0]
    dD_ref[...] = jnp.zeros_like(dD_ref)

  row = lax.broadcasted_iota(jnp.int32, (Q, Q), 0)
  causal = row >= lax.broadcasted_iota(jnp.int32, (Q, Q), 1)
  is_last = lax.broadcasted_iota(jnp.int32, (Q, 1), 0) == Q - 1
  for j in range(hb):
    x_j, dy_j = x_ref[0, :, j * p : (j + 1) * p], dy_ref[0, :, j * p : (j + 1) * p]
    B_j, C_j = load_bc(B_ref, j), load_bc(C_ref, j)
    dt_r, ac_r = dtr_ref[0, 0, j : j + 1, :], acr_ref[0, 0, j : j + 1, :]
    dt_c, ac_c = dtc_ref[0, 0, :, j : j + 1], acc_ref[0, 0, :, j : j + 1]
    a_last = ac_r[:, Q - 1 : Q]
    S = st_ref[0, 0, j]  # state entering the chunk (p, n) f32
    dS = ds_scr[j]  # gradient of the state leaving it
    xf, dyf = x_j.astype(f32), dy_j.astype(f32)

    # Intra-chunk part: y = W x with W = CB * L * dt_s.
    L = jnp.exp(jnp.where(causal, ac_c - ac_r, -jnp.inf))
    cb = _mm(C_j, B_j, _NT, mm_dtype, precision)
    cbl = cb * L
    w = cbl * dt_r
    dw = _mm(dy_j, x_j, _NT, mm_dtype, precision)  # (Q, Q) [l, s]
    dx = _mm(w, dy_j, _TN, mm_dtype, precision)  # (Q, p)
    dcb = dw * L * dt_r
    dC = _mm(dcb, B_j, _NN, mm_dtype, precision)  # (Q, n)
    dB = _mm(dcb, C_j, _TN, mm_dtype, precision)
    ddt_r = jnp.sum(dw * cbl, axis=0, keepdims=True)  # (1, Q)
    G = dw * w  # d/d(acum_l - acum_s)
    dac_c = jnp.sum(G, axis=1, keepdims=True)  # (Q, 1)
    dac_r = -jnp.sum(G, axis=0, keepdims=True)  # (1, Q)

    # State entering the chunk: y_off = exp(acum_l) S C_l.
    e_ac = jnp.exp(ac_c)
    cs = _mm(C_j, S, _NT, mm_dtype, precision)  # (Q, p) = C S^T
    dac_c = dac_c + e_ac * jnp.sum(dyf * cs, axis=1, keepdims=True)
    dC = dC + e_ac * _mm(dy_j, S, _NN, mm_dtype, precision)
    dS_in = _mm(dyf * e_ac, C_j, _TN, mm_dtype, precision)  # (p, n)

    # State leaving the chunk: S_out = exp(a_last) S + Xw^T B, Xw = x exp(a_last - acum) dt.
    e_end = jnp.exp(a_last - ac_c)
    wcol = e_end * dt_c
    dxw = _mm(B_j, dS, _NT, mm_dtype, precision)  # (Q, p) = B dS^T
    dx = dx + wcol * dxw
    xw = xf * wcol
    dB = dB + _mm(xw, dS, _NN, mm_dtype, precision)
    ddt_c = e_end * jnp.sum(xf * dxw, axis=1, keepdims=True)
    gs = jnp.sum(xw * dxw, axis=1, keepdims=True)  # (Q, 1)
    e_last = jnp.exp(a_last)
    d_last = jnp.sum(gs) + jnp.sum(dS * e_last * S)
    dac_c = dac_c - gs + jnp.where(is_last, d_last, 0.0)
    dS_in = dS_in + e_last * dS

    Dj = D_ref[hblk * hb + j]
    dx = dx + Dj * dyf
    dD_ref[0, 0, :, j : j + 1] += jnp.sum(xf * dyf).reshape(1, 1)

    dx_ref[0, :, j * p : (j + 1) * p] = dx.astype(dx_ref.dtype)
    dB_ref[0, :, j * n : (j + 1) * n] = dB.astype(dB_ref.dtype)
    dC_ref[0, :, j * n : (j + 1) * n] = dC.astype(dC_ref.dtype)
    ddtr_ref[0, 0, j : j + 1, :] = ddt_r
    dacr_ref[0, 0, j : j + 1, :] = dac_r
    ddtc_ref[0, 0, :, j : j + 1] = ddt_c
    dacc_ref[0, 0, :, j : j + 1] = dac_c
    ds_scr[j] = dS_in

  @pl.when(c == nchunks - 1)
  def _():
    ds0_ref[0] = ds_scr[...]


# --------------------------------------------------------------------------- #
# pallas_call wrappers
# --------------------------------------------------------------------------- #
def _geometry(cfg: CoreConfig, x, B):
  b, L, h, p = x.shape
  g, n = B.shape[2], B.shape[3]
  hb = cfg.tuning[0] if cfg.tuning else heads_per_block(h, g, p, n)
  if h % hb:
    raise ValueError(f"heads per block {hb} must divide heads {h}")
  r = h // g
  if g != h and not (hb % r == 0 or r % hb == 0):
    raise ValueError(f"heads per block {hb} must be a multiple or divisor of heads/group {r}")
  return b, L, h, p, g, n, r, hb, L // cfg.chunk


def _compute(x):
  if jnp.dtype(x.dtype) == jnp.dtype(f32):
    return f32, lax.Precision.HIGHEST
  return x.dtype, None


def _params(cfg, vmem_bytes):
  # Double-buffered blocks plus Q x Q temporaries; ask for headroom but stay <= 64 MiB (v7x VMEM).
  limit = int(min(64 * 2**20, max(32 * 2**20, 2 * vmem_bytes)))
  return pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=limit
  )


def _interpret(cfg):
  return pltpu.InterpretParams() if cfg.interpret else False


def _layouts(cfg, x, B, C, dt, acum, g_eq_h, hb):
  """Free reshapes plus the small transposes (see module docstring)."""
  b, L, h, p = x.shape
  g, n = B.shape[2], B.shape[3]
  nhb = h // hb
  x2 = x.reshape(b, L, h * p)
  if g_eq_h:
    B2, C2 = B.reshape(b, L, g * n), C.reshape(b, L, g * n)
  else:
    B2, C2 = jnp.transpose(B, (0, 2, 1, 3)), jnp.transpose(C, (0, 2, 1, 3))
  rows = lambda a: a.reshape(b, nhb, hb, L)
  cols = lambda a: jnp.transpose(a.reshape(b, nhb, hb, L), (0, 1, 3, 2))
  return x2, B2, C2, rows(dt), rows(acum), cols(dt), cols(acum)


def _specs(Q, hb, p, n, r, g_eq_h, rev, nchunks):
  ch = (lambda c: nchunks - 1 - c) if rev else (lambda c: c)
  xs = pl.BlockSpec((1, Q, hb * p), lambda bi, hi, c: (bi, ch(c), hi))
  if g_eq_h:
    bcs = pl.BlockSpec((1, Q, hb * n), lambda bi, hi, c: (bi, ch(c), hi))
  elif hb >= r:
    bcs = pl.BlockSpec((1, hb // r, Q, n), lambda bi, hi, c: (bi, hi, ch(c), 0))
  else:
    bcs = pl.BlockSpec((1, 1, Q, n), lambda bi, hi, c: (bi, (hi * hb) // r, ch(c), 0))
  rows = pl.BlockSpec((1, 1, hb, Q), lambda bi, hi, c: (bi, hi, 0, ch(c)))
  cols = pl.BlockSpec((1, 1, Q, hb), lambda bi, hi, c: (bi, hi, ch(c), 0))
  state = pl.BlockSpec((1, hb, p, n), lambda bi, hi, c: (bi, hi, 0, 0))
  chunk_state = pl.BlockSpec((1, 1, hb, p, n), lambda bi, hi, c: (bi, ch(c), hi, 0, 0))
  smem = pl.BlockSpec(memory_space=pltpu.SMEM)
  return xs, bcs, rows, cols, state, chunk_state, smem


def _fwd(cfg: CoreConfig, x, B, C, dt, acum, D, s0, save):
  b, L, h, p, g, n, r, hb, nc = _geometry(cfg, x, B)
  Q, g_eq_h = cfg.chunk, g == h
  mm_dtype, precision = _compute(x)
  x2, B2, C2, dtr, acr, dtc, acc = _layouts(cfg, x, B, C, dt, acum, g_eq_h, hb)
  xs, bcs, rows, cols, state, chunk_state, smem = _specs(Q, hb, p, n, r, g_eq_h, False, nc)
  out_shape = [jax.ShapeDtypeStruct((b, L, h * p), x.dtype), jax.ShapeDtypeStruct((b, h, p, n), f32)]
  out_specs = [xs, state]
  if save:
    out_shape.append(jax.ShapeDtypeStruct((b, nc, h, p, n), f32))
    out_specs.append(chunk_state)
  isz = jnp.dtype(x.dtype).itemsize
  vmem = 4 * Q * hb * (p + n) * isz + 8 * Q * hb * 4 + 4 * hb * p * n * 4 + 6 * Q * Q * 4
  kernel = functools.partial(
    _fwd_kernel,
    hb=hb,
    p=p,
    n=n,
    r=r,
    g_eq_h=g_eq_h,
    nchunks=nc,
    mm_dtype=mm_dtype,
    precision=precision,
    save=save,
  )
  outs = pl.pallas_call(
    kernel,
    grid=(b, h // hb, nc),
    in_specs=[smem, xs, bcs, bcs, rows, rows, cols, cols, state],
    out_specs=out_specs,
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM((hb, p, n), f32)],
    compiler_params=_params(cfg, vmem),
    interpret=_interpret(cfg),
    name="ssd_fwd_tpu",
  )(D, x2, B2, C2, dtr, acr, dtc, acc, s0)
  y = outs[0].reshape(b, L, h, p)
  return y, outs[1], (outs[2] if save else None)


def _bwd(cfg: CoreConfig, x, B, C, dt, acum, D, states, dy, ds_final):
  b, L, h, p, g, n, r, hb, nc = _geometry(cfg, x, B)
  Q, g_eq_h = cfg.chunk, g == h
  nhb = h // hb
  mm_dtype, precision = _compute(x)
  x2, B2, C2, dtr, acr, dtc, acc = _layouts(cfg, x, B, C, dt, acum, g_eq_h, hb)
  xs, bcs, rows, cols, state, chunk_state, smem = _specs(Q, hb, p, n, r, g_eq_h, True, nc)
  rev = lambda c: nc - 1 - c
  dbc_spec = pl.BlockSpec((1, Q, hb * n), lambda bi, hi, c: (bi, rev(c), hi))
  dD_spec = pl.BlockSpec((1, 1, 1, hb), lambda bi, hi, c: (bi, hi, 0, 0))
  dbc_dtype = B.dtype if r == 1 else f32  # summed over the group's heads in float32 after
  out_shape = [
    jax.ShapeDtypeStruct((b, L, h * p), x.dtype),
    jax.ShapeDtypeStruct((b, L, h * n), dbc_dtype),
    jax.ShapeDtypeStruct((b, L, h * n), dbc_dtype),
    jax.ShapeDtypeStruct((b, nhb, hb, L), f32),
    jax.ShapeDtypeStruct((b, nhb, hb, L), f32),
    jax.ShapeDtypeStruct((b, nhb, L, hb), f32),
    jax.ShapeDtypeStruct((b, nhb, L, hb), f32),
    jax.ShapeDtypeStruct((b, nhb, 1, hb), f32),
    jax.ShapeDtypeStruct((b, h, p, n), f32),
  ]
  out_specs = [xs, dbc_spec, dbc_spec, rows, rows, cols, cols, dD_spec, state]
  isz = jnp.dtype(x.dtype).itemsize
  vmem = 8 * Q * hb * (p + n) * isz + 16 * Q * hb * 4 + 6 * hb * p * n * 4 + 10 * Q * Q * 4
  kernel = functools.partial(
    _bwd_kernel, hb=hb, p=p, n=n, r=r, g_eq_h=g_eq_h, nchunks=nc, mm_dtype=mm_dtype, precision=precision
  )
  (dx2, dB2, dC2, ddtr, dacr, ddtc, dacc, dD, ds0) = pl.pallas_call(
    kernel,
    grid=(b, nhb, nc),
    in_specs=[smem, xs, bcs, bcs, rows, rows, cols, cols, chunk_state, xs, state],
    out_specs=out_specs,
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM((hb, p, n), f32)],
    compiler_params=_params(cfg, vmem),
    interpret=_interpret(cfg),
    name="ssd_bwd_tpu",
  )(D, x2, B2, C2, dtr, acr, dtc, acc, states, dy.reshape(b, L, h * p), ds_final)
  from_rows = lambda a: a.reshape(b, h, L)
  from_cols = lambda a: jnp.transpose(a, (0, 1, 3, 2)).reshape(b, h, L)
  ddt = from_rows(ddtr) + from_cols(ddtc)
  dacum = from_rows(dacr) + from_cols(dacc)
  dD = dD.sum(axis=0).reshape(h)
  return (dx2.reshape(b, L, h, p), dB2.reshape(b, L, h, n), dC2.reshape(b, L, h, n), ddt, dacum, dD, ds0)


ssd_core_tpu = make_scan(_fwd, _bwd)


def ssd_scan_tpu(
  x,
  dt,
  A,
  B,
  C,
  *,
  D=None,
  dt_bias=None,
  dt_softplus: bool = True,
  initial_state=None,
  chunk_size: int = 256,
  return_final_state: bool = False,
  interpret=False,
):
  """The chunked scan on the Mosaic TPU kernel, with `ssd_scan_reference`'s signature and
  results; `interpret=True` runs it in a Pallas interpreter on any backend. Models reach it
  through `zebra_jax.ops.ssd`, which decides where it applies (`tpu_supports`)."""
  return prepare_and_run(
    ssd_core_tpu,
    CoreConfig(chunk=chunk_size, interpret=interpret),
    x,
    dt,
    A,
    B,
    C,
    D=D,
    dt_bias=dt_bias,
    dt_softplus=dt_softplus,
    initial_state=initial_state,
    return_final_state=return_final_state,
  )
