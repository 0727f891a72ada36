"""Causal flash attention for GPU (Pallas, Triton lowering), forward and backward, MLA head sizes.

q (B, T, H, K), k (B, T, G, K), v (B, T, G, V): GQA (query head h reads kv head h // (H/G)) and
V != K (MLA: K = d_nope + d_rope, V = d_v). Semantics are `causal_attention_reference`'s with
q_offset 0 (self-attention over one sequence), fp32 accumulation, bf16 / fp16 / fp32 inputs.

Why the Triton lowering and not Mosaic GPU (yet): the Pallas Triton lowering is deprecated from jax
0.11 and Mosaic GPU (`jax.experimental.pallas.mosaic_gpu`, wgmma + TMA) is the long-term port, but
these kernels had to be written and checked without a GPU. Triton-style Pallas kernels run
unchanged under `interpret=True` on a CPU (the tests do, forward and all gradients) and lower to
Triton IR for CUDA on a CPU (`jit(f).trace(...).lower(lowering_platforms=("cuda",))`; the tests
check that too), whereas the Mosaic GPU interpreter is internal to jax and limited to single-block
grids. The repo's SSD GPU kernel made the same choice. The kernels use only generic Pallas (refs,
`pl.ds`, `lax.dot_general`, `fori_loop`); porting them to Mosaic GPU keeps the structure.
API (checked for jax 0.10.2 and 0.11.2): Triton is selected by passing
`compiler_params=jax.experimental.pallas.triton.CompilerParams(num_warps=, num_stages=)` to
`pl.pallas_call` (the `backend=` argument went away in 0.9.1); matmuls are `lax.dot_general`
(`pl.dot` moved to the triton module in 0.10.2).

Layout: the kernels read (B, T, H, D) in place (BlockSpecs with squeezed batch/head dims, row
stride H * D), so there is no transpose. Every program's q / kv block is a power of two (Triton
tensors must be), the sequence is zero-padded at the end to whole blocks: padded keys lie after
every real query (causality masks them), padded queries are dropped and get zero cotangents.

Head dims that are not powers of two (MLA: 96 = 64 + 32, 192 = 128 + 64): the head dim is
zero-padded to a multiple of 16 only (the bf16 mma K step; 24 -> 32, 96 and 192 stay) and split
into power-of-two segments of at least 16 (`head_segments`): q k^T is the sum of one dot per
segment and p v / dq / dk / dv keep one accumulator per segment. So 192/128 costs no padded
FLOPs, where padding to the next power of two (what upstream's Triton kernel does) would add a
third to the score matmuls.

Kernels (flash-attention-2; exponentials in base 2 with log2(e) folded into the scale):
* forward, grid (q blocks, H, B), heaviest (last) q blocks first: online softmax over the kv blocks
  below the diagonal without a mask, then the diagonal blocks with one; writes o and the base-2
  log-sum-exp per row (B, H, T) float32.
* delta = rowsum(dO * O) in XLA (one fused elementwise + reduce).
* dK/dV, grid (kv blocks, G, B): for each of the group's R query heads, walks the q blocks from the
  diagonal down (masked first, then unmasked), recomputing p^T = exp2(k q^T * c - lse) from the
  saved statistics; accumulates over the group's heads, so GQA needs no reduction afterwards.
* dQ, grid (q blocks, H, B): the same recomputation per kv block, dq += ds k.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels_pallas.attention.reference import self_attention_shape_problem

__all__ = [
  "flash_attention_gpu",
  "supports",
  "FlashConfig",
  "Tiles",
  "PRESETS",
  "default_config",
  "parse_config",
  "head_segments",
]

f32 = jnp.float32
LOG2E = math.log2(math.e)
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b
GPU_DTYPES = ("bfloat16", "float16", "float32")
MAX_HEAD_DIM = 256


class Tiles(NamedTuple):
  """One kernel's launch shape: q rows per block, k/v rows per block, warps, pipeline stages."""

  block_q: int
  block_k: int
  num_warps: int
  num_stages: int


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Tiles of the forward, dK/dV and dQ kernels (hashable: a static argument of the custom VJP)."""

  fwd: Tiles
  dkv: Tiles
  dq: Tiles

  def spec(self) -> str:
    return ",".join(
      f"{n}={'x'.join(map(str, t))}" for n, t in (("fwd", self.fwd), ("dkv", self.dkv), ("dq", self.dq))
    )

  def fit(self, T: int) -> "FlashConfig":
    """Blocks clipped to the padded length of a short sequence (power of two, at least 16)."""
    cap = max(16, 1 << max(0, T - 1).bit_length())
    clip = lambda t: t._replace(block_q=min(t.block_q, cap), block_k=min(t.block_k, cap))
    return FlashConfig(clip(self.fwd), clip(self.dkv), clip(self.dq))

  @property
  def period(self) -> int:
    """Sequence padding unit: every block divides it (all blocks are powers of two)."""
    return max(max(t.block_q, t.block_k) for t in (self.fwd, self.dkv, self.dq))


# Block configurations the benchmark autotunes over (`scripts/bench.py kernels --family attention`
# times each one next to cuDNN). (block_q, block_k, warps, stages) per kernel.
PRESETS: dict[str, FlashConfig] = {
  # balanced: 128-row q tiles forward, square 64 tiles backward
  "A": FlashConfig(Tiles(128, 64, 4, 3), Tiles(64, 64, 4, 3), Tiles(64, 64, 4, 3)),
  # big tiles, 8 warps (head dims <= 128)
  "B": FlashConfig(Tiles(128, 128, 8, 2), Tiles(64, 128, 8, 2), Tiles(128, 64, 8, 2)),
  # small tiles (large head dims: 192/128 holds q, k and v segments in shared memory)
  "C": FlashConfig(Tiles(64, 64, 4, 2), Tiles(32, 64, 4, 2), Tiles(64, 32, 4, 2)),
  # narrow kv / q strips with deep pipelining (the Triton tutorial's shape of tiles)
  "D": FlashConfig(Tiles(128, 32, 4, 4), Tiles(32, 128, 4, 4), Tiles(128, 32, 4, 4)),
  # float32 inputs: fp32 tiles take twice the shared memory of bf16 ones
  "F32": FlashConfig(Tiles(32, 32, 4, 2), Tiles(32, 32, 4, 2), Tiles(32, 32, 4, 2)),
}

# Default preset per padded max(K, V) for 16-bit inputs. Not tuned on a GPU yet: replace with the
# benchmark's winners (the table in docs/kernels.md says which run chose them).
_DEFAULT_16BIT = ((128, "A"), (MAX_HEAD_DIM, "C"))


def default_config(K: int, V: int, dtype) -> FlashConfig:
  if jnp.dtype(dtype) == jnp.dtype(f32):
    return PRESETS["F32"]
  width = max(_round_up(K, 16), _round_up(V, 16))
  return PRESETS[next(name for limit, name in _DEFAULT_16BIT if width <= limit)]


def parse_config(text: str) -> FlashConfig:
  """A preset name ("A") or "fwd=128x64x4x3,dkv=64x64x4x3,dq=64x64x4x3" (bq x bk x warps x
  stages)."""
  if text in PRESETS:
    return PRESETS[text]
  parts = {}
  for item in text.split(","):
    name, _, value = item.partition("=")
    nums = tuple(int(x) for x in value.split("x"))
    if name not in ("fwd", "dkv", "dq") or len(nums) != 4:
      raise ValueError(f"bad flash config item {item!r}: want fwd|dkv|dq=BQxBKxWARPSxSTAGES")
    if any(n <= 0 or n & (n - 1) for n in nums[:2]) or min(nums[:2]) < 16:
      raise ValueError(f"flash config {item!r}: blocks must be powers of two >= 16")
    parts[name] = Tiles(*nums)
  if set(parts) != {"fwd", "dkv", "dq"}:
    raise ValueError(f"flash config {text!r} must give fwd, dkv and dq (or name one of {list(PRESETS)})")
  return FlashConfig(**parts)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def head_segments(D: int) -> tuple[tuple[int, int], ...]:
  """(start, size) power-of-two pieces, each >= 16, covering a head dim D (a multiple of 16)."""
  if D % 16:
    raise ValueError(f"head dim {D} must be a multiple of 16 here (the wrapper pads it)")
  segs, start = [], 0
  for bit in reversed(range(D.bit_length())):
    size = 1 << bit
    if D - start >= size >= 16:
      segs.append((start, size))
      start += size
  return tuple(segs)


def _compute(dtype):
  """(matmul operand dtype, precision): fp32 asks for IEEE fp32 dots (Triton would use TF32)."""
  if jnp.dtype(dtype) == jnp.dtype(f32):
    return f32, lax.Precision.HIGHEST
  return jnp.dtype(dtype), None


def _params(t: Tiles):
  return pltriton.CompilerParams(num_warps=t.num_warps, num_stages=t.num_stages)


def _mm(a, b, dims, precision):
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=f32)


# ---------------------------------------------------------------------------------------- forward
def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, c2, bq, bk, nq, ksegs, vsegs, mm_dtype, precision):
  i = nq - 1 - pl.program_id(0)  # heaviest q blocks launch first
  qs = [q_ref[:, pl.ds(a, n)] for a, n in ksegs]

  def step(j, carry, masked):
    m, l, accs = carry
    start = pl.multiple_of(j * bk, bk)
    s = None
    for q, (a, n) in zip(qs, ksegs):
      d = _mm(q, k_ref[pl.ds(start, bk), pl.ds(a, n)], _NT, precision)
      s = d if s is None else s + d
    s = s * c2
    if masked:
      rows = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
      cols = start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
      s = jnp.where(rows >= cols, s, -jnp.inf)
    # Every row has a visible key in the first block it processes (key 0), so m is finite after it.
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l = alpha * l + jnp.sum(p, axis=1)
    p = p.astype(mm_dtype)
    accs = tuple(
      alpha[:, None] * acc + _mm(p, v_ref[pl.ds(start, bk), pl.ds(a, n)], _NN, precision)
      for acc, (a, n) in zip(accs, vsegs)
    )
    return m_new, l, accs

  n_full = (i * bq) // bk  # kv blocks entirely before the first query row
  n_all = ((i + 1) * bq + bk - 1) // bk  # kv blocks with a key at or before the last row
  carry = (
    jnp.full((bq,), -jnp.inf, f32),
    jnp.zeros((bq,), f32),
    tuple(jnp.zeros((bq, n), f32) for _, n in vsegs),
  )
  carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
  m, l, accs = lax.fori_loop(n_full, n_all, functools.partial(step, masked=True), carry)
  inv_l = 1.0 / l
  for acc, (a, n) in zip(accs, vsegs):
    o_ref[:, pl.ds(a, n)] = (acc * inv_l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)


def _fwd(q, k, v, *, scale, cfg: FlashConfig, interpret):
  B, Tp, H, K = q.shape
  G, V = k.shape[2], v.shape[3]
  R = H // G
  t = cfg.fwd
  bq, bk = t.block_q, t.block_k
  nq = Tp // bq
  mm_dtype, precision = _compute(q.dtype)
  own = lambda i, h, b: (b, nq - 1 - i, h, 0)
  kv = lambda i, h, b: (b, 0, h // R, 0)
  return pl.pallas_call(
    functools.partial(
      _fwd_kernel,
      c2=scale * LOG2E,
      bq=bq,
      bk=bk,
      nq=nq,
      ksegs=head_segments(K),
      vsegs=head_segments(V),
      mm_dtype=mm_dtype,
      precision=precision,
    ),
    grid=(nq, H, B),
    in_specs=[
      pl.BlockSpec((None, bq, None, K), own),
      pl.BlockSpec((None, Tp, None, K), kv),
      pl.BlockSpec((None, Tp, None, V), kv),
    ],
    out_specs=[
      pl.BlockSpec((None, bq, None, V), own),
      pl.BlockSpec((None, None, bq), lambda i, h, b: (b, h, nq - 1 - i)),
    ],
    out_shape=[jax.ShapeDtypeStruct((B, Tp, H, V), q.dtype), jax.ShapeDtypeStruct((B, H, Tp), f32)],
    compiler_params=_params(t),
    interpret=interpret,
    name="flash_attention_gpu_fwd",
  )(q, k, v)


# --------------------------------------------------------------------------------------- backward
def _dkv_kernel(
  q_ref,
  do_ref,
  lse_ref,
  delta_ref,
  k_ref,
  v_ref,
  dk_ref,
  dv_ref,
  *,
  c2,
  scale,
  bq,
  bk,
  nq,
  R,
  ksegs,
  vsegs,
  mm_dtype,
  precision,
):
  j = pl.program_id(0)  # kv block; the first ones see the most queries and launch first
  ks = [k_ref[:, pl.ds(a, n)] for a, n in ksegs]
  vs = [v_ref[:, pl.ds(a, n)] for a, n in vsegs]

  def step(i, carry, r, masked):
    dks, dvs = carry
    start = pl.multiple_of(i * bq, bq)
    rows = pl.ds(start, bq)
    qs = [q_ref[rows, r, pl.ds(a, n)] for a, n in ksegs]
    dos = [do_ref[rows, r, pl.ds(a, n)] for a, n in vsegs]
    lse, delta = lse_ref[r, rows], delta_ref[r, rows]
    sT = None  # scores transposed (keys x queries) so the row statistics broadcast along columns
    for kk, q in zip(ks, qs):
      d = _mm(kk, q, _NT, precision)
      sT = d if sT is None else sT + d
    sT = sT * c2
    if masked:
      keys = j * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
      queries = start + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
      sT = jnp.where(queries >= keys, sT, -jnp.inf)
    pT = jnp.exp2(sT - lse[None, :])
    dpT = None
    for vv, do in zip(vs, dos):
      d = _mm(vv, do, _NT, precision)
      dpT = d if dpT is None else dpT + d
    dsT = (pT * (dpT - delta[None, :])).astype(mm_dtype)
    pT = pT.astype(mm_dtype)
    dvs = tuple(acc + _mm(pT, do, _NN, precision) for acc, do in zip(dvs, dos))
    dks = tuple(acc + _mm(dsT, q, _NN, precision) for acc, q in zip(dks, qs))
    return dks, dvs

  i_lo = (j * bk) // bq  # first q block reaching key j * bk
  i_full = jnp.minimum((j * bk + bk - 1 + bq - 1) // bq, nq)  # first q block seeing all keys

  def head(r, carry):
    carry = lax.fori_loop(i_lo, i_full, functools.partial(step, r=r, masked=True), carry)
    return lax.fori_loop(i_full, nq, functools.partial(step, r=r, masked=False), carry)

  carry = (tuple(jnp.zeros((bk, n), f32) for _, n in ksegs), tuple(jnp.zeros((bk, n), f32) for _, n in vsegs))
  dks, dvs = lax.fori_loop(0, R, head, carry)
  for acc, (a, n) in zip(dks, ksegs):
    dk_ref[:, pl.ds(a, n)] = (acc * scale).astype(dk_ref.dtype)
  for acc, (a, n) in zip(dvs, vsegs):
    dv_ref[:, pl.ds(a, n)] = acc.astype(dv_ref.dtype)


def _dq_kernel(
  q_ref,
  do_ref,
  lse_ref,
  delta_ref,
  k_ref,
  v_ref,
  dq_ref,
  *,
  c2,
  scale,
  bq,
  bk,
  nq,
  ksegs,
  vsegs,
  mm_dtype,
  precision,
):
  i = nq - 1 - pl.program_id(0)
  qs = [q_ref[:, pl.ds(a, n)] for a, n in ksegs]
  dos = [do_ref[:, pl.ds(a, n)] for a, n in vsegs]
  lse, delta = lse_ref[...], delta_ref[...]

  def step(j, dqs, masked):
    start = pl.multiple_of(j * bk, bk)
    cols = pl.ds(start, bk)
    kks = [k_ref[cols, pl.ds(a, n)] for a, n in ksegs]
    s = None
    for q, kk in zip(qs, kks):
      d = _mm(q, kk, _NT, precision)
      s = d if s is None else s + d
    s = s * c2
    if masked:
      rows_i = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
      cols_i = start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
      s = jnp.where(rows_i >= cols_i, s, -jnp.inf)
    p = jnp.exp2(s - lse[:, None])
    dp = None
    for do, (a, n) in zip(dos, vsegs):
      d = _mm(do, v_ref[cols, pl.ds(a, n)], _NT, precision)
      dp = d if dp is None else dp + d
    ds = (p * (dp - delta[:, None])).astype(mm_dtype)
    return tuple(acc + _mm(ds, kk, _NN, precision) for acc, kk in zip(dqs, kks))

  n_full = (i * bq) // bk
  n_all = ((i + 1) * bq + bk - 1) // bk
  dqs = tuple(jnp.zeros((bq, n), f32) for _, n in ksegs)
  dqs = lax.fori_loop(0, n_full, functools.partial(step, masked=False), dqs)
  dqs = lax.fori_loop(n_full, n_all, functools.partial(step, masked=True), dqs)
  for acc, (a, n) in zip(dqs, ksegs):
    dq_ref[:, pl.ds(a, n)] = (acc * scale).astype(dq_ref.dtype)


def _bwd(q, k, v, o, lse, do, *, scale, cfg: FlashConfig, interpret):
  B, Tp, H, K = q.shape
  G, V = k.shape[2], v.shape[3]
  R = H // G
  mm_dtype, precision = _compute(q.dtype)
  ksegs, vsegs = head_segments(K), head_segments(V)
  delta = jnp.einsum("bthv,bthv->bht", o.astype(f32), do.astype(f32))
  common = dict(
    c2=scale * LOG2E, scale=scale, ksegs=ksegs, vsegs=vsegs, mm_dtype=mm_dtype, precision=precision
  )

  t = cfg.dkv
  bq, bk = t.block_q, t.block_k
  grp = lambda j, g, b: (b, 0, g, 0)  # the group's R query heads, whole sequence
  grp_row = lambda j, g, b: (b, g, 0)
  own_kv = lambda j, g, b: (b, j, g, 0)
  dk, dv = pl.pallas_call(
    functools.partial(_dkv_kernel, bq=bq, bk=bk, nq=Tp // bq, R=R, **common),
    grid=(Tp // bk, G, B),
    in_specs=[
      pl.BlockSpec((None, Tp, R, K), grp),
      pl.BlockSpec((None, Tp, R, V), grp),
      pl.BlockSpec((None, R, Tp), grp_row),
      pl.BlockSpec((None, R, Tp), grp_row),
      pl.BlockSpec((None, bk, None, K), own_kv),
      pl.BlockSpec((None, bk, None, V), own_kv),
    ],
    out_specs=[pl.BlockSpec((None, bk, None, K), own_kv), pl.BlockSpec((None, bk, None, V), own_kv)],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    compiler_params=_params(t),
    interpret=interpret,
    name="flash_attention_gpu_dkv",
  )(q, do, lse, delta, k, v)

  t = cfg.dq
  bq, bk = t.block_q, t.block_k
  nq = Tp // bq
  own = lambda i, h, b: (b, nq - 1 - i, h, 0)
  own_row = lambda i, h, b: (b, h, nq - 1 - i)
  kv = lambda i, h, b: (b, 0, h // R, 0)
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, bq=bq, bk=bk, nq=nq, **common),
    grid=(nq, H, B),
    in_specs=[
      pl.BlockSpec((None, bq, None, K), own),
      pl.BlockSpec((None, bq, None, V), own),
      pl.BlockSpec((None, None, bq), own_row),
      pl.BlockSpec((None, None, bq), own_row),
      pl.BlockSpec((None, Tp, None, K), kv),
      pl.BlockSpec((None, Tp, None, V), kv),
    ],
    out_specs=pl.BlockSpec((None, bq, None, K), own),
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    compiler_params=_params(t),
    interpret=interpret,
    name="flash_attention_gpu_dq",
  )(q, do, lse, delta, k, v)
  return dq, dk, dv


# ----------------------------------------------------------------------------------------- public
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash(q, k, v, scale, cfg, interpret):
  return _fwd(q, k, v, scale=scale, cfg=cfg, interpret=interpret)[0]


def _flash_fwd(q, k, v, scale, cfg, interpret):
  o, lse = _fwd(q, k, v, scale=scale, cfg=cfg, interpret=interpret)
  return o, (q, k, v, o, lse)


def _flash_bwd(scale, cfg, interpret, res, do):
  q, k, v, o, lse = res
  return _bwd(q, k, v, o, lse, do, scale=scale, cfg=cfg, interpret=interpret)


_flash.defvjp(_flash_fwd, _flash_bwd)


def supports(q_BTHK, k_BSGK, v_BSGV) -> str | None:
  """None if the kernel takes these arrays, else why not (shapes, dtypes, head dims)."""
  problem = self_attention_shape_problem(q_BTHK, k_BSGK, v_BSGV)
  if problem:
    return problem
  B, T, H, K = q_BTHK.shape
  if T == 0:
    return "empty sequence"
  if k_BSGK.shape[3] != K:
    return f"q head dim {K} != k head dim {k_BSGK.shape[3]}"
  if k_BSGK.shape[2] == 0 or H % k_BSGK.shape[2]:
    return f"query heads {H} are not a multiple of kv heads {k_BSGK.shape[2]}"
  if not (q_BTHK.dtype == k_BSGK.dtype == v_BSGV.dtype):
    return "q, k, v dtypes differ"
  if jnp.dtype(q_BTHK.dtype).name not in GPU_DTYPES:
    return f"dtype {jnp.dtype(q_BTHK.dtype).name} is not one of {GPU_DTYPES}"
  V = v_BSGV.shape[3]
  if max(K, V) > MAX_HEAD_DIM:
    return f"head dims qk={K}, v={V}: at most {MAX_HEAD_DIM}"
  return None


def flash_attention_gpu(
  q_BTHK, k_BSGK, v_BSGV, *, scale: float, config: FlashConfig | str | None = None, interpret: bool = False
):
  """Causal flash attention (Pallas, Triton lowering), differentiable; same arguments and result
  as `causal_attention_reference(q, k, v, scale=scale)`.

  config: a `FlashConfig`, a preset name or spec string (`parse_config`), or None for
  `default_config(K, V, dtype)`; blocks are clipped for short sequences. interpret=True runs the
  kernels in the generic Pallas interpreter on any backend (what the CPU tests do).
  """
  if (why := supports(q_BTHK, k_BSGK, v_BSGV)) is not None:
    raise ValueError(f"flash_attention_gpu: {why}")
  B, T, H, K = q_BTHK.shape
  V = v_BSGV.shape[3]
  cfg = (
    default_config(K, V, q_BTHK.dtype)
    if config is None
    else parse_config(config)
    if isinstance(config, str)
    else config
  ).fit(T)
  Tp, Kp, Vp = _round_up(T, cfg.period), _round_up(K, 16), _round_up(V, 16)

  def pad(x, d):
    widths = ((0, 0), (0, Tp - T), (0, 0), (0, d - x.shape[3]))
    return x if Tp == T and d == x.shape[3] else jnp.pad(x, widths)

  o = _flash(pad(q_BTHK, Kp), pad(k_BSGK, Kp), pad(v_BSGV, Vp), float(scale), cfg, bool(interpret))
  return o if Tp == T and Vp == V else o[:, :T, :, :V]
