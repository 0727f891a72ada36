"""Causal training/prefill attention with MLA head sizes: jnp oracle, Pallas flash kernels for TPU
(Mosaic, `flash_tpu`) and GPU (Triton lowering, `flash_gpu`), splash (TPU) and cuDNN (GPU) options;
`flash_attention` is the public entry. GQA decode over [v | k] cache rows runs on the latent decode
kernels (`decode_latent`), next to its oracle `reference.kv_rows_attention_reference`."""

from kernels_pallas.attention.reference import causal_attention_reference

__all__ = ["flash_attention", "causal_attention_reference"]


def flash_attention(q_BTHK, k_BSGK, v_BSGV, *, scale: float, impl: str = "auto", interpret=False):
  """Causal attention softmax(q k^T * scale + mask) v, differentiable:
  `zebra_jax.ops.attention.causal_attention`, which chooses the kernel.

  q (B, T, H, K), k (B, T, G, K), v (B, T, G, V) with H % G == 0 -> (B, T, H, V) in q's dtype.
  impl: "auto", "reference", "pallas", "splash" (TPU), "cudnn" (GPU). interpret=True runs the TPU
  kernel of `impl` ("pallas" or "splash") in the Pallas TPU interpreter on any backend (the GPU
  kernel's interpreter: `flash_gpu.flash_attention_gpu(..., interpret=True)`).
  """
  # ops imports this package's kernel modules, and importing one runs this __init__ first
  # (`import kernels_pallas` alone loads no zebra_jax)
  # lazy: the import cycle kernels_pallas.attention <-> zebra_jax.ops.attention
  from zebra_jax.ops import attention as ops_attention

  return ops_attention.causal_attention(q_BTHK, k_BSGK, v_BSGV, scale=scale, impl=impl, interpret=interpret)
