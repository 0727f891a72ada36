"""Splash attention (jax.experimental.pallas.ops.tpu.splash_attention) behind our causal-GQA API.

Splash is upstream's tuned block-sparse TPU flash attention; it supports head_dim_v != head_dim_qk
(MLA). Each kv group runs splash's MQA kernel over the group's query heads, vmapped over batch and
groups. Splash does not scale the logits, so q is pre-scaled (in q's dtype).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from kernels_pallas.attention.flash_tpu import supports  # same shape contract


def splash_attention_tpu(q_BTHK, k_BSGK, v_BSGV, *, scale: float, block: int = 512, interpret: bool = False):
  """Causal attention through splash; same arguments and result as `causal_attention_reference`."""
  if (why := supports(q_BTHK, k_BSGK, v_BSGV)) is not None:
    raise ValueError(f"splash_attention_tpu: {why}")
  B, T, H, K = q_BTHK.shape
  G, V = k_BSGK.shape[2], v_BSGV.shape[-1]
  R = H // G
  # Splash wants blocks of whole 128-lane tiles, in the interpreter too.
  blk = min(block, -(-T // 128) * 128)
  if blk % 128:
    raise ValueError(f"splash block {block} must be a multiple of 128")
  Tp = -(-T // blk) * blk
  pad = lambda x: jnp.pad(x, ((0, 0), (0, Tp - T), (0, 0), (0, 0)))
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((Tp, Tp)) for _ in range(R)])
  sizes = splash.BlockSizes(
    block_q=blk,
    block_kv=blk,
    block_kv_compute=blk,
    block_q_dkv=blk,
    block_kv_dkv=blk,
    block_kv_dkv_compute=blk,
    block_q_dq=blk,
    block_kv_dq=blk,
  )
  kernel = splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)
  q_BGRTK = (pad(q_BTHK) * jnp.asarray(scale, q_BTHK.dtype)).reshape(B, Tp, G, R, K)
  q_BGRTK = q_BGRTK.transpose(0, 2, 3, 1, 4)
  k_BGTK = pad(k_BSGK).transpose(0, 2, 1, 3)
  v_BGTV = pad(v_BSGV).transpose(0, 2, 1, 3)
  o_BGRTV = jax.vmap(jax.vmap(kernel))(q_BGRTK, k_BGTK, v_BGTV)
  return o_BGRTV.transpose(0, 3, 1, 2, 4).reshape(B, Tp, H, V)[:, :T]
