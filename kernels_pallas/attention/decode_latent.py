"""GQA decode attention through the latent (MLA) decode kernels.

A kv head's cache row stored as [v | k] (`models.attention.KVCache`) is an MLA latent row whose
latent part is v and whose rope part is k: with q_latent = 0 and q_rope = q, the absorbed-MLA decode
kernel's scores are q . k and its context P . v, exactly GQA's. Each (sequence, kv head) pair
becomes one "sequence" of the latent kernel with the H / G query heads of the group as its heads,
so the kernels' split-K streaming over only the rows below each sequence's length serves GQA too:
the XLA path reads every allocated row every step, these read the written ones.

Semantics: `kv_rows_attention_reference` at T = 1. The adapters only reshape (no copy of the
cache: (B, G, S, C) -> (B G, S, C) is a bitcast) and build the zero latent query.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.mla import decode_gpu as _mla_gpu
from kernels_pallas.mla import decode_tpu as _mla_tpu


def _as_latent(q_BHK, rows_BGSC, lengths_B):
  B, H, K = q_BHK.shape
  G, S, C = rows_BGSC.shape[1:]
  if rows_BGSC.shape[0] != B or H % G or C <= K or lengths_B.shape != (B,):
    raise ValueError(
      f"decode attention: q {q_BHK.shape}, rows {rows_BGSC.shape}, lengths {lengths_B.shape} do not "
      f"agree (q (B, H, K), rows (B, G, S, V + K) with G dividing H, lengths (B,))"
    )
  q_rope = q_BHK.reshape(B * G, H // G, K)
  q_latent = jnp.zeros((B * G, H // G, C - K), q_BHK.dtype)
  cache = rows_BGSC.reshape(B * G, S, C)
  lengths = jnp.repeat(lengths_B.astype(jnp.int32), G)
  return q_latent, q_rope, cache, lengths


def supports(q_BHK, rows_BGSC, lengths_B) -> str | None:
  """What the GPU (Mosaic) latent kernel takes, asked of the call as the latent kernel sees it."""
  if rows_BGSC.ndim != 4 or q_BHK.ndim != 3:
    return f"q {q_BHK.shape} / rows {rows_BGSC.shape} are not (B, H, K) / (B, G, S, V + K)"
  B, H, K = q_BHK.shape
  G, S, C = rows_BGSC.shape[1:]
  if H % G or C <= K:
    return f"q {q_BHK.shape} and rows {rows_BGSC.shape} do not agree"
  as_seen = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)  # supports reads shapes only
  return _mla_gpu.supports(
    as_seen((B * G, H // G, C - K), q_BHK.dtype),
    as_seen((B * G, H // G, K), q_BHK.dtype),
    as_seen((B * G, S, C), rows_BGSC.dtype),
  )


def decode_attention_gpu(q_BHK, rows_BGSC, lengths_B, *, scale: float):
  """GQA decode (one query per sequence) by `mla_decode_gpu` (Hopper, Mosaic GPU); (B, H, V)."""
  B, H = q_BHK.shape[:2]
  out = _mla_gpu.mla_decode_gpu(*_as_latent(q_BHK, rows_BGSC, lengths_B), scale=scale)
  return out.reshape(B, H, out.shape[-1])


def decode_attention_tpu(q_BHK, rows_BGSC, lengths_B, *, scale: float, interpret=False):
  """GQA decode by `mla_decode_tpu` (Mosaic TPU; interpret=True: the Pallas TPU interpreter)."""
  B, H = q_BHK.shape[:2]
  out = _mla_tpu.mla_decode_tpu(*_as_latent(q_BHK, rows_BGSC, lengths_B), scale=scale, interpret=interpret)
  return out.reshape(B, H, out.shape[-1])
