"""The one kernel chooser of zebra-jax: a registry per op and the backend dispatch targets.

Each op module (`ops.attention`, `ops.mla`, `ops.ssd`) owns a `Registry`:
* kernels keyed by (impl, backend), each a `Kernel(fn, supports)`: `fn` has the op's reference
  signature, `supports(*call) -> None | why not` judges the call's shapes and dtypes (the backend is
  the key), `None` meaning any call;
* an "auto" table: per backend, the impls to try in order; the first registered one whose
  `supports` takes the call runs, else the pure-JAX reference;
* `verified`: the backends each impl was checked on (docs/kernels.md): what "auto" may list.

`impl` is "reference" (the oracle, no lookup), "auto" (the table above, never an error) or a
concrete name (that kernel for the dispatch backend, or NotImplementedError saying why not: an
explicit request never falls back silently); any other name is a ValueError listing the valid ones.

The dispatch backend is `jax.default_backend()` unless a `dispatch_backend(name)` context says
otherwise: ahead-of-time compilation for a TPU topology on a CPU host traces under
`dispatch_backend("tpu")` so "auto" picks the kernels a pod run would (distill/aot.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator

import jax

__all__ = ["Kernel", "Registry", "dispatch_backend", "current_backend"]

_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("dispatch_backend", default=None)


@contextlib.contextmanager
def dispatch_backend(backend: str) -> Iterator[None]:
  """Kernels are chosen for `backend` ("cpu", "gpu", "tpu") inside the block, whatever runs it."""
  token = _BACKEND.set(backend)
  try:
    yield
  finally:
    _BACKEND.reset(token)


def current_backend() -> str:
  """The backend kernels are chosen for: the innermost `dispatch_backend`, else jax's default."""
  return _BACKEND.get() or jax.default_backend()


@dataclasses.dataclass(frozen=True)
class Kernel:
  fn: Callable
  supports: Callable[..., str | None] | None = None  # (*call, **call) -> None or why not


@dataclasses.dataclass
class Registry:
  """Kernels of one op, its "auto" order per backend and where each impl was verified.

  `missing` words the reason when no kernel is registered; it may use {impl}, {op}, {backend} and
  {available} (the impls usable on that backend)."""

  op: str
  impls: tuple[str, ...]  # every accepted impl, "auto" and "reference" included
  auto: dict[str, tuple[str, ...]]
  verified: dict[str, tuple[str, ...]]
  missing: str = "no {impl!r} {op} kernel is registered for backend {backend!r}"
  kernels: dict[tuple[str, str], Kernel] = dataclasses.field(default_factory=dict)

  def register(self, impl: str, backend: str, kernel: Kernel) -> None:
    """Adds (or replaces) the kernel `impl` runs on `backend`."""
    if impl not in self.impls or impl in ("auto", "reference"):
      raise ValueError(f"kernels register under a concrete non-reference impl, got {impl!r}")
    self.kernels[(impl, backend)] = kernel

  def check_impl(self, impl: str) -> None:
    if impl not in self.impls:
      raise ValueError(f"impl={impl!r} must be one of {self.impls}")

  def available(self, backend: str) -> tuple[str, ...]:
    """The concrete impls usable on `backend`."""
    return ("reference",) + tuple(sorted(i for (i, b) in self.kernels if b == backend))

  def auto_impl(self, backend: str, *call, **call_kw) -> str:
    """The impl "auto" runs on `backend` for this call: a registered kernel or "reference"."""
    for name in self.auto.get(backend, ()):
      kernel = self.kernels.get((name, backend))
      if kernel is not None and (kernel.supports is None or kernel.supports(*call, **call_kw) is None):
        return name
    return "reference"

  def resolve(self, impl: str, *call, caller: str, interpret=False, **call_kw) -> Kernel | None:
    """The kernel `impl` runs for this call (arguments as `supports` takes them); None means the
    reference. `caller` names the entry point in errors.

    `interpret` (True or a Pallas interpreter config): the TPU kernel of `impl` ("auto": "pallas")
    with `interpret` passed on, run in the Pallas TPU interpreter on any backend, without `supports`
    (which describes what compiles on hardware, not what the interpreter runs): CI on a CPU."""
    self.check_impl(impl)
    if impl == "reference":
      return None
    if interpret:
      name = "pallas" if impl == "auto" else impl
      kernel = self.kernels.get((name, "tpu"))
      if kernel is None:
        raise NotImplementedError(
          f"{caller}(impl={impl!r}, interpret=True): no {name!r} TPU "
          f"kernel to interpret; use impl='reference' or 'auto'"
        )
      return Kernel(functools.partial(kernel.fn, interpret=interpret), kernel.supports)
    backend = current_backend()
    if impl == "auto":
      name = self.auto_impl(backend, *call, **call_kw)
      return None if name == "reference" else self.kernels[(name, backend)]
    kernel = self.kernels.get((impl, backend))
    if kernel is None:
      why = self.missing.format(
        impl=impl, op=self.op, backend=backend, available=", ".join(self.available(backend))
      )
    else:
      why = kernel.supports(*call, **call_kw) if kernel.supports else None
    if why is None:
      return kernel
    raise NotImplementedError(f"{caller}(impl={impl!r}): {why}; use impl='reference' or 'auto'")
