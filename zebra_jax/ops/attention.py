"""Causal softmax attention with GQA sharing and independent qk / v head sizes (MLA uses d_qk != d_v).

`impl="reference"` is plain jnp with float32 softmax, the oracle. Faster kernels plug in here (issue:
Pallas kernels); models only ever call `causal_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


# (impl, backend) -> kernel with the signature of causal_attention_reference. Filled by kernel modules.
_KERNELS: dict[tuple[str, str], object] = {}


def causal_attention(q_BTHK, k_BSGK, v_BSGV, *, scale: float, impl: str = "auto"):
  """Dispatch point for training/prefill attention.

  "reference" always runs the jnp oracle; "auto" uses a registered kernel for this backend when one
  exists, else the reference; "pallas" never falls back silently.
  """
  if impl not in ("auto", "reference", "pallas"):
    raise ValueError(f"impl={impl!r} must be 'auto', 'reference' or 'pallas'")
  backend = jax.default_backend()
  kernel = _KERNELS.get(("pallas", backend))
  if impl == "pallas" and kernel is None:
    raise NotImplementedError(f"causal_attention(impl='pallas'): no Pallas attention kernel is "
                              f"registered for backend {backend!r}; use impl='reference' or 'auto'")
  if impl in ("pallas", "auto") and kernel is not None:
    return kernel(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
