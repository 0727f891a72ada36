"""Absorbed MLA decode, pure JAX: the oracle for the Pallas latent-attention kernels.

Queries are already mapped into the latent space (q_nope_h @ W_UK_h). Each cache row is
[latent c_kv (r_kv) | rotated rope key k_pe (d_r)], shared by all heads. Positions >= lengths[b] are
masked. Returns the latent context sum_t p_t c_kv_t per head; the caller maps it back through W_UV.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mla_decode_reference(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, *, scale: float):
  B, H, R = q_latent_BHR.shape
  K = q_rope_BHK.shape[-1]
  if cache_BSC.ndim != 3 or cache_BSC.shape[0] != B or cache_BSC.shape[2] != R + K:
    raise ValueError(f"cache must have shape (batch={B}, seq, r_kv + d_r = {R + K}), got {cache_BSC.shape}")
  if q_rope_BHK.shape[:2] != (B, H):
    raise ValueError(f"q_rope must have shape ({B}, {H}, d_r), got {q_rope_BHK.shape}")
  if lengths_B.shape != (B,):
    raise ValueError(f"lengths must have shape ({B},), got {lengths_B.shape}")
  f32 = jnp.float32
  latent, k_rope = cache_BSC[..., :R].astype(f32), cache_BSC[..., R:].astype(f32)
  scores = (
    jnp.einsum("bhr,bsr->bhs", q_latent_BHR.astype(f32), latent, precision=jax.lax.Precision.HIGHEST)
    + jnp.einsum("bhk,bsk->bhs", q_rope_BHK.astype(f32), k_rope, precision=jax.lax.Precision.HIGHEST)
  ) * scale
  valid = jnp.arange(cache_BSC.shape[1])[None, None, :] < lengths_B[:, None, None]
  scores = jnp.where(valid, scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = jnp.where(valid, probs, 0.0)  # lengths == 0 gives zeros, not NaN
  out = jnp.einsum("bhs,bsr->bhr", probs, latent, precision=jax.lax.Precision.HIGHEST)
  return out.astype(q_latent_BHR.dtype)
