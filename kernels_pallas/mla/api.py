"""`mla_decode`: the public entry for absorbed MLA decode, choosing a kernel per backend.

Which (backend, shape) each kernel was verified on (numerics against a float64 reference):
* "tpu": `decode_tpu.mla_decode_tpu`, any shape; numerics checked through the Pallas TPU
  interpreter on CPU, compilation checked ahead of time for v5e / v5p / v6e through libtpu (no
  TPU run yet).
* "gpu": `decode_gpu.mla_decode_gpu`, bf16/fp16 with the limits of `decode_gpu.supports`; run and
  checked on an H100 (jax 0.11.2).
Anything else runs `mla_decode_reference` under "auto" and is an error under "pallas".
"""

from __future__ import annotations

import jax

from kernels_pallas.mla import decode_gpu, decode_tpu
from kernels_pallas.mla.reference import mla_decode_reference

IMPLS = ("auto", "reference", "pallas")


def kernel_for(backend: str, q_latent_BHR, q_rope_BHK, cache_BSC):
  """(kernel, None) when a verified Pallas kernel covers this call on `backend`, else (None, why)."""
  if backend == "tpu":
    return decode_tpu.mla_decode_tpu, None
  if backend == "gpu":
    why = decode_gpu.supports(q_latent_BHR, q_rope_BHK, cache_BSC)
    return (decode_gpu.mla_decode_gpu, None) if why is None else (None, why)
  return None, f"no Pallas MLA decode kernel for backend {backend!r}"


def mla_decode(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, *, scale: float,
               impl: str = "auto", interpret=False):
  """softmax((q_latent . c_kv + q_rope . k_pe) * scale) . c_kv over the first lengths[b] cache rows.

  q_latent (b, h, r_kv), q_rope (b, h, d_r), cache (b, s, r_kv + d_r) rows [latent | rope key],
  lengths (b,) int -> latent context (b, h, r_kv) in q_latent's dtype.

  impl: "reference" (jnp oracle), "pallas" (the kernel for this backend, or an error naming why
  there is none), "auto" (the kernel where verified for this backend and shape, else the reference).
  interpret=True (or a `pltpu.InterpretParams`) runs the TPU kernel in the Pallas TPU interpreter on
  any backend, unless impl="reference".
  """
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} must be one of {IMPLS}")
  args = (q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B)
  if impl == "reference":
    return mla_decode_reference(*args, scale=scale)
  if interpret:
    return decode_tpu.mla_decode_tpu(*args, scale=scale, interpret=interpret)
  backend = jax.default_backend()
  kernel, why = kernel_for(backend, q_latent_BHR, q_rope_BHK, cache_BSC)
  if kernel is None:
    if impl == "pallas":
      raise NotImplementedError(f"mla_decode(impl='pallas') on {backend!r}: {why}; use "
                                f"impl='auto' or 'reference' (or interpret=True on CPU)")
    return mla_decode_reference(*args, scale=scale)
  return kernel(*args, scale=scale)
