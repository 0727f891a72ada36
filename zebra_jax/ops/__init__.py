"""The hot ops the models call (attention, MLA decode, the SSD scan), each choosing its kernel in
one place: the op's `Registry` in `ops.dispatch` (see there for "auto", the verified backends and
`dispatch_backend`)."""

from zebra_jax.ops.dispatch import current_backend, dispatch_backend

__all__ = ["dispatch_backend", "current_backend"]
