"""Causal softmax attention with GQA sharing and independent qk / v head sizes (MLA uses d_qk != d_v),
and GQA decode attention over the K/V cache.

The one place that picks an attention implementation; models only ever call `causal_attention`
(training / prefill) and `decode_attention` (one query per sequence over the cache, see the end).

* "reference": plain jnp with float32 softmax (`causal_attention_reference`), the oracle, every backend;
* "pallas": our fused Pallas kernel for this backend, never a silent fallback: on TPU the Mosaic flash
  kernel (kernels_pallas.attention.flash_tpu), on GPU the Triton-lowered flash kernel
  (kernels_pallas.attention.flash_gpu); an error where the kernel does not take the call;
* "splash" (TPU) / "cudnn" (GPU, `jax.nn.dot_product_attention(implementation="cudnn")`): that
  kernel explicitly;
* "auto": the first kernel of `KERNELS.auto[backend]` whose `supports` accepts the shapes/dtypes,
  else the reference. Only kernels verified on that backend (`KERNELS.verified`) may be listed; the
  order is the benchmark's decision (see the comment at `_AUTO`).

Kernels register in `KERNELS` (an `ops.dispatch.Registry`) under (impl, backend) as
`Kernel(fn, supports)`; fn has the signature of `causal_attention_reference` without q_offset. The
backend is `ops.dispatch_backend`'s, by default `jax.default_backend()`.

Inside the trainer's partitioned step (traced under `parallel.activation_mesh` with more than one
device) a kernel is called through `shard_map`: batch split over data x fsdp, heads over tensor when
it divides both the query and the kv heads, sequence and head dims whole (Mosaic kernels cannot be
partitioned by GSPMD). Without a mesh, or on one device, the kernel is called directly.
"""

from __future__ import annotations

import functools

from jax.sharding import PartitionSpec as P

from kernels_pallas.attention import cudnn as _cudnn
from kernels_pallas.attention import decode_latent as _decode_latent
from kernels_pallas.attention import flash_gpu as _flash_gpu
from kernels_pallas.attention import flash_tpu as _flash_tpu
from kernels_pallas.attention import splash as _splash
from kernels_pallas.attention.reference import causal_attention_reference, kv_rows_attention_reference
from zebra_jax.ops.dispatch import Kernel, Registry
from zebra_jax.parallel import sharding as _sharding

__all__ = [
  "causal_attention",
  "causal_attention_reference",
  "decode_attention",
  "kv_rows_attention_reference",
  "KERNELS",
  "DECODE_KERNELS",
]

# Backends on which each kernel's outputs and gradients were checked against float64 (TPU: the Pallas
# TPU interpreter + ahead-of-time compiles for v5e/v5p/v6e; GPU: on the H100). docs/kernels.md.
# flash_gpu ("pallas") on GPU: `pytest -m gpu tests/test_flash_gpu.py` passed on an H100 on
# 2026-11-24 (every case and preset, forward and dq/dk/dv, bf16/fp16/fp32).
_VERIFIED = {"pallas": ("tpu", "gpu"), "splash": ("tpu",), "cudnn": ("gpu",)}

# "auto" order per backend (first kernel whose `supports` takes the call; else the reference).
# GPU decision, from `scripts/bench.py kernels --family attention` on an H100 (2026-11-24,
# docs/benchmarks.md): flash_gpu runs at 0.63-0.87x cuDNN's TFLOP/s at the Zebra shapes (2k-8k, fwd
# and fwd+bwd), so cuDNN goes first; flash_gpu follows and takes what cuDNN refuses (float32, lengths
# that are not multiples of 64, head dims that are not multiples of 8), where the alternative is the
# XLA reference at 0.05-0.2x cuDNN. impl="pallas" selects it everywhere it applies.
_AUTO = {"tpu": ("pallas",), "gpu": ("cudnn", "pallas")}

KERNELS = Registry(
  "attention", impls=("auto", "reference", "pallas", "splash", "cudnn"), auto=_AUTO, verified=_VERIFIED
)
KERNELS.register("pallas", "tpu", Kernel(_flash_tpu.flash_attention_tpu, _flash_tpu.supports))
KERNELS.register("splash", "tpu", Kernel(_splash.splash_attention_tpu, _flash_tpu.supports))
KERNELS.register("cudnn", "gpu", Kernel(_cudnn.cudnn_attention, _cudnn.supports))
KERNELS.register("pallas", "gpu", Kernel(_flash_gpu.flash_attention_gpu, _flash_gpu.supports))


def causal_attention(q_BTHK, k_BSGK, v_BSGV, *, scale: float, impl: str = "auto", interpret=False):
  """Dispatch point for training/prefill attention (see the module docstring for `impl`).

  interpret=True runs the TPU kernel of `impl` in the Pallas TPU interpreter
  (`Registry.resolve`)."""
  kernel = KERNELS.resolve(impl, q_BTHK, k_BSGK, v_BSGV, caller="causal_attention", interpret=interpret)
  if kernel is None:
    return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  return _call_kernel(kernel.fn, q_BTHK, k_BSGK, v_BSGV, scale=scale)


def _call_kernel(fn, q_BTHK, k_BSGK, v_BSGV, *, scale: float):
  """fn(q, k, v, scale=scale), per shard under the trainer's activation mesh (module docstring)."""
  mesh = _sharding.kernel_mesh()
  if mesh is None:
    return fn(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  b = _sharding.batch_axes(mesh, q_BTHK.shape[0])
  h = _sharding.head_axis(mesh, q_BTHK.shape[2], k_BSGK.shape[2])
  # Heads split into contiguous blocks: shard i holds query heads [i H/t, (i+1) H/t) and exactly the
  # kv heads they read (h // (H/G)), so each shard is a smaller GQA problem of the same ratio.
  spec = P(b, None, h, None)
  per_shard = lambda q, k, v: fn(q, k, v, scale=scale)
  return _sharding.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(
    q_BTHK, k_BSGK, v_BSGV
  )


# -- decode ---------------------------------------------------------------------------------------
# GQA decode runs on the latent (MLA) decode kernels (kernels_pallas/attention/decode_latent.py: a
# [v | k] row is a latent row with v as its latent part), which stream only the rows below each
# sequence's length; the reference (XLA) reads every allocated row. TPU: the Mosaic latent kernel,
# checked in the Pallas TPU interpreter and ahead-of-time compiled (tests/test_decode_attention.py).
# GPU: the Mosaic GPU latent kernel, verified on an H100 for MLA shapes; through this adapter it is
# registered but stays out of "auto" until `pytest -m gpu tests/test_decode_attention.py` has passed
# on a GPU (not yet run: no GPU in the ninth session).
DECODE_KERNELS = Registry(
  "decode attention",
  impls=("auto", "reference", "pallas"),
  auto={"tpu": ("pallas",)},
  verified={"pallas": ("tpu",)},
  missing="no Pallas decode attention kernel is registered for backend {backend!r}",
)
DECODE_KERNELS.register("pallas", "tpu", Kernel(_decode_latent.decode_attention_tpu))
DECODE_KERNELS.register("pallas", "gpu", Kernel(_decode_latent.decode_attention_gpu, _decode_latent.supports))


def decode_attention(q_BHK, rows_BGSC, lengths_B, *, scale: float, impl: str = "auto", interpret=False):
  """softmax(q k^T * scale) v over the first lengths[b] rows of each sequence's cache, one query
  per sequence: q (B, H, K), rows (B, G, S, V + K) stored [v | k] (`models.attention.KVCache`),
  lengths (B,) -> (B, H, V) in q's dtype. `impl` as `causal_attention`'s ("pallas": the latent
  decode kernel for this backend or an error); interpret=True runs the TPU kernel in the Pallas TPU
  interpreter on any backend.

  Under a multi-device activation mesh a kernel runs per shard through shard_map: batch over
  data x fsdp, kv heads (and their query heads) over tensor when it divides both."""
  kernel = DECODE_KERNELS.resolve(
    impl, q_BHK, rows_BGSC, lengths_B, caller="decode_attention", interpret=interpret
  )
  if kernel is None:  # XLA: GSPMD partitions it under a mesh
    return kv_rows_attention_reference(q_BHK[:, None], rows_BGSC, lengths_B[:, None], scale=scale)[:, 0]
  call = functools.partial(kernel.fn, scale=scale)
  mesh = _sharding.kernel_mesh()
  if mesh is None:
    return call(q_BHK, rows_BGSC, lengths_B)
  # A shard keeps whole GQA groups (kv heads split with their query heads), so what `supports`
  # judged on the whole call holds for each shard.
  b = _sharding.batch_axes(mesh, q_BHK.shape[0])
  h = _sharding.head_axis(mesh, q_BHK.shape[1], rows_BGSC.shape[1])
  return _sharding.shard_map(
    call,
    mesh=mesh,
    in_specs=(P(b, h, None), P(b, h, None, None), P(b)),
    out_specs=P(b, h, None),
  )(q_BHK, rows_BGSC, lengths_B)
