"""Absorbed MLA decode on TPU (Mosaic): flash-decoding over the latent cache, all heads per program.

Semantics are `mla_decode_reference`'s. Layout of the work:

* grid (batch, cache blocks): batch is "parallel" (megacore splits it), cache blocks are the
  sequential online-softmax axis;
* the query rows [q_latent | q_rope] of every head are one (H, r_kv + d_r) tile, so a cache block
  (block_s, r_kv + d_r) is read from HBM once and used by all heads in two MXU matmuls:
  scores (H, block_s) = q . rows^T and context (H, r_kv + d_r) += p . rows (the rope columns of the
  context are dropped at the end; that costs d_r / (r_kv + d_r) extra MXU work and no HBM bytes);
* lengths are scalar-prefetched: blocks past a sequence's length are skipped, and their index map
  repeats the last valid block so the pipeline issues no DMA for them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

DEFAULT_BLOCK_S = 512


def _check_shapes(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B):
  B, H, R = q_latent_BHR.shape
  K = q_rope_BHK.shape[-1]
  if cache_BSC.ndim != 3 or cache_BSC.shape[0] != B or cache_BSC.shape[2] != R + K:
    raise ValueError(f"cache must have shape (batch={B}, seq, r_kv + d_r = {R + K}), got {cache_BSC.shape}")
  if q_rope_BHK.shape[:2] != (B, H):
    raise ValueError(f"q_rope must have shape ({B}, {H}, d_r), got {q_rope_BHK.shape}")
  if lengths_B.shape != (B,):
    raise ValueError(f"lengths must have shape ({B},), got {lengths_B.shape}")
  return B, H, R, K


def _block_rows(seq: int, block_s: int, dtype) -> int:
  """Rows per cache block: the whole cache if it fits (any length is legal as a full dimension),
  else `block_s`, which must fill whole sublane tiles (8 rows of 32 bits, 16 of bf16)."""
  if seq <= block_s:
    return seq
  tile = 8 * (4 // jnp.dtype(dtype).itemsize)
  if block_s % tile:
    raise ValueError(f"block_s={block_s} must be a multiple of {tile} for {jnp.dtype(dtype).name}")
  return block_s


def _decode_kernel(len_ref, q_ref, kv_ref, o_ref, m_sc, l_sc, acc_sc, *, scale, block_s, r_kv, precision):
  b, j = pl.program_id(0), pl.program_id(1)
  length = len_ref[b]
  start = j * block_s

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when(start < length)
  def _step():
    q_HC = q_ref[0]
    rows_SC = kv_ref[0]
    # Rows past the length (and past the cache end in a ragged last block) may hold anything,
    # NaN included: zero them so 0-probability rows contribute exactly 0.
    row_ids = start + jax.lax.broadcasted_iota(jnp.int32, (rows_SC.shape[0], 1), 0)
    rows_SC = jnp.where(row_ids < length, rows_SC, jnp.zeros_like(rows_SC))
    s_HS = (
      jax.lax.dot_general(
        q_HC, rows_SC, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32, precision=precision
      )
      * scale
    )
    col_ids = start + jax.lax.broadcasted_iota(jnp.int32, s_HS.shape, 1)
    s_HS = jnp.where(col_ids < length, s_HS, -jnp.inf)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, s_HS.max(axis=1, keepdims=True))  # finite: block has a valid row
    alpha = jnp.exp(m_prev - m_new)
    p_HS = jnp.exp(s_HS - m_new)
    l_sc[...] = alpha * l_sc[...] + p_HS.sum(axis=1, keepdims=True)
    m_sc[...] = m_new
    acc_sc[...] = alpha * acc_sc[...] + jnp.dot(
      p_HS.astype(rows_SC.dtype), rows_SC, preferred_element_type=jnp.float32, precision=precision
    )

  @pl.when(j == pl.num_programs(1) - 1)
  def _finish():
    l = l_sc[...]
    inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)  # length 0 -> zeros
    o_ref[0] = (acc_sc[...] * inv)[:, :r_kv].astype(o_ref.dtype)


def mla_decode_tpu(
  q_latent_BHR,
  q_rope_BHK,
  cache_BSC,
  lengths_B,
  *,
  scale: float,
  block_s: int = DEFAULT_BLOCK_S,
  interpret=False,
):
  """Absorbed MLA decode as a Mosaic TPU kernel; same arguments and result as
  `mla_decode_reference`.

  `interpret`: False compiles for TPU; True (or a `pltpu.InterpretParams`) runs the same kernel
  through the Pallas TPU interpreter on any backend (CPU CI).
  """
  B, H, R, K = _check_shapes(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B)
  S, C = cache_BSC.shape[1], R + K
  dtype = cache_BSC.dtype
  # One query tile [latent | rope] per head, in the cache's dtype so the MXU runs at its rate
  # (bf16 cache: bf16 operands, f32 accumulation).
  q_BHC = jnp.concatenate([q_latent_BHR, q_rope_BHK.astype(q_latent_BHR.dtype)], -1).astype(dtype)
  precision = jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT
  bs = _block_rows(S, block_s, dtype)
  n_blocks = pl.cdiv(S, bs)
  lengths_B = jnp.clip(lengths_B.astype(jnp.int32), 0, S)

  def kv_index(b, j, len_ref):
    # Blocks past the length re-point at the last valid one: the pipeline skips the DMA. lax.div,
    # not //: jnp's floor division lowers through `sign`, which needs a live TPU to lower.
    last = jax.lax.div(jnp.maximum(len_ref[b] - 1, 0), jnp.int32(bs))
    return b, jnp.minimum(j, last), 0

  kernel = functools.partial(_decode_kernel, scale=float(scale), block_s=bs, r_kv=R, precision=precision)
  if interpret is True:
    interpret = pltpu.InterpretParams()
  out = pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((B, H, R), q_latent_BHR.dtype),
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1,
      grid=(B, n_blocks),
      in_specs=[pl.BlockSpec((1, H, C), lambda b, j, len_ref: (b, 0, 0)), pl.BlockSpec((1, bs, C), kv_index)],
      out_specs=pl.BlockSpec((1, H, R), lambda b, j, len_ref: (b, 0, 0)),
      scratch_shapes=[
        pltpu.VMEM((H, 1), jnp.float32),
        pltpu.VMEM((H, 1), jnp.float32),
        pltpu.VMEM((H, C), jnp.float32),
      ],
    ),
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
    interpret=interpret or False,
    name="mla_decode_tpu",
  )(lengths_B, q_BHC, cache_BSC)
  return out
