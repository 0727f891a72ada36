"""Mamba2 SSD (state-space duality) scan: Pallas kernels (TPU: Mosaic, `tpu.ssd_scan_tpu`; GPU:
Triton lowering, `gpu.ssd_scan_gpu`) and the pure-JAX references they are checked against.

`ssd_scan` / `ssd_step` are the public entries; they call `zebra_jax.ops.ssd`, which chooses the
implementation ("auto", "reference", "pallas"; see there)."""

from .reference import ssd_scan_reference, ssd_sequential_reference, ssd_step_reference

__all__ = ["ssd_scan", "ssd_step", "ssd_scan_reference", "ssd_step_reference", "ssd_sequential_reference"]


def ssd_scan(
  x,
  dt,
  A,
  B,
  C,
  *,
  D=None,
  dt_bias=None,
  dt_softplus: bool = True,
  initial_state=None,
  chunk_size: int = 256,
  return_final_state: bool = False,
  impl: str = "auto",
  interpret=False,
):
  """Mamba2 SSD chunked scan with the semantics of `ssd_scan_reference`:
  `zebra_jax.ops.ssd.ssd_scan`, which chooses the kernel.

  x (b, l, h, p), dt (b, l, h) raw, A (h,), B/C (b, l, g, n) (head i reads group i // (h // g)),
  D/dt_bias None or (h,), initial_state None or (b, h, p, n); any l (padded internally).
  Returns y (b, l, h, p) in x.dtype, plus the float32 final state (b, h, p, n) when
  `return_final_state`. Differentiable in every array (custom VJP on the kernels).
  interpret=True runs the TPU kernel in the Pallas TPU interpreter on any backend (CI on CPU).
  """
  # ops imports this package's kernel modules, and importing one runs this __init__ first
  # (`import kernels_pallas` alone loads no zebra_jax)
  # lazy: the import cycle kernels_pallas.ssd <-> zebra_jax.ops.ssd
  from zebra_jax.ops import ssd as ops_ssd

  return ops_ssd.ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    D=D,
    dt_bias=dt_bias,
    dt_softplus=dt_softplus,
    initial_state=initial_state,
    chunk_size=chunk_size,
    return_final_state=return_final_state,
    impl=impl,
    interpret=interpret,
  )


def ssd_step(state, x, dt, A, B, C, *, D=None, dt_bias=None, dt_softplus: bool = True, impl: str = "auto"):
  """One decode step, `zebra_jax.ops.ssd.ssd_step`: state (b, h, p, n), x (b, h, p), dt (b, h),
  B/C (b, g, n) -> (y (b, h, p) in x.dtype, new_state (b, h, p, n) float32)."""
  # lazy: the import cycle kernels_pallas.ssd <-> zebra_jax.ops.ssd (see ssd_scan)
  from zebra_jax.ops import ssd as ops_ssd

  return ops_ssd.ssd_step(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, impl=impl)
