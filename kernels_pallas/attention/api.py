"""`flash_attention`: the public entry for causal training/prefill attention (GQA, qk != v head dims).

Implementations, and where each was verified (outputs and gradients against float64 references):
* "pallas": on TPU our Mosaic flash kernel (`flash_tpu`), any head sizes; numerics through the Pallas
  TPU interpreter on CPU, compilation ahead of time for v5e / v5p / v6e (no TPU run yet). On GPU our
  Triton-lowered flash kernel (`flash_gpu`), head dims <= 256, bf16 / fp16 / fp32; numerics through
  the generic Pallas interpreter on CPU and its CUDA lowering checked there (GPU run: see
  docs/kernels.md).
* "splash": upstream splash attention on TPU (interpreter + ahead-of-time checks as above).
* "cudnn": cuDNN fused attention on GPU, bf16/fp16, head dims <= 256 (run and checked on an H100).
* "auto": TPU -> "pallas"; GPU -> "cudnn" where it takes the call (kept in step with the decision
  in zebra_jax/ops/attention.py `_AUTO`); anything else -> the reference.
* "reference": the jnp oracle.
"""

from __future__ import annotations

import jax

from kernels_pallas.attention import cudnn, flash_gpu, flash_tpu, splash
from kernels_pallas.attention.reference import causal_attention_reference

IMPLS = ("auto", "reference", "pallas", "splash", "cudnn")


def kernel_for(impl: str, backend: str, q_BTHK, k_BSGK, v_BSGV):
  """(kernel(q, k, v, *, scale), None) for a verified concrete `impl` on `backend`, else (None, why)."""
  if impl == "auto":
    impl = {"tpu": "pallas", "gpu": "cudnn"}.get(backend, "reference")
  if impl == "reference":
    return causal_attention_reference, None
  table = {("pallas", "tpu"): (flash_tpu.flash_attention_tpu, flash_tpu.supports),
           ("splash", "tpu"): (splash.splash_attention_tpu, flash_tpu.supports),
           ("cudnn", "gpu"): (cudnn.cudnn_attention, cudnn.supports),
           ("pallas", "gpu"): (flash_gpu.flash_attention_gpu, flash_gpu.supports)}
  if (impl, backend) not in table:
    return None, f"no {impl!r} attention kernel for backend {backend!r}"
  fn, supports = table[(impl, backend)]
  why = supports(q_BTHK, k_BSGK, v_BSGV)
  return (fn, None) if why is None else (None, why)


def flash_attention(q_BTHK, k_BSGK, v_BSGV, *, scale: float, impl: str = "auto", interpret=False):
  """Causal attention softmax(q k^T * scale + mask) v, differentiable.

  q (B, T, H, K), k (B, T, G, K), v (B, T, G, V) with H % G == 0 -> (B, T, H, V) in q's dtype.
  impl: see the module docstring; "auto" falls back to the reference where no verified kernel takes
  the call, a concrete impl raises instead. interpret=True runs the TPU kernel ("pallas", or
  "splash" if asked) in the Pallas TPU interpreter on any backend (the GPU kernel's interpreter:
  `flash_gpu.flash_attention_gpu(..., interpret=True)`).
  """
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} must be one of {IMPLS}")
  if impl == "reference":
    return causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, scale=scale)
  if interpret:
    if impl == "cudnn":
      raise ValueError("interpret=True runs TPU kernels; impl='cudnn' has no interpreter")
    if impl == "splash":
      return splash.splash_attention_tpu(q_BTHK, k_BSGK, v_BSGV, scale=scale, interpret=True)
    return flash_tpu.flash_attention_tpu(q_BTHK, k_BSGK, v_BSGV, scale=scale, interpret=interpret)
  backend = jax.default_backend()
  kernel, why = kernel_for(impl, backend, q_BTHK, k_BSGK, v_BSGV)
  if kernel is None:
    if impl != "auto":
      raise NotImplementedError(f"flash_attention(impl={impl!r}): {why}")
    kernel = causal_attention_reference
  return kernel(q_BTHK, k_BSGK, v_BSGV, scale=scale)
