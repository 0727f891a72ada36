"""Mamba2 SSD (state-space duality) scan: pure-JAX references (Pallas kernels to follow)."""

from .reference import ssd_scan_reference, ssd_sequential_reference, ssd_step_reference

__all__ = ["ssd_scan_reference", "ssd_step_reference", "ssd_sequential_reference"]
