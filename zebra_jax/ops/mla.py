"""Absorbed MLA decode attention over the latent cache (see kernels_pallas/mla): the one place that
picks its implementation; `MLA.cached` (models/mla.py) calls `mla_decode`.

"reference": the jnp oracle; "auto": a kernel verified for this backend whose `supports` accepts the
call, else the reference; "pallas": that kernel or a clear error (never a silent fallback).
Registered in `KERNELS` (an `ops.dispatch.Registry`): ("pallas", "tpu") the Mosaic TPU kernel (any
shape; interpreter + ahead-of-time compiles), ("pallas", "gpu") the Mosaic GPU kernel (bf16/fp16,
heads <= 64, r_kv + d_r <= 256 and a multiple of 16; run and checked on an H100).

Under a multi-device activation mesh (sharded generation) a call with a kernel-capable impl runs per
shard through shard_map: batch over data x fsdp as the cache is laid out, query heads over tensor;
every shard reads whole latent rows, which `infer.cache.CACHE_RULES` never splits. GSPMD cannot
partition a Pallas custom call; the pure-JAX reference ("reference") is left to GSPMD.
"""

from __future__ import annotations

import functools

from jax.sharding import PartitionSpec as P

from kernels_pallas.mla import decode_gpu as _decode_gpu
from kernels_pallas.mla import decode_tpu as _decode_tpu
from kernels_pallas.mla.reference import mla_decode_reference
from zebra_jax.ops.dispatch import Kernel, Registry
from zebra_jax.parallel import sharding as _sharding

__all__ = ["mla_decode", "mla_decode_reference", "KERNELS"]

# Any backend may register a "pallas" kernel; "auto" takes it where `supports` agrees.
KERNELS = Registry(
  "MLA decode",
  impls=("auto", "reference", "pallas"),
  auto={"tpu": ("pallas",), "gpu": ("pallas",), "cpu": ("pallas",)},
  verified={"pallas": ("tpu", "gpu")},
  missing="no Pallas MLA decode kernel is registered for backend {backend!r}",
)
KERNELS.register("pallas", "tpu", Kernel(_decode_tpu.mla_decode_tpu))
KERNELS.register("pallas", "gpu", Kernel(_decode_gpu.mla_decode_gpu, _decode_gpu.supports))


def mla_decode(
  q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, *, scale: float, impl: str = "auto", interpret=False
):
  """softmax((q_latent . c_kv + q_rope . k_pe) * scale) . c_kv over the first lengths[b] cache rows.

  q_latent (b, h, r_kv), q_rope (b, h, d_r), cache (b, s, r_kv + d_r) rows [latent | rope key],
  lengths (b,) int -> latent context (b, h, r_kv) in q_latent's dtype. interpret=True runs the TPU
  kernel in the Pallas TPU interpreter on any backend (`Registry.resolve`)."""
  call = functools.partial(_dispatch, scale=scale, impl=impl, interpret=interpret)
  mesh = _sharding.kernel_mesh()
  if mesh is None or impl == "reference":
    return call(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B)
  # The choice is made per shard (inside shard_map), on the shard's shapes.
  b = _sharding.batch_axes(mesh, q_latent_BHR.shape[0])
  h = _sharding.head_axis(mesh, q_latent_BHR.shape[1])
  q_spec = P(b, h, None)
  return _sharding.shard_map(
    call, mesh=mesh, in_specs=(q_spec, q_spec, P(b, None, None), P(b)), out_specs=q_spec
  )(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B)


def _dispatch(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, *, scale, impl, interpret):
  kernel = KERNELS.resolve(
    impl, q_latent_BHR, q_rope_BHK, cache_BSC, caller="mla_decode", interpret=interpret
  )
  fn = mla_decode_reference if kernel is None else kernel.fn
  return fn(q_latent_BHR, q_rope_BHK, cache_BSC, lengths_B, scale=scale)
