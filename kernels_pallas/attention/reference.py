"""Causal softmax attention in plain jnp: the oracle for the attention kernels (moved here from
zebra_jax/ops/attention.py, which re-exports it, so the kernel modules never import zebra_jax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def self_attention_shape_problem(q_BTHK, k_BSGK, v_BSGV) -> str | None:
  """The layout every flash kernel here assumes (4-D, q/k/v sharing batch and sequence, kv heads
  shared by k and v): None if it holds, else what is wrong. Kernels add their own limits after."""
  if q_BTHK.ndim != 4 or k_BSGK.ndim != 4 or v_BSGV.ndim != 4:
    return "q, k, v must be 4-D (batch, seq, heads, head_dim)"
  B, T = q_BTHK.shape[:2]
  if k_BSGK.shape[:2] != (B, T) or v_BSGV.shape[:3] != k_BSGK.shape[:3]:
    return (
      f"self-attention only: q {q_BTHK.shape}, k {k_BSGK.shape}, v {v_BSGV.shape} must share "
      f"batch and sequence"
    )
  return None


def causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, *, scale: float, q_offset: int = 0):
  """softmax(q k^T * scale + causal mask) v, query head h reading kv head h // (H/G).

  q_offset shifts query positions (query t sits at absolute position t + q_offset) for chunked prefill.
  """
  B, T, H, K = q_BTHK.shape
  S, G = k_BSGK.shape[1], k_BSGK.shape[2]
  if H % G:
    raise ValueError(f"query heads {H} are not a multiple of kv heads {G}")
  dtype = q_BTHK.dtype
  q = q_BTHK.reshape(B, T, G, H // G, K)
  scores = jnp.einsum("btgrk,bsgk->bgrts", q, k_BSGK, preferred_element_type=jnp.float32) * scale
  causal = (jnp.arange(T)[:, None] + q_offset) >= jnp.arange(S)[None, :]
  scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out = jnp.einsum("bgrts,bsgv->btgrv", probs, v_BSGV.astype(dtype))
  return out.reshape(B, T, H, v_BSGV.shape[-1])


def kv_rows_attention_reference(q_BTHK, rows_BGSC, kv_len_BT, *, scale: float):
  """Attention of T queries per sequence over a decode cache of K/V rows stored [v | k]: query t of
  sequence b reads the first kv_len[b, t] rows of its kv head (head h reads group h // (H/G)).

  rows (B, G, S, V + K) with the value first and the rotated key last, the layout of the GQA decode
  cache (`models.attention.KVCache`), which the latent decode kernels read as latent rows
  (`decode_latent`). Keys and values are the two column ranges of the rows (slices XLA folds into
  the dot operands on CPU: as fast as separate k / v arrays, `scripts/bench.py kernels --family
  decode_attention`). float32 scores, probabilities in q's dtype (the decode path's rounding);
  returns (B, T, H, V) in q's dtype."""
  B, T, H, K = q_BTHK.shape
  if rows_BGSC.ndim != 4 or rows_BGSC.shape[0] != B or rows_BGSC.shape[-1] <= K or H % rows_BGSC.shape[1]:
    raise ValueError(
      f"rows must have shape (batch={B}, kv heads dividing {H}, seq, v + k > {K}), got {rows_BGSC.shape}"
    )
  if kv_len_BT.shape != (B, T):
    raise ValueError(f"kv_len must have shape ({B}, {T}), got {kv_len_BT.shape}")
  G, S, C = rows_BGSC.shape[1:]
  V, R = C - K, H // G
  # The T queries of a group's R heads as one (T R)-row matrix: the dots have no query axis of their
  # own (XLA CPU ran the T = 1 step 2x faster so than with a separate "t" axis in the einsums).
  q = q_BTHK.reshape(B, T, G, R, K).transpose(0, 2, 1, 3, 4).reshape(B, G, T * R, K)
  k_BGSK, v_BGSV = rows_BGSC[..., V:].astype(q.dtype), rows_BGSC[..., :V].astype(q.dtype)
  scores = jnp.einsum("bgmk,bgsk->bgms", q, k_BGSK, preferred_element_type=jnp.float32) * scale
  valid = jnp.repeat(jnp.arange(S)[None, None, :] < kv_len_BT[:, :, None], R, axis=1)[:, None]
  probs = jax.nn.softmax(jnp.where(valid, scores, -jnp.inf), axis=-1).astype(q.dtype)
  out = jnp.einsum("bgms,bgsv->bgmv", probs, v_BGSV).reshape(B, G, T, R, V).transpose(0, 2, 1, 3, 4)
  # no row at all (length 0): zeros, as the kernels give, not the NaN of an empty softmax; set on
  # the output, a (T, H, V) block per sequence, not on the (T R, S) probabilities
  return jnp.where(kv_len_BT[:, :, None, None, None] > 0, out, 0).reshape(B, T, H, V).astype(q.dtype)
