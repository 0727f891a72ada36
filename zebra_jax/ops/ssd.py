"""Mamba2 SSD scan and single-step update: the one place that picks an implementation.

Models call `ssd_scan` / `ssd_step` with `impl` from the config:
* "reference": the pure-JAX oracle in `kernels_pallas.ssd.reference` (every backend);
* "pallas": the Pallas kernel registered for the current backend; an error if there is none (an
  explicit request never falls back silently);
* "auto": the Pallas kernel when one is registered for the backend and supports the call, else the
  reference.

Kernels register in `SCAN_KERNELS` / `STEP_KERNELS` (`ops.dispatch.Registry`s), keyed by (impl,
backend) with backend as `ops.dispatch.current_backend()` names it ("cpu", "gpu", "tpu"; by default
`jax.default_backend()`). Registered at import: the Mosaic TPU kernel on "tpu" and the GPU kernel
(Pallas, Triton lowering) on "gpu", each with the `supports` check of the shapes, chunk sizes and
dtypes it was verified on (AOT-compiled for v5e/v5p/v6e and interpreted on CPU; run and checked on
an H100). Nothing is registered for "cpu": there every call runs the reference. The decode step of
both is the reference update (one token is bound by reading the state once; XLA fuses it). Shapes
and semantics (same for every implementation):

  x (b, l, h, p), dt (b, l, h) raw, A (h,) negative, B/C (b, l, g, n) with head i reading group
  i // (h // g); D, dt_bias None or (h,); initial_state None or (b, h, p, n).
  dt_eff = softplus(dt + dt_bias);  S_t = exp(dt_eff A) S_{t-1} + dt_eff x_t B_t^T;
  y_t = S_t C_t + D x_t.

Inside the trainer's partitioned step (traced under `parallel.activation_mesh` with more than one
device) a Pallas scan is called through `shard_map` (Mosaic kernels cannot be partitioned by
GSPMD): batch split over data x fsdp; heads over tensor when it divides the heads and either divides
the groups (B/C split alike) or there is one group (B/C replicated); length and state dims whole.
Without a mesh, or on one device, the kernel is called directly.
"""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from kernels_pallas.ssd.gpu import gpu_supports, ssd_scan_gpu
from kernels_pallas.ssd.reference import ssd_scan_reference, ssd_step_reference
from kernels_pallas.ssd.tpu import ssd_scan_tpu, tpu_supports
from zebra_jax.ops.dispatch import Kernel, Registry, current_backend
from zebra_jax.parallel import sharding as _sharding

__all__ = [
  "ssd_scan",
  "ssd_step",
  "ssd_scan_reference",
  "ssd_step_reference",
  "SCAN_KERNELS",
  "STEP_KERNELS",
  "available_impls",
]

IMPLS = ("auto", "reference", "pallas")
# Any backend may register a "pallas" kernel; "auto" takes it where `supports` agrees.
_AUTO = {"tpu": ("pallas",), "gpu": ("pallas",), "cpu": ("pallas",)}
_VERIFIED = {"pallas": ("tpu", "gpu")}
_MISSING = "no Pallas SSD {op} kernel is registered for backend {backend!r} yet (available here: {available})"

# Scan kernels take `ssd_scan_reference`'s arguments; `supports(**call)` sees them by name.
SCAN_KERNELS = Registry("scan", IMPLS, _AUTO, _VERIFIED, missing=_MISSING)
SCAN_KERNELS.register("pallas", "tpu", Kernel(ssd_scan_tpu, tpu_supports))
SCAN_KERNELS.register("pallas", "gpu", Kernel(ssd_scan_gpu, gpu_supports))
# The decode step of every kernel is the reference update (one token is bound by reading the
# state once; XLA fuses it); registered so that impl="pallas" means the same backends for both.
STEP_KERNELS = Registry("step", IMPLS, _AUTO, _VERIFIED, missing=_MISSING)
STEP_KERNELS.register("pallas", "tpu", Kernel(ssd_step_reference))
STEP_KERNELS.register("pallas", "gpu", Kernel(ssd_step_reference))


def available_impls(backend: str | None = None) -> tuple[str, ...]:
  """The concrete scan implementations usable on `backend` (default: the dispatch backend)."""
  return SCAN_KERNELS.available(backend or current_backend())


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
  """Chunked SSD scan. Returns y (b, l, h, p) in x.dtype, plus the float32 final state
  (b, h, p, n) when `return_final_state`. interpret=True runs the TPU kernel in the Pallas TPU
  interpreter on any backend (`Registry.resolve`)."""
  kw = dict(
    D=D,
    dt_bias=dt_bias,
    dt_softplus=dt_softplus,
    initial_state=initial_state,
    chunk_size=chunk_size,
    return_final_state=return_final_state,
  )
  kernel = SCAN_KERNELS.resolve(impl, caller="ssd_scan", interpret=interpret, x=x, dt=dt, A=A, B=B, C=C, **kw)
  if kernel is None:  # pure JAX: GSPMD partitions it like the rest of the step
    return ssd_scan_reference(x, dt, A, B, C, **kw)
  return _scan_per_shard(kernel.fn, x, dt, A, B, C, **kw)


def _scan_per_shard(
  fn, x, dt, A, B, C, *, D, dt_bias, dt_softplus, initial_state, chunk_size, return_final_state
):
  """fn(x, dt, A, B, C, ...), per shard under the trainer's activation mesh (module docstring)."""
  static = dict(dt_softplus=dt_softplus, chunk_size=chunk_size, return_final_state=return_final_state)
  mesh = _sharding.kernel_mesh()
  if mesh is None:
    return fn(x, dt, A, B, C, D=D, dt_bias=dt_bias, initial_state=initial_state, **static)
  b = _sharding.batch_axes(mesh, x.shape[0])
  n_heads, n_groups = x.shape[2], B.shape[2]
  # Head i reads group i // (h/g): contiguous head blocks read contiguous group blocks when the
  # tensor size divides g (same ratio per shard); with one group every shard reads it whole.
  h = _sharding.head_axis(mesh, n_heads, n_groups) or (
    _sharding.head_axis(mesh, n_heads) if n_groups == 1 else None
  )
  g = h if h is not None and n_groups > 1 else None
  head_vec = P(h)
  optional = {
    "D": (D, head_vec),
    "dt_bias": (dt_bias, head_vec),
    "initial_state": (initial_state, P(b, h, None, None)),
  }
  names = [k for k, (v, _) in optional.items() if v is not None]
  in_specs = (P(b, None, h, None), P(b, None, h), head_vec, P(b, None, g, None), P(b, None, g, None)) + tuple(
    optional[k][1] for k in names
  )
  y_spec = P(b, None, h, None)
  out_specs = (y_spec, P(b, h, None, None)) if return_final_state else y_spec

  def per_shard(x, dt, A, B, C, *opt):
    return fn(x, dt, A, B, C, **dict(zip(names, opt)), **static)

  return _sharding.shard_map(per_shard, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(
    x, dt, A, B, C, *(optional[k][0] for k in names)
  )


def ssd_step(state, x, dt, A, B, C, *, D=None, dt_bias=None, dt_softplus: bool = True, impl: str = "auto"):
  """One decode step: state (b, h, p, n), x (b, h, p), dt (b, h), B/C (b, g, n).

  Returns (y (b, h, p) in x.dtype, new_state (b, h, p, n) float32)."""
  kw = dict(D=D, dt_bias=dt_bias, dt_softplus=dt_softplus)
  # (No shard_map here: every registered step is the pure-JAX reference update.)
  kernel = STEP_KERNELS.resolve(impl, caller="ssd_step", state=state, x=x, dt=dt, A=A, B=B, C=C, **kw)
  fn = ssd_step_reference if kernel is None else kernel.fn
  return fn(state, x, dt, A, B, C, **kw)
