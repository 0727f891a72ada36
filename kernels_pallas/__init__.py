"""Pallas kernels for the hot loops of zebra-jax, each next to its pure-JAX reference.

* `kernels_pallas.ssd`: the Mamba2 SSD chunked scan (`ssd_scan_reference`, the oracle).

Models never import kernels directly: they call `zebra_jax.ops`, which picks an implementation per
backend and shape.
"""

from kernels_pallas.ssd import ssd_scan_reference, ssd_sequential_reference, ssd_step_reference

__all__ = ["ssd_scan_reference", "ssd_sequential_reference", "ssd_step_reference"]
