"""The one kernel chooser (`zebra_jax.ops.dispatch`), on CPU: each op's "auto" table per backend
(the TPU and GPU ones through `ops.dispatch_backend`, as the ahead-of-time compile uses it), the
fall-through to the next entry when a kernel declines the shapes, and the error for an unknown impl.
Only the choice is checked (abstract shapes, nothing runs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from kernels_pallas.attention import cudnn, flash_gpu, flash_tpu
from kernels_pallas.mla import decode_gpu, decode_tpu
from kernels_pallas.ssd.gpu import ssd_scan_gpu
from kernels_pallas.ssd.tpu import ssd_scan_tpu
from zebra_jax import ops
from zebra_jax.ops import attention as ops_attention
from zebra_jax.ops import mla as ops_mla
from zebra_jax.ops import ssd as ops_ssd
from zebra_jax.ops.dispatch import Kernel, Registry

bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)


def chosen(registry, impl, backend, *call, **call_kw):
  """The kernel function `impl` runs when dispatching for `backend`; None for the reference."""
  with ops.dispatch_backend(backend):
    kernel = registry.resolve(impl, *call, caller="test", **call_kw)
  return None if kernel is None else kernel.fn


def test_dispatch_backend_is_a_context_and_defaults_to_jax():
  host = jax.default_backend()
  assert ops.current_backend() == host
  with ops.dispatch_backend("tpu"):
    assert ops.current_backend() == "tpu"
    assert jax.default_backend() == host  # jax itself is left alone (no monkeypatch)
    with ops.dispatch_backend("gpu"):
      assert ops.current_backend() == "gpu"
    assert ops.current_backend() == "tpu"
  assert ops.current_backend() == host


def test_attention_auto_table_per_backend():
  zebra = (bf16(2, 2048, 32, 64), bf16(2, 2048, 8, 64), bf16(2, 2048, 8, 64))
  fp32 = (f32(1, 33, 2, 16), f32(1, 33, 1, 16), f32(1, 33, 1, 8))
  reg = ops_attention.KERNELS
  assert chosen(reg, "auto", "cpu", *zebra) is None
  assert chosen(reg, "auto", "tpu", *zebra) is flash_tpu.flash_attention_tpu
  assert chosen(reg, "auto", "gpu", *zebra) is cudnn.cudnn_attention
  # cuDNN declines float32: "auto" falls through to the next GPU entry, our flash kernel.
  assert cudnn.supports(*fp32) is not None
  assert chosen(reg, "auto", "gpu", *fp32) is flash_gpu.flash_attention_gpu
  # Explicit impls: that kernel on that backend, or an error saying which backend lacks it.
  assert chosen(reg, "pallas", "gpu", *fp32) is flash_gpu.flash_attention_gpu
  with pytest.raises(NotImplementedError, match="'cudnn'.*'tpu'"):
    chosen(reg, "cudnn", "tpu", *zebra)
  with pytest.raises(NotImplementedError, match="dtype"):
    chosen(reg, "cudnn", "gpu", *fp32)
  assert chosen(reg, "reference", "tpu", *zebra) is None


def test_mla_and_ssd_auto_tables_per_backend():
  ql, qr, cache = bf16(2, 16, 512), bf16(2, 16, 64), bf16(2, 128, 576)
  assert chosen(ops_mla.KERNELS, "auto", "cpu", ql, qr, cache) is None
  assert chosen(ops_mla.KERNELS, "auto", "tpu", ql, qr, cache) is decode_tpu.mla_decode_tpu
  assert chosen(ops_mla.KERNELS, "auto", "gpu", ql, qr, cache) is None  # r_kv + d_r = 576 > 256
  small = (bf16(2, 16, 128), bf16(2, 16, 64), bf16(2, 128, 192))
  assert chosen(ops_mla.KERNELS, "auto", "gpu", *small) is decode_gpu.mla_decode_gpu
  x = bf16(1, 512, 32, 64)
  call = dict(x=x, B=x, chunk_size=256)
  assert chosen(ops_ssd.SCAN_KERNELS, "auto", "cpu", **call) is None
  assert chosen(ops_ssd.SCAN_KERNELS, "auto", "tpu", **call) is ssd_scan_tpu
  assert chosen(ops_ssd.SCAN_KERNELS, "auto", "gpu", **call) is ssd_scan_gpu
  # A chunk the TPU kernel was not compiled for: the table has no further TPU entry -> reference.
  assert chosen(ops_ssd.SCAN_KERNELS, "auto", "tpu", x=x, B=x, chunk_size=64) is None


def test_unsupported_shape_falls_through_to_the_next_entry():
  picky = Kernel(lambda *a: "picky", supports=lambda n: None if n % 2 == 0 else f"odd {n}")
  plain = Kernel(lambda *a: "plain")
  reg = Registry(
    "toy",
    impls=("auto", "reference", "picky", "plain"),
    auto={"tpu": ("picky", "plain"), "cpu": ("plain", "picky")},
    verified={},
  )
  reg.register("picky", "tpu", picky)
  reg.register("plain", "tpu", plain)
  reg.register("picky", "cpu", picky)
  assert chosen(reg, "auto", "tpu", 4) is picky.fn
  assert chosen(reg, "auto", "tpu", 3) is plain.fn
  # "plain" is not registered on the CPU: skipped; past the table's end: the reference.
  assert chosen(reg, "auto", "cpu", 4) is picky.fn
  assert chosen(reg, "auto", "cpu", 3) is None
  with pytest.raises(NotImplementedError, match="odd 3"):  # an explicit impl never falls back
    chosen(reg, "picky", "tpu", 3)
  assert chosen(reg, "auto", "gpu", 4) is None  # no table for the backend: the reference


@pytest.mark.parametrize(
  "registry", [ops_attention.KERNELS, ops_mla.KERNELS, ops_ssd.SCAN_KERNELS, ops_ssd.STEP_KERNELS]
)
def test_unknown_impl_names_the_valid_ones(registry):
  with pytest.raises(ValueError) as err:
    chosen(registry, "triton", "cpu")
  assert "triton" in str(err.value)
  for name in registry.impls:
    assert repr(name) in str(err.value)
  with pytest.raises(ValueError, match="concrete non-reference"):
    registry.register("auto", "cpu", Kernel(lambda: None))


def test_auto_lists_only_verified_registered_kernels():
  for registry in (ops_attention.KERNELS, ops_mla.KERNELS, ops_ssd.SCAN_KERNELS):
    for backend in ("tpu", "gpu"):
      for name in registry.auto.get(backend, ()):
        assert backend in registry.verified.get(name, ()), (registry.op, backend, name)
        assert (name, backend) in registry.kernels, (registry.op, backend, name)
