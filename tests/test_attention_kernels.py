"""Causal attention kernels (MLA head sizes, GQA) against float64 numpy forward and backward written here.

* our Pallas TPU flash kernel and splash: always, through the Pallas TPU interpreter, outputs and
  gradients of q, k, v (fp32 rel err < 1e-4, bf16 < 1e-2), odd sequence lengths, several blocks;
* both compiled ahead of time for v5e / v5p / v6e when libtpu is importable (extra `tpu-aot`);
* cuDNN through the ops dispatch: only on a GPU backend (run on the device machine).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels_pallas
from kernels_pallas.attention import flash_tpu, splash
from zebra_jax.ops import attention as ops_attention

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")


def attention_f64(q, k, v, do, scale):
  """Output and (dq, dk, dv) of causal GQA attention, float64, written out by hand."""
  q, k, v, do = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v, do))
  B, T, H, K = q.shape
  G = k.shape[2]
  R = H // G
  kh, vh = np.repeat(k, R, axis=2), np.repeat(v, R, axis=2)
  s = np.einsum("bthk,bshk->bhts", q, kh) * scale
  s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = np.einsum("bhts,bshv->bthv", p, vh)
  dp = np.einsum("bthv,bshv->bhts", do, vh)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhts,bshk->bthk", ds, kh) * scale
  dk = (np.einsum("bhts,bthk->bshk", ds, q) * scale).reshape(B, T, G, R, K).sum(3)
  dv = np.einsum("bhts,bthv->bshv", p, do).reshape(B, T, G, R, -1).sum(3)
  return o, (dq, dk, dv)


def rel_err(out, ref):
  out = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  assert np.all(np.isfinite(out)), "non-finite output"
  return np.linalg.norm(out - ref) / np.linalg.norm(ref)


def make(rng, B, T, H, G, K, V, dtype):
  shapes = [(B, T, H, K), (B, T, G, K), (B, T, G, V), (B, T, H, V)]
  return [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]


def check(fn, q, k, v, do, scale, tol):
  out, vjp = jax.vjp(fn, q, k, v)
  grads = vjp(do)
  ref_out, ref_grads = attention_f64(q, k, v, do, scale)
  assert out.shape == ref_out.shape and out.dtype == q.dtype
  errs = [rel_err(out, ref_out)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]
  assert max(errs) < tol, f"rel errors out/dq/dk/dv = {errs}"


# ------------------------------------------------------------------------------ TPU interpreter
@pytest.mark.parametrize(
  "dtype,tol,T,bq,bk", [(jnp.float32, 1e-4, 45, 16, 16), (jnp.bfloat16, 1e-2, 40, 8, 16)]
)
def test_flash_tpu_interpret_fwd_bwd(dtype, tol, T, bq, bk):
  rng = np.random.default_rng([T, bq, bk, jnp.dtype(dtype).itemsize])
  q, k, v, do = make(rng, 1, T, 2, 1, 24, 16, dtype)  # GQA 2/1, qk 24 != v 16, odd T
  fn = lambda q, k, v: flash_tpu.flash_attention_tpu(
    q, k, v, scale=0.3, block_q=bq, block_k=bk, interpret=True
  )
  check(fn, q, k, v, do, 0.3, tol)


def test_splash_interpret_fwd_bwd():
  rng = np.random.default_rng(5)
  q, k, v, do = make(rng, 1, 130, 2, 1, 32, 16, jnp.float32)  # two 128-blocks, ragged end
  fn = lambda q, k, v: splash.splash_attention_tpu(q, k, v, scale=0.25, interpret=True)
  check(fn, q, k, v, do, 0.25, 1e-4)


def test_public_entry_and_dispatch_on_cpu():
  rng = np.random.default_rng(6)
  q, k, v, do = make(rng, 2, 19, 2, 1, 8, 16, jnp.float32)
  ref = attention_f64(q, k, v, do, 0.5)[0]
  assert rel_err(kernels_pallas.flash_attention(q, k, v, scale=0.5, interpret=True), ref) < 1e-4
  assert rel_err(ops_attention.causal_attention(q, k, v, scale=0.5), ref) < 1e-4
  if jax.default_backend() == "cpu":
    with pytest.raises(NotImplementedError, match="cpu"):
      ops_attention.causal_attention(q, k, v, scale=0.5, impl="pallas")
    with pytest.raises(NotImplementedError, match="cpu"):
      kernels_pallas.flash_attention(q, k, v, scale=0.5, impl="cudnn")
  with pytest.raises(ValueError, match="impl"):
    ops_attention.causal_attention(q, k, v, scale=0.5, impl="flash")
  with pytest.raises(ValueError, match="multiple of kv heads"):
    flash_tpu.flash_attention_tpu(
      q, jnp.concatenate([k] * 3, 2), jnp.concatenate([v] * 3, 2), scale=0.5, interpret=True
    )


# ----------------------------------------------------------------------- TPU ahead-of-time compile
@pytest.mark.parametrize("topology", ["v5e:2x2", "v5p:2x2x1", "v6e:2x2"])
def test_tpu_kernels_compile_ahead_of_time(topology):
  pytest.importorskip("libtpu", reason="ahead-of-time TPU compilation needs the tpu-aot extra")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu
  from jax.experimental import topologies

  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])
  sd = lambda shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)
  # The gradient program holds the forward kernel too (it makes the residuals), so one compile
  # covers forward, dK/dV and dQ.
  # Ours: GQA 32/8 with MLA widths 192/128 at an odd length; splash: DeepSeek-style 16 heads.
  cases = [
    (flash_tpu.flash_attention_tpu, (1, 1000, 32, 8, 192, 128)),
    (splash.splash_attention_tpu, (1, 2048, 16, 16, 192, 128)),
  ]
  for kernel, (B, T, H, G, K, V) in cases:
    args = (sd((B, T, H, K)), sd((B, T, G, K)), sd((B, T, G, V)))
    loss = lambda q, k, v, f=kernel: f(q, k, v, scale=0.1).astype(jnp.float32).sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
    assert "flash_attention_dkv" in compiled.as_text() or kernel is splash.splash_attention_tpu


# ------------------------------------------------------------------------------------------ GPU
@on_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["cudnn", "pallas", "auto"])
@pytest.mark.parametrize(
  "B,T,H,G,K,V",
  [
    (2, 256, 8, 2, 64, 64),  # Zebra-1B MLA layer heads (GQA, 64/64)
    (1, 200, 4, 4, 192, 128),  # DeepSeek-style MLA 192/128, odd length
  ],
)
def test_gpu_dispatch_fwd_bwd(impl, B, T, H, G, K, V):
  rng = np.random.default_rng([B, T, H, K])
  q, k, v, do = make(rng, B, T, H, G, K, V, jnp.bfloat16)
  fn = lambda q, k, v: ops_attention.causal_attention(q, k, v, scale=K**-0.5, impl=impl)
  if impl == "cudnn" and T % 64:
    # cuDNN's flash attention takes only multiples of 64; asked for by name it must say so
    # (impl="auto" falls back instead, checked by the other rows).
    with pytest.raises(NotImplementedError, match="multiples of 64"):
      fn(q, k, v)
    return
  check(fn, q, k, v, do, K**-0.5, 1e-2)


@on_gpu
@pytest.mark.gpu
def test_gpu_cudnn_mla_paths_agree():
  from kernels_pallas.attention import cudnn

  rng = np.random.default_rng(8)
  q, k, v, do = make(rng, 1, 128, 4, 2, 192, 128, jnp.bfloat16)
  for path in ("native", "pad"):
    fn = lambda q, k, v, path=path: cudnn.cudnn_attention(q, k, v, scale=0.1, mla_path=path)
    check(fn, q, k, v, do, 0.1, 1e-2)


@on_gpu
@pytest.mark.gpu
def test_gpu_float32_auto_takes_the_next_kernel_and_cudnn_refuses():
  # (impl="pallas" on GPU is our flash_gpu kernel, which takes float32: tests/test_flash_gpu.py.)
  rng = np.random.default_rng(9)
  q, k, v, do = make(rng, 1, 33, 2, 1, 16, 8, jnp.float32)
  out = ops_attention.causal_attention(q, k, v, scale=0.2)
  expect = ops_attention.KERNELS.auto_impl("gpu", q, k, v)
  ref = (
    kernels_pallas.causal_attention_reference(q, k, v, scale=0.2)
    if expect == "reference"
    else ops_attention.KERNELS.kernels[(expect, "gpu")].fn(q, k, v, scale=0.2)
  )
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  with pytest.raises(NotImplementedError, match="dtype"):
    ops_attention.causal_attention(q, k, v, scale=0.2, impl="cudnn")
