"""Mamba2 SSD (state-space duality) scan: Pallas kernels (TPU: Mosaic, GPU: Triton lowering) and
the pure-JAX references they are checked against."""

from .api import SCAN_IMPLS, resolve_scan_impl, ssd_scan, ssd_step
from .reference import ssd_scan_reference, ssd_sequential_reference, ssd_step_reference

__all__ = ["ssd_scan", "ssd_step", "SCAN_IMPLS", "resolve_scan_impl", "ssd_scan_reference",
           "ssd_step_reference", "ssd_sequential_reference"]
