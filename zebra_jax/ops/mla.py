"""Dispatch for absorbed MLA decode attention over the latent cache (see kernels_pallas/mla).

"reference": the jnp oracle; "auto": a kernel verified for this backend whose `supports` accepts the
call, else the reference; "pallas": that kernel or a clear error (never a silent fallback).
Registered: ("pallas", "tpu") the Mosaic TPU kernel (any shape), ("pallas", "gpu") the Mosaic GPU
kernel (bf16/fp16, heads <= 64, r_kv + d_r <= 256 and a multiple of 16).
"""

from __future__ import annotations

import jax

from kernels_pallas.mla import decode_gpu as _decode_gpu
from kernels_pallas.mla import decode_tpu as _decode_tpu
from kernels_pallas.mla.reference import mla_decode_reference

# (impl, backend) -> (kernel with mla_decode_reference's signature, supports(q_latent, q_rope, cache)
# -> None or why not). Kernel modules register here.
_KERNELS: dict[tuple[str, str], tuple[object, object]] = {}


def register_kernel(impl: str, backend: str, fn, supports=None) -> None:
  _KERNELS[(impl, backend)] = (fn, supports)


register_kernel("pallas", "tpu", _decode_tpu.mla_decode_tpu)
register_kernel("pallas", "gpu", _decode_gpu.mla_decode_gpu, _decode_gpu.supports)


def mla_decode(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, *, scale: float, impl: str = "auto"):
  """softmax((q_latent . c_kv + q_rope . k_pe) * scale) weighted sum of c_kv, per head."""
  if impl not in ("auto", "reference", "pallas"):
    raise ValueError(f"impl={impl!r} must be 'auto', 'reference' or 'pallas'")
  args = (q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B)
  if impl == "reference":
    return mla_decode_reference(*args, scale=scale)
  backend = jax.default_backend()
  fn, supports = _KERNELS.get(("pallas", backend), (None, None))
  why = (f"no Pallas MLA decode kernel is registered for backend {backend!r}" if fn is None
         else supports(q_latent_BHR, q_rope_BHK, cache_BSC) if supports else None)
  if why is None:
    return fn(*args, scale=scale)
  if impl == "pallas":
    raise NotImplementedError(f"mla_decode(impl='pallas'): {why}; use impl='reference' or 'auto'")
  return mla_decode_reference(*args, scale=scale)
