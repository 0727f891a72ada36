"""Pallas kernels for the hot loops of zebra-jax, each next to its pure-JAX reference.

* `kernels_pallas.ssd`: the Mamba2 SSD chunked scan, `ssd_scan` (TPU + GPU kernels, custom VJP) and
  `ssd_step` (decode), next to `ssd_scan_reference` (the oracle).
* `kernels_pallas.mla`: absorbed MLA decode over the latent cache, `mla_decode` (TPU + GPU kernels).
* `kernels_pallas.attention`: causal training/prefill attention with MLA head sizes,
  `flash_attention` (our TPU and GPU flash kernels, splash on TPU, cuDNN on GPU).

Models never import kernels directly: they call `zebra_jax.ops`, which picks an implementation per
backend and shape (one registry per op, `zebra_jax.ops.dispatch`). The public entries here
(`ssd_scan`, `ssd_step`, `mla_decode`, `flash_attention`) are thin calls into it; the kernel modules
themselves never import zebra_jax.
"""

from kernels_pallas.ssd import (
  ssd_scan,
  ssd_scan_reference,
  ssd_sequential_reference,
  ssd_step,
  ssd_step_reference,
)
from kernels_pallas.mla import mla_decode, mla_decode_reference
from kernels_pallas.attention import causal_attention_reference, flash_attention

__all__ = [
  "mla_decode",
  "mla_decode_reference",
  "flash_attention",
  "causal_attention_reference",
  "ssd_scan",
  "ssd_step",
  "ssd_scan_reference",
  "ssd_sequential_reference",
  "ssd_step_reference",
]
