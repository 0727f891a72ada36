"""Absorbed MLA decode on Hopper GPUs: a Mosaic GPU (plgpu) flash-decoding kernel.

Written against `jax.experimental.pallas.mosaic_gpu` because the Pallas Triton lowering is deprecated
from jax 0.11; Mosaic GPU gives TMA copies and wgmma directly. Semantics are
`mla_decode_reference`'s.

Work split (split-K "flash decoding"): grid (splits, batch). Each CTA is one warpgroup that owns a
contiguous range of `chunk` cache rows of one sequence and all heads:

* the queries of all heads, zero-padded to 64 rows (the wgmma M), are read once: q_latent and q_rope
  straight into their own swizzled tiles when both widths are whole swizzle tiles (no XLA pass),
  else as one concatenated, padded tile;
* cache blocks (block_s, r_kv + d_r) stream through a `num_stages`-deep ring of shared-memory
  buffers filled by TMA; each block is used twice from shared memory, never re-read from HBM:
  scores (64, block_s) = Q . rows^T (one wgmma per query piece over its columns) and
  context (64, r_kv) += P . rows[:, :r_kv] (the whole row when r_kv does not end on a swizzle tile);
* only blocks below the sequence's length are fetched (the loop bound is dynamic); rows past the
  length inside the last block are masked, rows past the cache end are zero-filled by TMA;
* each CTA writes its unnormalised latent context (real heads only) and its running max / sum
  (base-2 exponents); a few XLA ops combine the splits (heads x r_kv floats per CTA, a few % of the
  cache bytes);
* the split count fills the GPU in one wave (`default_splits`; a partial second wave cost ~10% at
  8k): batch 64 with the default one CTA per SM gives 2 splits.

Limits (anything else is for the reference): bf16/fp16, heads <= 64, r_kv + d_r <= 256 and a
multiple of 16 (one wgmma N tile; the swizzle is the widest of 128/64/32 bytes dividing the row).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

HEAD_TILE = 64  # wgmma M: the head dimension is padded to it
NUM_SMS_H100 = 132


def supports(q_latent_BHR, q_rope_BHK, cache_BSC) -> str | None:
  """None if the kernel handles these shapes/dtypes, else the reason it does not."""
  H, C = q_latent_BHR.shape[1], cache_BSC.shape[-1]
  if jnp.dtype(cache_BSC.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"cache dtype {jnp.dtype(cache_BSC.dtype).name} (needs bf16/fp16)"
  if H > HEAD_TILE:
    return f"{H} heads (at most {HEAD_TILE})"
  if C > 256 or C % 16:
    return f"row width r_kv + d_r = {C} (needs a multiple of 16, at most 256)"
  return None


def _swizzle_bytes(row: int, itemsize: int) -> int:
  for sw in (128, 64, 32):
    if row % (sw // itemsize) == 0:
      return sw
  raise ValueError(f"row width {row} fits no wgmma swizzle")


SMEM_PER_SM = 227 * 1024


def ctas_per_sm(row: int, block_s: int, num_stages: int, itemsize: int = 2) -> int:
  """CTAs that fit one SM: shared memory (query tile + ring) and registers (about 2 warpgroups of
  this size)."""
  smem = (HEAD_TILE + num_stages * block_s) * row * itemsize + 1024
  return max(1, min(2, SMEM_PER_SM // smem))


def default_splits(batch: int, seq: int, block_s: int, row: int, num_stages: int) -> int:
  """Splits so that batch x splits CTAs fill the GPU in one wave (a second, partial wave would idle
  most SMs for a whole CTA's time), with at least 4 blocks per split."""
  slots = NUM_SMS_H100 * ctas_per_sm(row, block_s, num_stages)
  most = max(1, seq // (4 * block_s))
  return max(1, min(slots // batch, most))


def _kernel(
  *refs, q_cols, seq, scale_log2, chunk, block_s, num_stages, dtype, kv_transforms, out_rows, acc_cols
):
  # refs: q pieces (gmem), cache, lengths, acc/m/l outputs, q pieces (smem), q barriers, kv barriers.
  n_q = len(q_cols)
  q_gmems, (cache_gmem, len_gmem, acc_gmem, m_gmem, l_gmem) = refs[:n_q], refs[n_q : n_q + 5]
  q_smems, q_bars, kv_bars = refs[n_q + 5 : 2 * n_q + 5], refs[2 * n_q + 5], refs[2 * n_q + 6]
  split, b = lax.axis_index("split"), lax.axis_index("batch")
  length = jnp.clip(len_gmem[b], 0, seq)
  start = split * chunk
  stop = jnp.minimum(start + chunk, length)
  n_blocks = jnp.maximum(lax.div(stop - start + (block_s - 1), jnp.int32(block_s)), 0)
  C = cache_gmem.shape[-1]

  def stream(kv_smem):
    """The online softmax over this CTA's cache blocks; kv_smem is the TMA ring."""

    def fetch(i, slot):
      plgpu.copy_gmem_to_smem(
        cache_gmem.at[b, pl.ds(start + i * block_s, block_s)], kv_smem.at[slot], kv_bars.at[slot]
      )

    heads = q_gmems[0].shape[1]
    if heads < HEAD_TILE:  # padding rows hold zeros, not stale memory (they never leave the SM)
      for q_smem in q_smems:
        q_smem[...] = jnp.zeros(q_smem.shape, q_smem.dtype)
      plgpu.commit_smem()  # order these stores before the TMA writes below
    for t, (q_gmem, q_smem) in enumerate(zip(q_gmems, q_smems)):
      plgpu.copy_gmem_to_smem(q_gmem.at[b], q_smem.at[pl.ds(0, heads)], q_bars.at[t])
    for i in range(num_stages):  # prologue: fill the ring
      pl.when(i < n_blocks)(functools.partial(fetch, i, i))
    for t in range(n_q):
      plgpu.barrier_wait(q_bars.at[t])

    def body(j, carry):
      acc, m, l = carry
      slot = lax.rem(j, jnp.int32(num_stages))
      plgpu.barrier_wait(kv_bars.at[slot])

      def qk(s_ref):  # scores = sum over the q pieces of q_piece . rows[:, piece columns]^T
        for q_smem, (c0, width) in zip(q_smems, q_cols):
          rows_t = plgpu.transpose_ref(kv_smem.at[slot, :, pl.ds(c0, width)], (1, 0))
          plgpu.wgmma(s_ref, q_smem, rows_t)
        return s_ref[...]

      s = pl.run_scoped(qk, plgpu.ACC((HEAD_TILE, block_s), jnp.float32)) * scale_log2
      cols = start + j * block_s + lax.broadcasted_iota(jnp.int32, (HEAD_TILE, block_s), 1)
      s = jnp.where(cols < length, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(axis=1))  # finite: every fetched block has a valid row
      alpha = jnp.exp2(m - m_new)
      p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
      l = l * alpha + p.sum(axis=1)
      acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])

      def pv(acc_ref):  # only the latent columns when they are whole swizzle tiles
        plgpu.wgmma(acc_ref, p.astype(dtype), kv_smem.at[slot, :, pl.ds(0, acc_cols)])

      acc = pl.run_state(pv)(plgpu.ACC.init(acc))  # reading the result waits for the wgmma
      nxt = j + num_stages
      pl.when(nxt < n_blocks)(lambda: fetch(nxt, slot))  # the slot is free again: refill it
      return acc, m_new, l

    init = (
      jnp.zeros((HEAD_TILE, acc_cols), jnp.float32),
      jnp.full((HEAD_TILE,), -jnp.inf, jnp.float32),
      jnp.zeros((HEAD_TILE,), jnp.float32),
    )
    return lax.fori_loop(0, n_blocks, body, init)

  acc, m, l = pl.run_scoped(stream, plgpu.SMEM((num_stages, block_s, C), dtype, transforms=kv_transforms))

  def store(acc_smem, m_smem, l_smem):  # scoped after the ring is released: reuses its memory
    acc_smem[...] = acc
    m_smem[...] = m
    l_smem[...] = l
    plgpu.commit_smem()
    # Only the real heads leave the SM (whole 8-row tiles; the padding rows stay).
    plgpu.copy_smem_to_gmem(acc_smem.at[pl.ds(0, out_rows)], acc_gmem.at[b, split])
    plgpu.copy_smem_to_gmem(m_smem, m_gmem.at[b, split])
    plgpu.copy_smem_to_gmem(l_smem, l_gmem.at[b, split])
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(
    store,
    plgpu.SMEM((HEAD_TILE, acc_cols), jnp.float32),
    plgpu.SMEM((HEAD_TILE,), jnp.float32),
    plgpu.SMEM((HEAD_TILE,), jnp.float32),
  )


def mla_decode_gpu(
  q_latent_BHR,
  q_rope_BHK,
  cache_BSC,
  lengths_B,
  *,
  scale: float,
  block_s: int = 128,
  num_stages: int = 3,
  num_splits: int | None = None,
):
  """Absorbed MLA decode as a Mosaic GPU kernel (Hopper); same arguments and result as
  `mla_decode_reference`. Raises ValueError for shapes outside `supports`.

  Defaults (128-row blocks, a 3-deep ring, one CTA per SM, `default_splits`) were the fastest or
  within 2% of it on an H100 at batch 64, contexts 8k-32k, rows 160 and 224 (docs/benchmarks.md).
  """
  B, H, R = q_latent_BHR.shape
  K = q_rope_BHK.shape[-1]
  S, C = cache_BSC.shape[1], cache_BSC.shape[2]
  if C != R + K or cache_BSC.shape[0] != B or lengths_B.shape != (B,):
    raise ValueError(
      f"mla_decode_gpu: shapes q_latent {q_latent_BHR.shape}, q_rope "
      f"{q_rope_BHK.shape}, cache {cache_BSC.shape}, lengths {lengths_B.shape} "
      f"do not agree"
    )
  if (why := supports(q_latent_BHR, q_rope_BHK, cache_BSC)) is not None:
    raise ValueError(f"mla_decode_gpu does not support {why}")
  if block_s % 64 or block_s > 256:
    raise ValueError(f"block_s={block_s} must be 64, 128, 192 or 256")
  dtype = cache_BSC.dtype
  if S % 8:
    # TMA tiles rows by 8: a cache allocated with another length is padded (a copy; allocate caches
    # in multiples of 8 to avoid it). Padded rows lie past every length and are never used.
    cache_BSC = jnp.pad(cache_BSC, ((0, 0), (0, 8 - S % 8), (0, 0)))
  splits = num_splits or default_splits(B, S, block_s, C, num_stages)
  chunk = pl.cdiv(pl.cdiv(S, splits), block_s) * block_s
  splits = pl.cdiv(S, chunk)

  itemsize = jnp.dtype(dtype).itemsize
  sw = _swizzle_bytes(C, itemsize)
  tile = sw // itemsize
  transforms = (plgpu.TilingTransform((8, tile)), plgpu.SwizzleTransform(sw))
  if R % tile == 0 and K % tile == 0 and H % 8 == 0:
    # q_latent and q_rope go straight to their own shared-memory tiles (no XLA concat/pad pass);
    # the scores are the sum of two wgmmas over the matching column ranges of each cache block.
    q_pieces = [q_latent_BHR.astype(dtype), q_rope_BHK.astype(dtype)]
    q_cols = ((0, R), (R, K))
  else:
    q_BHC = jnp.concatenate([q_latent_BHR, q_rope_BHK.astype(q_latent_BHR.dtype)], -1)
    q_pieces = [jnp.pad(q_BHC.astype(dtype), ((0, 0), (0, HEAD_TILE - H), (0, 0)))]
    q_cols = ((0, C),)
  f32 = jnp.float32
  rows = -(-H // 8) * 8  # heads rounded up to whole 8-row tiles
  # P . rows over the latent columns only when they end on a swizzle tile, else over the whole row.
  acc_cols = R if R % tile == 0 else C
  kernel = functools.partial(
    _kernel,
    q_cols=q_cols,
    seq=S,
    scale_log2=float(scale) * math.log2(math.e),
    chunk=chunk,
    block_s=block_s,
    num_stages=num_stages,
    dtype=dtype,
    kv_transforms=transforms,
    out_rows=rows,
    acc_cols=acc_cols,
  )
  acc, m, l = plgpu.kernel(
    kernel,
    out_type=(
      jax.ShapeDtypeStruct((B, splits, rows, acc_cols), f32),
      jax.ShapeDtypeStruct((B, splits, HEAD_TILE), f32),
      jax.ShapeDtypeStruct((B, splits, HEAD_TILE), f32),
    ),
    grid=(splits, B),
    grid_names=("split", "batch"),
    scratch_types=(
      *[plgpu.SMEM((HEAD_TILE, w), dtype, transforms=transforms) for _, w in q_cols],
      plgpu.Barrier(num_barriers=len(q_cols)),
      plgpu.Barrier(num_barriers=num_stages),
    ),
    compiler_params=plgpu.CompilerParams(
      approx_math=True, lowering_semantics=plgpu.LoweringSemantics.Warpgroup
    ),
  )(*q_pieces, cache_BSC, lengths_B.astype(jnp.int32))
  out = combine_splits(acc, m[:, :, :rows], l[:, :, :rows])[:, :H, :R]
  return out.astype(q_latent_BHR.dtype)


def combine_splits(acc_BPHC, m_BPH, l_BPH):
  """Merge per-split (unnormalised context, base-2 running max, running sum) into the context."""
  m_max = jnp.max(m_BPH, axis=1, keepdims=True)
  m_max = jnp.where(jnp.isfinite(m_max), m_max, 0.0)  # no valid row anywhere (length 0)
  w_BPH = jnp.exp2(m_BPH - m_max)  # empty splits have m = -inf: weight 0
  den_BH = jnp.sum(w_BPH * l_BPH, axis=1)
  num_BHC = jnp.sum(w_BPH[..., None] * acc_BPHC, axis=1)  # elementwise: no TF32 matmul
  return jnp.where(den_BH[..., None] > 0, num_BHC / jnp.where(den_BH > 0, den_BH, 1.0)[..., None], 0.0)
