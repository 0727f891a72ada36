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
