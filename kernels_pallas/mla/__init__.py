from kernels_pallas.mla.reference import mla_decode_reference

__all__ = ["mla_decode_reference"]
