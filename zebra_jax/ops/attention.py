"""Causal softmax attention with GQA sharing and independent qk / v head sizes (MLA uses d_qk != d_v).

The one place that picks an attention implementation; models only ever call `causal_attention`.

* "reference": plain jnp with float32 softmax (`causal_attention_reference`), the oracle, every backend;
* "pallas": our fused Pallas kernel for this backend, never a silent fallback: on TPU the Mosaic flash
  kernel (kernels_pallas.attention.flash_tpu), on GPU the Triton-lowered flash kernel
  (kernels_pallas.attention.flash_gpu); an error where the kernel does not take the call;
* "splash" (TPU) / "cudnn" (GPU, `jax.nn.dot_product_attention(implementation="cudnn")`): that
  kernel explicitly;
* "auto": the first kernel of `_AUTO[backend]` whose `supports` accepts the shapes/dtypes, else the
  reference. Only kernels verified on that backend (`_VERIFIED`) may be listed; the order is the
  benchmark's decision (see the comment at `_AUTO`).

Kernels register in `_KERNELS[(impl, backend)]` as `AttentionKernel(fn, supports)`; fn has the
signature of `causal_attention_reference` without q_offset.

Inside the trainer's partitioned step (traced under `parallel.activation_mesh` with more than one
device) a kernel is called through `shard_map`: batch split over data x fsdp, heads over tensor when
it divides both the query and the kv heads, sequence and head dims whole (Mosaic kernels cannot be
partitioned by GSPMD). Without a mesh, or on one device, the kernel is called directly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from kernels_pallas.attention import cudnn as _cudnn
from kernels_pallas.attention import flash_gpu as _flash_gpu
from kernels_pallas.attention import flash_tpu as _flash_tpu
from kernels_pallas.attention import splash as _splash
from kernels_pallas.attention.reference import causal_attention_reference
from zebra_jax.parallel import sharding as _sharding

__all__ = ["causal_attention", "causal_attention_reference", "register_kernel", "AttentionKernel",
           "auto_kernel"]

IMPLS = ("auto", "reference", "pallas", "splash", "cudnn")


@dataclasses.dataclass(frozen=True)
class AttentionKernel:
  fn: Callable
  supports: Callable[..., str | None] | None = None  # (q, k, v) -> None or why not


_KERNELS: dict[tuple[str, str], AttentionKernel] = {}


def register_kernel(impl: str, backend: str, kernel: AttentionKernel) -> None:
  if impl not in IMPLS or impl in ("auto", "reference"):
    raise ValueError(f"kernels register under a concrete non-reference impl, got {impl!r}")
  _KERNELS[(impl, backend)] = kernel


register_kernel("pallas", "tpu", AttentionKernel(_flash_tpu.flash_attention_tpu, _flash_tpu.supports))
register_kernel("splash", "tpu", AttentionKernel(_splash.splash_attention_tpu, _flash_tpu.supports))
register_kernel("cudnn", "gpu", AttentionKernel(_cudnn.cudnn_attention, _cudnn.supports))
register_kernel("pallas", "gpu", AttentionKernel(_flash_gpu.flash_attention_gpu, _flash_gpu.supports))

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


def auto_kernel(backend: str, q_BTHK, k_BSGK, v_BSGV) -> str:
  """The impl "auto" runs on `backend` for these arrays: a registered kernel name or "reference"."""
  for name in _AUTO.get(backend, ()):
    kernel = _KERNELS.get((name, backend))
    if kernel is not None and (kernel.supports is None
                               or kernel.supports(q_BTHK, k_BSGK, v_BSGV) is None):
      return name
  return "reference"


def causal_attention(q_BTHK, k_BSGK, v_BSGV, *, scale: float, impl: str = "auto"):
  """Dispatch point for training/prefill attention (see the module docstring for `impl`)."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} must be one of {IMPLS}")
  if impl == "reference":
    return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  backend = jax.default_backend()
  name = auto_kernel(backend, q_BTHK, k_BSGK, v_BSGV) if impl == "auto" else impl
  if name == "reference":
    return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  kernel = _KERNELS.get((name, backend)) if name else None
  why = (f"no {name!r} attention kernel is registered for backend {backend!r}" if kernel is None
         else kernel.supports(q_BTHK, k_BSGK, v_BSGV) if kernel.supports else None)
  if why is None:
    return _call_kernel(kernel.fn, q_BTHK, k_BSGK, v_BSGV, scale=scale)
  if impl == "auto":
    return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  raise NotImplementedError(f"causal_attention(impl={impl!r}): {why}; use impl='reference' or 'auto'")


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
  return _sharding.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec),
                             out_specs=spec)(q_BTHK, k_BSGK, v_BSGV)
