"""Absorbed MLA (latent attention) decode: the jnp oracle and Pallas kernels for TPU
(`decode_tpu`) and GPU (`decode_gpu`); `mla_decode` is the public entry."""

from kernels_pallas.mla.reference import mla_decode_reference

__all__ = ["mla_decode", "mla_decode_reference"]


def mla_decode(
  q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, *, scale: float, impl: str = "auto", interpret=False
):
  """softmax((q_latent . c_kv + q_rope . k_pe) * scale) . c_kv over the first lengths[b] cache rows:
  `zebra_jax.ops.mla.mla_decode`, which chooses the kernel ("auto", "reference", "pallas").

  q_latent (b, h, r_kv), q_rope (b, h, d_r), cache (b, s, r_kv + d_r) rows [latent | rope key],
  lengths (b,) int -> latent context (b, h, r_kv) in q_latent's dtype. interpret=True (or a
  `pltpu.InterpretParams`) runs the TPU kernel in the Pallas TPU interpreter on any backend.
  """
  # ops imports this package's kernel modules, and importing one runs this __init__ first
  # (`import kernels_pallas` alone loads no zebra_jax)
  # lazy: the import cycle kernels_pallas.mla <-> zebra_jax.ops.mla
  from zebra_jax.ops import mla as ops_mla

  return ops_mla.mla_decode(
    q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, scale=scale, impl=impl, interpret=interpret
  )
