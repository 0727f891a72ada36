"""cuDNN fused causal attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

GQA is native. For MLA head sizes (V != K) `jax.nn.dot_product_attention` (jax 0.10/0.11) insists on
v having k's shape, so "native" calls jax's cuDNN binding underneath it, which accepts qk != v head
sizes on Hopper with cuDNN >= 9.10; "pad" zero-pads v to K columns and drops them afterwards (any
cuDNN, about (K - V) / (K + V) more matmul work). "auto" tries native, then pad.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.attention.flash_tpu import supports as _shape_supports

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def supports(q_BTHK, k_BSGK, v_BSGV) -> str | None:
  """None if cuDNN flash attention takes this call (as checked on an H100), else why not."""
  if (why := _shape_supports(q_BTHK, k_BSGK, v_BSGV)) is not None:
    return why
  if jnp.dtype(q_BTHK.dtype) not in _HALF:
    return f"dtype {jnp.dtype(q_BTHK.dtype).name} (cuDNN flash attention needs bf16/fp16)"
  K, V = q_BTHK.shape[-1], v_BSGV.shape[-1]
  if K > 256 or V > 256 or K % 8 or V % 8:
    return f"head dims qk={K}, v={V} (need multiples of 8, at most 256)"
  T, S = q_BTHK.shape[1], k_BSGK.shape[1]
  if T % 64 or S % 64:  # jax's cuDNN flash path rejects other lengths (seen on the H100: 2047)
    return f"sequence lengths q={T}, kv={S} (cuDNN flash attention needs multiples of 64)"
  return None


def _native_mla(q, k, v, scale):
  from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention

  return dot_product_attention(q, k, v, scale=scale, mask_type=MaskType.CAUSAL)


def cudnn_attention(q_BTHK, k_BSGK, v_BSGV, *, scale: float, mla_path: str = "auto"):
  """Causal attention on cuDNN; same arguments and result as `causal_attention_reference`."""
  if (why := supports(q_BTHK, k_BSGK, v_BSGV)) is not None:
    raise ValueError(f"cudnn_attention: {why}")
  K, V = q_BTHK.shape[-1], v_BSGV.shape[-1]
  if K == V:
    return jax.nn.dot_product_attention(
      q_BTHK, k_BSGK, v_BSGV, scale=scale, is_causal=True, implementation="cudnn"
    )
  if mla_path in ("auto", "native"):
    try:
      return _native_mla(q_BTHK, k_BSGK, v_BSGV, scale)
    except (ImportError, ValueError, NotImplementedError, RuntimeError):
      if mla_path == "native":
        raise
  if V > K:
    raise ValueError(f"cudnn_attention(mla_path='pad') needs v head dim {V} <= qk head dim {K}")
  v_pad = jnp.pad(v_BSGV, ((0, 0), (0, 0), (0, 0), (0, K - V)))
  out = jax.nn.dot_product_attention(
    q_BTHK, k_BSGK, v_pad, scale=scale, is_causal=True, implementation="cudnn"
  )
  return out[..., :V]
