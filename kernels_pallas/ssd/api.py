"""Public entry points of the SSD kernels: `ssd_scan` (chunked scan, forward + custom VJP) and
`ssd_step` (one decode token).

Implementations (`impl`):
  "reference"   the pure-JAX oracle (`ssd_scan_reference`), every backend;
  "pallas_tpu"  the Mosaic TPU kernel (kernels_pallas/ssd/tpu.py);
  "pallas_gpu"  the GPU kernel, Pallas Triton lowering (kernels_pallas/ssd/gpu.py); these two are
                used as asked on any backend (e.g. lowering for a TPU topology from a CPU host);
  "pallas"      the kernel of the current backend; on a CPU only with `interpret=True`, which runs
                the TPU kernel through the Pallas TPU interpreter;
  "auto"        the current backend's kernel when it was verified for this call (see
                `tpu_supports` / `gpu_supports`), else the reference. Never a kernel on CPU.
`interpret=True` runs the chosen kernel in a Pallas interpreter on any backend (TPU kernel: the
TPU interpreter; GPU kernel: the generic HLO interpreter), for CI on CPU.
"""

from __future__ import annotations

from typing import Optional

import jax

from kernels_pallas.ssd.common import CoreConfig, prepare_and_run
from kernels_pallas.ssd.reference import ssd_scan_reference, ssd_step_reference

__all__ = ["ssd_scan", "ssd_step", "SCAN_IMPLS", "resolve_scan_impl"]

SCAN_IMPLS = ("auto", "reference", "pallas", "pallas_tpu", "pallas_gpu")
_BACKEND_KERNEL = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}


def _kernel_module(impl: str):
    # Imported lazily: the GPU module needs the Triton half of Pallas, the TPU one the Mosaic half.
    if impl == "pallas_tpu":
        from kernels_pallas.ssd import tpu
        return tpu.ssd_core_tpu, tpu.tpu_supports
    from kernels_pallas.ssd import gpu
    return gpu.ssd_core_gpu, gpu.gpu_supports


def resolve_scan_impl(impl: str, *, backend: Optional[str] = None, interpret: bool = False,
                      **call) -> str:
    """The concrete implementation ("reference", "pallas_tpu" or "pallas_gpu") a call runs."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"impl={impl!r} must be one of {SCAN_IMPLS}")
    backend = backend or jax.default_backend()
    if impl == "reference":
        return impl
    if impl == "auto":
        kernel = _BACKEND_KERNEL.get(backend)
        if kernel is None or interpret:
            return "reference"
        return "reference" if _kernel_module(kernel)[1](**call) else kernel
    if impl == "pallas":
        if backend in _BACKEND_KERNEL:
            impl = _BACKEND_KERNEL[backend]
        elif interpret:
            impl = "pallas_tpu"
        else:
            raise NotImplementedError(
                f"ssd_scan(impl='pallas'): no SSD kernel for backend {backend!r}; use "
                "impl='reference', or interpret=True to run the TPU kernel in the interpreter")
    # An explicit kernel is honoured on any backend: lowering for another platform (ahead-of-time
    # compilation for a TPU topology on a CPU host) is legitimate, and Pallas itself refuses a
    # kernel that cannot run where it is placed.
    return impl


def ssd_scan(x, dt, A, B, C, *, D=None, dt_bias=None, dt_softplus: bool = True,
             initial_state=None, chunk_size: int = 256, return_final_state: bool = False,
             impl: str = "auto", interpret: bool = False):
    """Mamba2 SSD chunked scan with the semantics of `ssd_scan_reference`.

    x (b, l, h, p), dt (b, l, h) raw, A (h,), B/C (b, l, g, n) (head i reads group i // (h // g)),
    D/dt_bias None or (h,), initial_state None or (b, h, p, n); any l (padded internally).
    Returns y (b, l, h, p) in x.dtype, plus the float32 final state (b, h, p, n) when
    `return_final_state`. Differentiable in x, dt, A, B, C, D, dt_bias and initial_state (custom
    VJP on the kernels); float32 accumulation throughout.
    """
    chosen = resolve_scan_impl(impl, interpret=interpret, x=x, B=B, chunk_size=chunk_size)
    if chosen == "reference":
        return ssd_scan_reference(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                  initial_state=initial_state, chunk_size=chunk_size,
                                  return_final_state=return_final_state)
    core, _ = _kernel_module(chosen)
    cfg = CoreConfig(chunk=chunk_size, interpret=interpret)
    return prepare_and_run(core, cfg, x, dt, A, B, C, D=D, dt_bias=dt_bias,
                           dt_softplus=dt_softplus, initial_state=initial_state,
                           return_final_state=return_final_state)


def ssd_step(state, x, dt, A, B, C, *, D=None, dt_bias=None, dt_softplus: bool = True,
             impl: str = "auto"):
    """One decode step: state (b, h, p, n), x (b, h, p), dt (b, h), B/C (b, g, n).

    Returns (y (b, h, p) in x.dtype, new_state (b, h, p, n) float32). Every implementation is
    the reference update: one token is a handful of elementwise ops and small contractions over
    the state, which XLA fuses into one pass over it (the op is bound by reading the state once).
    """
    if impl not in SCAN_IMPLS:
        raise ValueError(f"impl={impl!r} must be one of {SCAN_IMPLS}")
    return ssd_step_reference(state, x, dt, A, B, C, D=D, dt_bias=dt_bias,
                              dt_softplus=dt_softplus)
