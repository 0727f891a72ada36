"""Causal training/prefill attention with MLA head sizes: jnp oracle, Pallas flash kernels for TPU
(Mosaic, `flash_tpu`) and GPU (Triton lowering, `flash_gpu`), splash (TPU) and cuDNN (GPU) options."""

from kernels_pallas.attention.api import flash_attention
from kernels_pallas.attention.reference import causal_attention_reference

__all__ = ["flash_attention", "causal_attention_reference"]
