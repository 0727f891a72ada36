"""Causal softmax attention with GQA sharing and independent qk / v head sizes (MLA uses d_qk != d_v).

The one place that picks an attention implementation; models only ever call `causal_attention`.

* "reference": plain jnp with float32 softmax (`causal_attention_reference`), the oracle, every backend;
* "pallas": the fused kernel for this backend, never a silent fallback: on TPU our Pallas flash kernel
  (kernels_pallas.attention.flash_tpu); on GPU cuDNN's fused attention, because no Pallas GPU attention
  kernel of ours exists yet (the Pallas-Triton one upstream is deprecated and slower than cuDNN);
  an error where the kernel does not take the call (e.g. float32 on GPU);
* "splash" (TPU) / "cudnn" (GPU): that kernel explicitly;
* "auto": the kernel registered for (backend) when its `supports` accepts the shapes/dtypes (each was
  verified for that backend: TPU through the interpreter + ahead-of-time compiles, GPU on an H100),
  else the reference.

Kernels register in `_KERNELS[(impl, backend)]` as `AttentionKernel(fn, supports)`; fn has the
signature of `causal_attention_reference` without q_offset.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from kernels_pallas.attention import cudnn as _cudnn
from kernels_pallas.attention import flash_tpu as _flash_tpu
from kernels_pallas.attention import splash as _splash
from kernels_pallas.attention.reference import causal_attention_reference

__all__ = ["causal_attention", "causal_attention_reference", "register_kernel", "AttentionKernel"]

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
register_kernel("pallas", "gpu", AttentionKernel(_cudnn.cudnn_attention, _cudnn.supports))

_AUTO = {"tpu": "pallas", "gpu": "cudnn"}


def causal_attention(q_BTHK, k_BSGK, v_BSGV, *, scale: float, impl: str = "auto"):
  """Dispatch point for training/prefill attention (see the module docstring for `impl`)."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} must be one of {IMPLS}")
  if impl == "reference":
    return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  backend = jax.default_backend()
  name = _AUTO.get(backend) if impl == "auto" else impl
  kernel = _KERNELS.get((name, backend)) if name else None
  why = (f"no {name!r} attention kernel is registered for backend {backend!r}" if kernel is None
         else kernel.supports(q_BTHK, k_BSGK, v_BSGV) if kernel.supports else None)
  if why is None:
    return kernel.fn(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  if impl == "auto":
    return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  raise NotImplementedError(f"causal_attention(impl={impl!r}): {why}; use impl='reference' or 'auto'")
