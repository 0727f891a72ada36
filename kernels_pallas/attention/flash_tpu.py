"""Causal flash attention for TPU (Mosaic), forward and backward, with MLA head sizes.

q (B, T, H, K), k (B, T, G, K), v (B, T, G, V): GQA (query head h reads kv head h // (H/G)) and
V != K (MLA: K = d_nope + d_rope, V = d_v). Semantics are `causal_attention_reference`'s with
q_offset 0 (self-attention over one sequence).

Kernels (heads-major layout (B, H, T, D) inside; the wrapper transposes):
* forward, grid (B, H, q blocks, kv blocks): online softmax; kv blocks above the diagonal are
  skipped and their index map repeats the last needed block, so they cost no DMA. Saves the
  log-sum-exp per query row, lane-major (B, H, 1, T).
* dK/dV, grid (B, G, kv blocks, heads of the group, q blocks): computed transposed
  (s^T = k q^T) so the saved row statistics broadcast along sublanes and every matmul is NN or NT;
  accumulates over the query heads of the group, so GQA needs no reduction afterwards.
* dQ, grid (B, H, q blocks, kv blocks).
Sequence lengths that are not a multiple of the block are zero-padded at the end: padded keys lie
after every real query (masked by causality), padded queries are dropped and get zero cotangents.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.attention.reference import self_attention_shape_problem

NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b.T


def _precision(dtype):
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def _interpret(interpret):
  return pltpu.InterpretParams() if interpret is True else (interpret or False)


def _row_to_col(row_1N):
  """(1, N) lane-major statistics -> (N, 1) per-row column (a broadcast plus an aligned transpose)."""
  n = row_1N.shape[-1]
  return jnp.transpose(jnp.broadcast_to(row_1N, (128, n)))[:, :1]


# ------------------------------------------------------------------------------------------ fwd
def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, scale, bq, bk, precision):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when(j * bk <= i * bq + bq - 1)  # any key of this block at or before the last query
  def _step():
    q, k, v = q_ref[0, 0], k_ref[0, 0], v_ref[0, 0]
    s = jax.lax.dot_general(q, k, NT, preferred_element_type=jnp.float32, precision=precision) * scale
    q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
    k_pos = j * bk + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where(q_pos >= k_pos, s, -jnp.inf)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))  # block 0 gives every row a key
    alpha = jnp.exp(m_prev - m_new)
    p = jnp.exp(s - m_new)
    l_sc[...] = alpha * l_sc[...] + p.sum(axis=1, keepdims=True)
    m_sc[...] = m_new
    acc_sc[...] = alpha * acc_sc[...] + jnp.dot(
      p.astype(v.dtype), v, preferred_element_type=jnp.float32, precision=precision
    )

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_sc[...]
    o_ref[0, 0] = (acc_sc[...] / l).astype(o_ref.dtype)
    lse_col = m_sc[...] + jnp.log(l)
    lse_ref[0, 0] = jnp.transpose(jnp.broadcast_to(lse_col, (bq, 128)))[:1, :]


def _fwd(q, k, v, *, scale, bq, bk, interpret):
  B, H, T, K = q.shape
  G, V = k.shape[1], v.shape[-1]
  R = H // G
  nq, nk = T // bq, T // bk

  def kv_index(b, h, i, j):
    last = jax.lax.div((i + 1) * bq - 1, bk)
    return b, jax.lax.div(h, R), jnp.minimum(j, last), 0

  kernel = functools.partial(_fwd_kernel, scale=scale, bq=bq, bk=bk, precision=_precision(q.dtype))
  return pl.pallas_call(
    kernel,
    out_shape=(jax.ShapeDtypeStruct((B, H, T, V), q.dtype), jax.ShapeDtypeStruct((B, H, 1, T), jnp.float32)),
    grid=(B, H, nq, nk),
    in_specs=[
      pl.BlockSpec((1, 1, bq, K), lambda b, h, i, j: (b, h, i, 0)),
      pl.BlockSpec((1, 1, bk, K), kv_index),
      pl.BlockSpec((1, 1, bk, V), kv_index),
    ],
    out_specs=(
      pl.BlockSpec((1, 1, bq, V), lambda b, h, i, j: (b, h, i, 0)),
      pl.BlockSpec((1, 1, 1, bq), lambda b, h, i, j: (b, h, 0, i)),
    ),
    scratch_shapes=[
      pltpu.VMEM((bq, 1), jnp.float32),
      pltpu.VMEM((bq, 1), jnp.float32),
      pltpu.VMEM((bq, V), jnp.float32),
    ],
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
    ),
    interpret=_interpret(interpret),
    name="flash_attention_fwd",
  )(q, k, v)


# ------------------------------------------------------------------------------------------ bwd
def _dkv_kernel(
  q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, scale, bq, bk, precision
):
  j, r, i = pl.program_id(2), pl.program_id(3), pl.program_id(4)

  @pl.when((r == 0) & (i == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  @pl.when(i * bq + bq - 1 >= j * bk)  # some query of this block sees some key of ours
  def _step():
    q, do, k, v = q_ref[0, 0], do_ref[0, 0], k_ref[0, 0], v_ref[0, 0]
    lse, delta = lse_ref[0, 0], delta_ref[0, 0]  # (1, bq)
    s_t = (
      jax.lax.dot_general(k, q, NT, preferred_element_type=jnp.float32, precision=precision) * scale
    )  # (bk, bq)
    k_pos = j * bk + jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 0)
    q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 1)
    p_t = jnp.where(q_pos >= k_pos, jnp.exp(s_t - lse), 0.0)
    dv_sc[...] += jnp.dot(p_t.astype(do.dtype), do, preferred_element_type=jnp.float32, precision=precision)
    dp_t = jax.lax.dot_general(v, do, NT, preferred_element_type=jnp.float32, precision=precision)
    ds_t = p_t * (dp_t - delta)
    dk_sc[...] += jnp.dot(ds_t.astype(q.dtype), q, preferred_element_type=jnp.float32, precision=precision)

  @pl.when((r == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
  def _finish():
    dk_ref[0, 0] = (dk_sc[...] * scale).astype(dk_ref.dtype)
    dv_ref[0, 0] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(
  q_ref,
  do_ref,
  lse_ref,
  delta_ref,
  k_ref,
  v_ref,
  dq_ref,
  lse_sc,
  delta_sc,
  dq_sc,
  *,
  scale,
  bq,
  bk,
  precision,
):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)
    lse_sc[...] = _row_to_col(lse_ref[0, 0])
    delta_sc[...] = _row_to_col(delta_ref[0, 0])

  @pl.when(j * bk <= i * bq + bq - 1)
  def _step():
    q, do, k, v = q_ref[0, 0], do_ref[0, 0], k_ref[0, 0], v_ref[0, 0]
    s = jax.lax.dot_general(q, k, NT, preferred_element_type=jnp.float32, precision=precision) * scale
    q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
    k_pos = j * bk + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    p = jnp.where(q_pos >= k_pos, jnp.exp(s - lse_sc[...]), 0.0)
    dp = jax.lax.dot_general(do, v, NT, preferred_element_type=jnp.float32, precision=precision)
    ds = p * (dp - delta_sc[...])
    dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32, precision=precision)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[0, 0] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _bwd(q, k, v, o, lse, do, *, scale, bq, bk, interpret):
  B, H, T, K = q.shape
  G, V = k.shape[1], v.shape[-1]
  R = H // G
  nq, nk = T // bq, T // bk
  precision = _precision(q.dtype)
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)[:, :, None, :]

  # dK, dV: grid (b, g, j, r, i); skipped q blocks (entirely before key block j) re-point at the
  # first needed one.
  def q_index(b, g, j, r, i):
    first = jax.lax.div(j * bk, bq)
    return b, g * R + r, jnp.maximum(i, first), 0

  def row_index(b, g, j, r, i):
    first = jax.lax.div(j * bk, bq)
    return b, g * R + r, 0, jnp.maximum(i, first)

  kv_own = lambda b, g, j, r, i: (b, g, j, 0)
  dk, dv = pl.pallas_call(
    functools.partial(_dkv_kernel, scale=scale, bq=bq, bk=bk, precision=precision),
    out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
    grid=(B, G, nk, R, nq),
    in_specs=[
      pl.BlockSpec((1, 1, bq, K), q_index),
      pl.BlockSpec((1, 1, bq, V), q_index),
      pl.BlockSpec((1, 1, 1, bq), row_index),
      pl.BlockSpec((1, 1, 1, bq), row_index),
      pl.BlockSpec((1, 1, bk, K), kv_own),
      pl.BlockSpec((1, 1, bk, V), kv_own),
    ],
    out_specs=(pl.BlockSpec((1, 1, bk, K), kv_own), pl.BlockSpec((1, 1, bk, V), kv_own)),
    scratch_shapes=[pltpu.VMEM((bk, K), jnp.float32), pltpu.VMEM((bk, V), jnp.float32)],
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")
    ),
    interpret=_interpret(interpret),
    name="flash_attention_dkv",
  )(q, do, lse, delta, k, v)

  def kv_index(b, h, i, j):
    last = jax.lax.div((i + 1) * bq - 1, bk)
    return b, jax.lax.div(h, R), jnp.minimum(j, last), 0

  own = lambda b, h, i, j: (b, h, i, 0)
  own_row = lambda b, h, i, j: (b, h, 0, i)
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, scale=scale, bq=bq, bk=bk, precision=precision),
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    grid=(B, H, nq, nk),
    in_specs=[
      pl.BlockSpec((1, 1, bq, K), own),
      pl.BlockSpec((1, 1, bq, V), own),
      pl.BlockSpec((1, 1, 1, bq), own_row),
      pl.BlockSpec((1, 1, 1, bq), own_row),
      pl.BlockSpec((1, 1, bk, K), kv_index),
      pl.BlockSpec((1, 1, bk, V), kv_index),
    ],
    out_specs=pl.BlockSpec((1, 1, bq, K), own),
    scratch_shapes=[
      pltpu.VMEM((bq, 1), jnp.float32),
      pltpu.VMEM((bq, 1), jnp.float32),
      pltpu.VMEM((bq, K), jnp.float32),
    ],
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
    ),
    interpret=_interpret(interpret),
    name="flash_attention_dq",
  )(q, do, lse, delta, k, v)
  return dq, dk, dv


# ------------------------------------------------------------------------------------- public
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _flash_hmajor(q, k, v, scale, bq, bk, interpret):
  return _fwd(q, k, v, scale=scale, bq=bq, bk=bk, interpret=interpret)[0]


def _flash_hmajor_fwd(q, k, v, scale, bq, bk, interpret):
  o, lse = _fwd(q, k, v, scale=scale, bq=bq, bk=bk, interpret=interpret)
  return o, (q, k, v, o, lse)


def _flash_hmajor_bwd(scale, bq, bk, interpret, res, do):
  q, k, v, o, lse = res
  return _bwd(q, k, v, o, lse, do, scale=scale, bq=bq, bk=bk, interpret=interpret)


_flash_hmajor.defvjp(_flash_hmajor_fwd, _flash_hmajor_bwd)


def supports(q_BTHK, k_BSGK, v_BSGV) -> str | None:
  """None if the kernel handles these shapes, else why not."""
  problem = self_attention_shape_problem(q_BTHK, k_BSGK, v_BSGV)
  if problem:
    return problem
  B, T, H, K = q_BTHK.shape
  if k_BSGK.shape[3] != K:
    return f"q head dim {K} != k head dim {k_BSGK.shape[3]}"
  if k_BSGK.shape[2] == 0 or H % k_BSGK.shape[2]:
    return f"query heads {H} are not a multiple of kv heads {k_BSGK.shape[2]}"
  if not (q_BTHK.dtype == k_BSGK.dtype == v_BSGV.dtype):
    return "q, k, v dtypes differ"
  return None


def flash_attention_tpu(
  q_BTHK, k_BSGK, v_BSGV, *, scale: float, block_q: int = 512, block_k: int = 512, interpret=False
):
  """Causal flash attention (Mosaic TPU), differentiable; same arguments and result as
  `causal_attention_reference(q, k, v, scale=scale)`.

  Blocks: on TPU keep them multiples of 128 (lane-major statistics); sequences shorter than a block
  use one block rounded up to 128. `interpret=True` runs the kernels in the Pallas TPU interpreter on
  any backend (any block size works there).
  """
  if (why := supports(q_BTHK, k_BSGK, v_BSGV)) is not None:
    raise ValueError(f"flash_attention_tpu: {why}")
  T = q_BTHK.shape[1]
  align = 8 if interpret else 128
  t_round = -(-T // align) * align
  bq, bk = min(block_q, t_round), min(block_k, t_round)
  period = math.lcm(bq, bk)
  Tp = -(-T // period) * period
  to_hmajor = lambda x: jnp.pad(x, ((0, 0), (0, Tp - T), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  o = _flash_hmajor(to_hmajor(q_BTHK), to_hmajor(k_BSGK), to_hmajor(v_BSGV), float(scale), bq, bk, interpret)
  return o.transpose(0, 2, 1, 3)[:, :T]
