"""GPU Pallas kernels for the chunked SSD scan (forward and backward), Triton lowering.

Why Triton and not Mosaic GPU (yet): the Pallas Triton lowering is deprecated in jax 0.11 and
Mosaic GPU is the long-lived choice on Hopper, but this kernel had to be verified mostly on CPU
(a few minutes of GPU time in all). Triton-style Pallas kernels run unchanged under
`interpret=True` on a CPU and lower for CUDA through `jax.export` there, so every kernel below
is checked on CPU before it reaches the GPU; the Mosaic GPU interpreter is internal to jax and
limited to single-block grids. The kernels use only generic Pallas (refs, `pl.ds`, dots,
`fori_loop`) so a Mosaic GPU port keeps their structure; porting them is the follow-up before
the Triton lowering is removed (see docs/kernels.md).

Structure (chunk-parallel, like mamba_ssm but with fewer, fused kernels). Forward:
  1. chunk_state   grid (b, chunks, h):        S_c = sum_s x_s exp(a_last - acum_s) dt_s B_s^T
  2. state_pass    grid (b, h, p*n / blk):     S_in[c+1] = exp(a_last[c]) S_in[c] + S_c (sequential)
  3. chunk_scan    grid (b, chunks, Q/T, h):   y = intra-chunk (C B^T * decay * dt) x
                                                  + exp(acum) C S_in^T + D x
Backward (same two helpers, reversed):
  1. chunk_state on (dy, C, exp(acum)): dS contributed inside each chunk
  2. state_pass in reverse order from dS_final: dS_out per chunk and d initial_state
  3. bwd_dx   (per source block): dx, dB, d dt, d acum (source side), d a_last, dD partials
     bwd_dc   (per target block): dC, d acum (target side)
The (Q x Q) chunk is processed in (T x T) causal tiles, T = 64 by default, so register tiles
stay small; everything accumulates in float32, bf16 feeds the tensor cores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels_pallas.ssd.common import CoreConfig, make_scan, prepare_and_run

__all__ = ["ssd_scan_gpu", "ssd_core_gpu", "gpu_supports", "GPU_DTYPES"]

f32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))
_NT = (((1,), (1,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))
GPU_DTYPES = ("bfloat16", "float32")


def _pow2(v: int) -> bool:
  return v > 0 and (v & (v - 1)) == 0


def gpu_supports(*, x, B, chunk_size, **_) -> str | None:
  """Why the GPU kernel cannot take a call (None: it can): what was verified on the H100."""
  p, n = x.shape[-1], B.shape[-1]
  if p not in (32, 64, 128) or n not in (32, 64, 128):
    return f"headdim={p}, dstate={n}: the GPU kernel is verified for 32, 64 or 128"
  if chunk_size not in (64, 128, 256):
    return f"chunk_size={chunk_size} is not 64, 128 or 256"
  if jnp.dtype(x.dtype).name not in GPU_DTYPES:
    return f"dtype {x.dtype} is not one of {GPU_DTYPES}"
  if jnp.dtype(x.dtype) == jnp.dtype(f32) and max(p, n) > 64:
    return "float32 with headdim or dstate 128 was not verified on the GPU"
  return None


def _tuning(cfg: CoreConfig, p: int, n: int, dtype=jnp.bfloat16):
  """(T, num_warps, num_stages, state-pass block, backward T, backward num_warps).

  Defaults from the H100 sweep recorded in docs/kernels.md (T=32/64/128 x 4/8 warps at the
  Zebra 1B and 3B heads). The residual states are per chunk, so the forward and backward may
  tile the chunk differently."""
  if cfg.tuning:
    t = tuple(cfg.tuning)
    return t if len(t) == 6 else t + (t[0], t[1])  # 4 entries: backward tiles as forward
  wide = max(p, n) > 64
  if jnp.dtype(dtype) == jnp.dtype(f32):
    # float32 tiles need twice the shared memory of bf16 ones: smaller sub-blocks.
    fwd, bwd = ((32, 8), (32, 8)) if wide else ((64, 4), (64, 8))
  else:
    fwd, bwd = ((128, 8), (32, 4)) if wide else ((64, 4), (128, 8))
  Tf, Tb = min(fwd[0], cfg.chunk), min(bwd[0], cfg.chunk)
  return Tf, fwd[1], 2, 512, Tb, bwd[1]


def _compute(dtype):
  if jnp.dtype(dtype) == jnp.dtype(f32):
    return f32, lax.Precision.HIGHEST
  return dtype, None


def _mm(a, b, dims, mm_dtype, precision):
  return lax.dot_general(
    a.astype(mm_dtype), b.astype(mm_dtype), dims, precision=precision, preferred_element_type=f32
  )


def _params(warps, stages):
  return pltriton.CompilerParams(num_warps=warps, num_stages=stages)


# --------------------------------------------------------------------------- #
# 1. Per-chunk state: out = sum_s (u_s * w_s)^T V_s
# --------------------------------------------------------------------------- #
def _chunk_state_kernel(u_ref, v_ref, dt_ref, ac_ref, out_ref, *, T, Q, mode, mm_dtype, precision):
  a_last = ac_ref[Q - 1]

  def body(j, acc):
    sl = pl.ds(j * T, T)
    ac = ac_ref[sl]
    if mode == "fwd":  # x weighted by its decay to the chunk end times dt
      w = jnp.exp(a_last - ac) * dt_ref[sl]
    else:  # dy weighted by exp(acum): gradient reaching the entry state
      w = jnp.exp(ac)
    u = u_ref[sl, :].astype(f32) * w[:, None]
    return acc + _mm(u, v_ref[sl, :], _TN, mm_dtype, precision)

  p, n = out_ref.shape
  out_ref[...] = lax.fori_loop(0, Q // T, body, jnp.zeros((p, n), f32))


def _chunk_state(cfg, u, v, dt, acum, mode):
  b, L, h, p = u.shape
  g, n = v.shape[2], v.shape[3]
  r, Q, nc = h // g, cfg.chunk, L // cfg.chunk
  T, warps, stages = _tuning(cfg, p, n, u.dtype)[:3]
  mm_dtype, precision = _compute(u.dtype)
  return pl.pallas_call(
    functools.partial(_chunk_state_kernel, T=T, Q=Q, mode=mode, mm_dtype=mm_dtype, precision=precision),
    grid=(b, nc, h),
    in_specs=[
      pl.BlockSpec((None, Q, None, p), lambda bi, c, hi: (bi, c, hi, 0)),
      pl.BlockSpec((None, Q, None, n), lambda bi, c, hi: (bi, c, hi // r, 0)),
      pl.BlockSpec((None, None, Q), lambda bi, c, hi: (bi, hi, c)),
      pl.BlockSpec((None, None, Q), lambda bi, c, hi: (bi, hi, c)),
    ],
    out_specs=pl.BlockSpec((None, None, None, p, n), lambda bi, c, hi: (bi, c, hi, 0, 0)),
    out_shape=jax.ShapeDtypeStruct((b, nc, h, p, n), f32),
    compiler_params=_params(warps, stages),
    interpret=cfg.interpret,
    name=f"ssd_chunk_state_{mode}",
  )(u, v, dt, acum)


# --------------------------------------------------------------------------- #
# 2. Sequential pass over chunks: out[c] = carry; carry = exp(a_last[c]) carry + inc[c]
# --------------------------------------------------------------------------- #
def _state_pass_kernel(inc_ref, alast_ref, s0_ref, out_ref, final_ref, *, nc, unroll, reverse):
  # The increments do not depend on the carry: load `unroll` chunks ahead of the sequential
  # updates so several loads are in flight (a plain loop waits one load latency per chunk).
  def body(k, carry):
    cs = [k * unroll + u for u in range(unroll)]
    cs = [nc - 1 - c for c in cs] if reverse else cs
    incs = [inc_ref[c, :] for c in cs]
    decays = [jnp.exp(alast_ref[c]) for c in cs]
    for c, inc, decay in zip(cs, incs, decays):
      out_ref[c, :] = carry.astype(out_ref.dtype)
      carry = decay * carry + inc
    return carry

  final_ref[...] = lax.fori_loop(0, nc // unroll, body, s0_ref[...])


def _state_pass(cfg, inc, a_last, s0, out_dtype, reverse):
  b, nc, h, p, n = inc.shape
  blk = _tuning(cfg, p, n)[3]
  blk = min(blk, p * n)
  out, final = pl.pallas_call(
    functools.partial(
      _state_pass_kernel, nc=nc, unroll=next(u for u in (8, 4, 2, 1) if nc % u == 0), reverse=reverse
    ),
    grid=(b, h, (p * n) // blk),
    in_specs=[
      pl.BlockSpec((None, nc, None, blk), lambda bi, hi, k: (bi, 0, hi, k)),
      pl.BlockSpec((None, None, nc), lambda bi, hi, k: (bi, hi, 0)),
      pl.BlockSpec((None, None, blk), lambda bi, hi, k: (bi, hi, k)),
    ],
    out_specs=[
      pl.BlockSpec((None, nc, None, blk), lambda bi, hi, k: (bi, 0, hi, k)),
      pl.BlockSpec((None, None, blk), lambda bi, hi, k: (bi, hi, k)),
    ],
    out_shape=[jax.ShapeDtypeStruct((b, nc, h, p * n), out_dtype), jax.ShapeDtypeStruct((b, h, p * n), f32)],
    compiler_params=_params(4, 1),
    interpret=cfg.interpret,
    name="ssd_state_pass_rev" if reverse else "ssd_state_pass",
  )(inc.reshape(b, nc, h, p * n), a_last, s0.reshape(b, h, p * n))
  return out.reshape(b, nc, h, p, n), final.reshape(b, h, p, n)


# --------------------------------------------------------------------------- #
# 3. Forward output, one (T x p) tile of y per program
# --------------------------------------------------------------------------- #
def _causal_decay(ac_l, ac_s, i, j, T, transposed=False):
  """exp(acum_l - acum_s) on the causal part of tile (target i, source j), 0 elsewhere, as
  [l, s] (or [s, l] when transposed). The exponent is masked before exp: the acausal part is
  positive and could overflow."""
  a = lax.broadcasted_iota(jnp.int32, (T, T), 0)
  b = lax.broadcasted_iota(jnp.int32, (T, T), 1)
  if transposed:
    keep = i * T + b >= j * T + a
    return jnp.exp(jnp.where(keep, ac_l[None, :] - ac_s[:, None], -jnp.inf))
  keep = i * T + a >= j * T + b
  return jnp.exp(jnp.where(keep, ac_l[:, None] - ac_s[None, :], -jnp.inf))


def _scan_fwd_kernel(x_ref, B_ref, C_ref, dt_ref, ac_ref, S_ref, D_ref, y_ref, *, T, mm_dtype, precision):
  hi, i = pl.program_id(3), pl.program_id(2)
  li = pl.ds(i * T, T)
  C_i = C_ref[li, :]
  ac_i = ac_ref[li]
  y = jnp.exp(ac_i)[:, None] * _mm(C_i, S_ref[...], _NT, mm_dtype, precision)

  def body(j, y):
    sj = pl.ds(j * T, T)
    w = (
      _mm(C_i, B_ref[sj, :], _NT, mm_dtype, precision)
      * _causal_decay(ac_i, ac_ref[sj], i, j, T)
      * dt_ref[sj][None, :]
    )
    return y + _mm(w, x_ref[sj, :], _NN, mm_dtype, precision)

  y = lax.fori_loop(0, i + 1, body, y)
  y = y + D_ref[hi] * x_ref[li, :].astype(f32)
  y_ref[...] = y.astype(y_ref.dtype)


def _chunk_specs(Q, p, n, r):
  chunk = lambda d, grp=False: pl.BlockSpec(
    (None, Q, None, d),
    (lambda bi, c, i, hi: (bi, c, hi // r, 0)) if grp else (lambda bi, c, i, hi: (bi, c, hi, 0)),
  )
  vec = pl.BlockSpec((None, None, Q), lambda bi, c, i, hi: (bi, hi, c))
  state = pl.BlockSpec((None, None, None, p, n), lambda bi, c, i, hi: (bi, c, hi, 0, 0))
  return chunk, vec, state


def _fwd(cfg: CoreConfig, x, B, C, dt, acum, D, s0, save):
  b, L, h, p = x.shape
  g, n = B.shape[2], B.shape[3]
  r, Q, nc = h // g, cfg.chunk, L // cfg.chunk
  T, warps, stages = _tuning(cfg, p, n, x.dtype)[:3]
  mm_dtype, precision = _compute(x.dtype)
  a_last = acum[:, :, Q - 1 :: Q]  # (b, h, nc)
  inc = _chunk_state(cfg, x, B, dt, acum, "fwd")
  # Entry states are stored in the input dtype (as mamba_ssm); the carry stays float32.
  states, s_final = _state_pass(cfg, inc, a_last, s0, x.dtype, reverse=False)
  chunk, vec, state = _chunk_specs(Q, p, n, r)
  y = pl.pallas_call(
    functools.partial(_scan_fwd_kernel, T=T, mm_dtype=mm_dtype, precision=precision),
    grid=(b, nc, Q // T, h),
    in_specs=[chunk(p), chunk(n, True), chunk(n, True), vec, vec, state, pl.BlockSpec((h,), lambda *_: (0,))],
    out_specs=pl.BlockSpec((None, T, None, p), lambda bi, c, i, hi: (bi, c * (Q // T) + i, hi, 0)),
    out_shape=jax.ShapeDtypeStruct((b, L, h, p), x.dtype),
    compiler_params=_params(warps, stages),
    interpret=cfg.interpret,
    name="ssd_chunk_scan_fwd",
  )(x, B, C, dt, acum, states, D)
  return y, s_final, (states if save else None)


# --------------------------------------------------------------------------- #
# Backward tiles
# --------------------------------------------------------------------------- #
def _bwd_dx_kernel(
  x_ref,
  B_ref,
  C_ref,
  dy_ref,
  dt_ref,
  ac_ref,
  S_ref,
  dS_ref,
  D_ref,
  dx_ref,
  dB_ref,
  ddt_ref,
  dac_ref,
  aux_ref,
  *,
  T,
  Q,
  mm_dtype,
  precision,
):
  """Source tile j: everything indexed by the source step s (x, B, dt, and acum_s)."""
  hi, j = pl.program_id(3), pl.program_id(2)
  sj = pl.ds(j * T, T)
  x_j, B_j, dy_j = x_ref[sj, :], B_ref[sj, :], dy_ref[sj, :]
  dt_j, ac_j = dt_ref[sj], ac_ref[sj]
  a_last = ac_ref[Q - 1]
  dS = dS_ref[...]
  xf = x_j.astype(f32)

  # Through the state leaving the chunk: S_out += (x exp(a_last - acum) dt)^T B.
  e_end = jnp.exp(a_last - ac_j)
  wcol = (e_end * dt_j)[:, None]
  dxw = _mm(B_j, dS, _NT, mm_dtype, precision)  # (T, p) = B dS^T
  xw = xf * wcol
  dx = wcol * dxw
  dB = _mm(xw, dS, _NN, mm_dtype, precision)  # (T, n)
  ddt = e_end * jnp.sum(xf * dxw, axis=1)
  gs = jnp.sum(xw * dxw, axis=1)
  dac = -gs
  e_last = jnp.exp(a_last)
  d_last = jnp.sum(gs) + jnp.where(j == 0, jnp.sum(dS.astype(f32) * e_last * S_ref[...].astype(f32)), 0.0)

  # Intra-chunk, transposed tiles [s, l] over target tiles i >= j.
  def body(i, carry):
    dx, dB, ddt, dac = carry
    li = pl.ds(i * T, T)
    C_i, dy_i, ac_i = C_ref[li, :], dy_ref[li, :], ac_ref[li]
    lt = _causal_decay(ac_i, ac_j, i, j, T, transposed=True)  # (s, l)
    cbl = _mm(B_j, C_i, _NT, mm_dtype, precision) * lt
    wt = cbl * dt_j[:, None]
    dwt = _mm(x_j, dy_i, _NT, mm_dtype, precision)  # (s, l) = x_s . dy_l
    dx = dx + _mm(wt, dy_i, _NN, mm_dtype, precision)
    dB = dB + _mm(dwt * lt * dt_j[:, None], C_i, _NN, mm_dtype, precision)
    ddt = ddt + jnp.sum(dwt * cbl, axis=1)
    dac = dac - jnp.sum(dwt * wt, axis=1)
    return dx, dB, ddt, dac

  dx, dB, ddt, dac = lax.fori_loop(j, Q // T, body, (dx, dB, ddt, dac))
  dyf = dy_j.astype(f32)
  dx = dx + D_ref[hi] * dyf
  dD = jnp.sum(xf * dyf)
  pos = lax.broadcasted_iota(jnp.int32, (T,), 0)
  dx_ref[...] = dx.astype(dx_ref.dtype)
  dB_ref[...] = dB.astype(dB_ref.dtype)
  ddt_ref[...] = ddt
  dac_ref[...] = dac
  aux_ref[...] = jnp.where(pos == 0, d_last, jnp.where(pos == 1, dD, 0.0))


def _bwd_dc_kernel(
  x_ref, B_ref, C_ref, dy_ref, dt_ref, ac_ref, S_ref, dC_ref, dac_ref, *, T, mm_dtype, precision
):
  """Target tile i: dC and the target-side acum gradient."""
  i = pl.program_id(2)
  li = pl.ds(i * T, T)
  C_i, dy_i, ac_i = C_ref[li, :], dy_ref[li, :], ac_ref[li]
  S = S_ref[...]
  e_ac = jnp.exp(ac_i)
  cs = _mm(C_i, S, _NT, mm_dtype, precision)  # (T, p) = C S^T
  dac = e_ac * jnp.sum(dy_i.astype(f32) * cs, axis=1)
  dC = e_ac[:, None] * _mm(dy_i, S, _NN, mm_dtype, precision)  # (T, n)

  def body(j, carry):
    dC, dac = carry
    sj = pl.ds(j * T, T)
    B_j, x_j, dt_j = B_ref[sj, :], x_ref[sj, :], dt_ref[sj]
    lm = _causal_decay(ac_i, ac_ref[sj], i, j, T)  # (l, s)
    w = _mm(C_i, B_j, _NT, mm_dtype, precision) * lm * dt_j[None, :]
    dw = _mm(dy_i, x_j, _NT, mm_dtype, precision)
    dC = dC + _mm(dw * lm * dt_j[None, :], B_j, _NN, mm_dtype, precision)
    dac = dac + jnp.sum(dw * w, axis=1)
    return dC, dac

  dC, dac = lax.fori_loop(0, i + 1, body, (dC, dac))
  dC_ref[...] = dC.astype(dC_ref.dtype)
  dac_ref[...] = dac


def _bwd(cfg: CoreConfig, x, B, C, dt, acum, D, states, dy, ds_final):
  b, L, h, p = x.shape
  g, n = B.shape[2], B.shape[3]
  r, Q, nc = h // g, cfg.chunk, L // cfg.chunk
  _, _, stages, _, T, warps = _tuning(cfg, p, n, x.dtype)
  mm_dtype, precision = _compute(x.dtype)
  a_last = acum[:, :, Q - 1 :: Q]
  inc = _chunk_state(cfg, dy, C, dt, acum, "bwd")
  dstates, ds0 = _state_pass(cfg, inc, a_last, ds_final, x.dtype, reverse=True)

  chunk, vec, state = _chunk_specs(Q, p, n, r)
  tile = lambda d: pl.BlockSpec((None, T, None, d), lambda bi, c, i, hi: (bi, c * (Q // T) + i, hi, 0))
  tvec = pl.BlockSpec((None, None, T), lambda bi, c, i, hi: (bi, hi, c * (Q // T) + i))
  dbc_dtype = B.dtype if r == 1 else f32
  Dspec = pl.BlockSpec((h,), lambda *_: (0,))
  grid = (b, nc, Q // T, h)
  dx, dB_h, ddt_s, dac_s, aux = pl.pallas_call(
    functools.partial(_bwd_dx_kernel, T=T, Q=Q, mm_dtype=mm_dtype, precision=precision),
    grid=grid,
    in_specs=[chunk(p), chunk(n, True), chunk(n, True), chunk(p), vec, vec, state, state, Dspec],
    out_specs=[tile(p), tile(n), tvec, tvec, tvec],
    out_shape=[
      jax.ShapeDtypeStruct((b, L, h, p), x.dtype),
      jax.ShapeDtypeStruct((b, L, h, n), dbc_dtype),
      jax.ShapeDtypeStruct((b, h, L), f32),
      jax.ShapeDtypeStruct((b, h, L), f32),
      jax.ShapeDtypeStruct((b, h, L), f32),
    ],
    compiler_params=_params(warps, stages),
    interpret=cfg.interpret,
    name="ssd_bwd_dx",
  )(x, B, C, dy, dt, acum, states, dstates, D)
  dC_h, dac_l = pl.pallas_call(
    functools.partial(_bwd_dc_kernel, T=T, mm_dtype=mm_dtype, precision=precision),
    grid=grid,
    in_specs=[chunk(p), chunk(n, True), chunk(n, True), chunk(p), vec, vec, state],
    out_specs=[tile(n), tvec],
    out_shape=[jax.ShapeDtypeStruct((b, L, h, n), dbc_dtype), jax.ShapeDtypeStruct((b, h, L), f32)],
    compiler_params=_params(warps, stages),
    interpret=cfg.interpret,
    name="ssd_bwd_dc",
  )(x, B, C, dy, dt, acum, states)

  aux = aux.reshape(b, h, nc, Q // T, T)
  d_last = aux[..., 0].sum(-1)  # (b, h, nc)
  dD = aux[..., 1].sum((0, 2, 3))
  dacum = (dac_s + dac_l).reshape(b, h, nc, Q)
  dacum = dacum.at[..., Q - 1].add(d_last).reshape(b, h, L)
  return dx, dB_h, dC_h, ddt_s, dacum, dD, ds0


ssd_core_gpu = make_scan(_fwd, _bwd)


def ssd_scan_gpu(
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
  """The chunked scan on the GPU kernel (Pallas, Triton lowering), with the signature and
  results of `ssd_scan_reference`; `interpret=True` runs it in a Pallas interpreter on any
  backend. Models reach it through `zebra_jax.ops.ssd`, which decides where it applies (`gpu_supports`)."""
  return prepare_and_run(
    ssd_core_gpu,
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
