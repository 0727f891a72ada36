"""Absorbed MLA (latent attention) decode: the jnp oracle and Pallas kernels for TPU and GPU."""

from kernels_pallas.mla.api import mla_decode
from kernels_pallas.mla.reference import mla_decode_reference

__all__ = ["mla_decode", "mla_decode_reference"]
