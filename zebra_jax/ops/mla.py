"""Dispatch for absorbed MLA decode attention over the latent cache (see kernels_pallas/mla)."""

from __future__ import annotations

import jax

from kernels_pallas.mla.reference import mla_decode_reference

# (impl, backend) -> kernel with mla_decode_reference's signature. Kernel modules register here.
_KERNELS: dict[tuple[str, str], object] = {}


def register_kernel(impl: str, backend: str, fn) -> None:
  _KERNELS[(impl, backend)] = fn


def mla_decode(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, *, scale: float, impl: str = "auto"):
  """softmax((q_latent . c_kv + q_rope . k_pe) * scale) weighted sum of c_kv, per head.

  "reference": the jnp oracle; "auto": a kernel verified for this backend if registered, else the
  reference; "pallas": the kernel or a clear error (never a silent fallback).
  """
  if impl not in ("auto", "reference", "pallas"):
    raise ValueError(f"impl={impl!r} must be 'auto', 'reference' or 'pallas'")
  backend = jax.default_backend()
  kernel = _KERNELS.get(("pallas", backend))
  if impl == "pallas" and kernel is None:
    raise NotImplementedError(f"mla_decode(impl='pallas'): no Pallas MLA decode kernel is "
                              f"registered for backend {backend!r}; use impl='reference' or 'auto'")
  if impl != "reference" and kernel is not None:
    return kernel(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, scale=scale)
  return mla_decode_reference(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, scale=scale)
