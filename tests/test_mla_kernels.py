"""Absorbed MLA decode kernels against a float64 numpy reference written here.

* TPU kernel: always, through the Pallas TPU interpreter (fp32 rel err < 1e-4, bf16 < 1e-2), ragged
  lengths including 0, 1 and s, odd s, several cache blocks with a ragged last block;
* TPU kernel ahead-of-time compiled for v5e / v5p / v6e when libtpu is importable (extra `tpu-aot`);
* GPU kernel (Mosaic GPU): only on a GPU backend (run on the device machine).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels_pallas
from kernels_pallas.mla import decode_gpu, decode_tpu
from zebra_jax.ops import mla as ops_mla

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")


def decode_f64(q_latent, q_rope, cache, lengths, scale):
  ql, qr, c = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q_latent, q_rope, cache))
  R = ql.shape[-1]
  s = (np.einsum("bhr,bsr->bhs", ql, c[..., :R]) + np.einsum("bhk,bsk->bhs", qr, c[..., R:])) * scale
  valid = np.arange(c.shape[1])[None, None, :] < np.asarray(lengths)[:, None, None]
  s = np.where(valid, s, -np.inf)
  m = s.max(-1, keepdims=True)
  p = np.where(valid, np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
  den = p.sum(-1, keepdims=True)
  p = p / np.where(den > 0, den, 1.0)
  return np.einsum("bhs,bsr->bhr", p, c[..., :R])


def rel_err(out, ref):
  out = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  assert np.all(np.isfinite(out)), "non-finite output"
  return np.linalg.norm(out - ref) / np.linalg.norm(ref)


def make(rng, B, H, R, K, S, dtype):
  ql = jnp.asarray(rng.standard_normal((B, H, R)), dtype)
  qr = jnp.asarray(rng.standard_normal((B, H, K)), dtype)
  cache = jnp.asarray(rng.standard_normal((B, S, R + K)), dtype)
  return ql, qr, cache


# ------------------------------------------------------------------------------ TPU interpreter
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("S,block_s", [(37, 512), (101, 32)])
def test_tpu_kernel_interpret_matches_f64(dtype, tol, S, block_s):
  rng = np.random.default_rng([S, block_s, jnp.dtype(dtype).itemsize])
  B, H, R, K = 4, 8, 128, 32
  ql, qr, cache = make(rng, B, H, R, K, S, dtype)
  lengths = jnp.array([1, S, S // 2 + 3, 0], jnp.int32)
  scale = (R + K) ** -0.5 * 2.0  # sharper than uniform: errors in the softmax show
  out = decode_tpu.mla_decode_tpu(ql, qr, cache, lengths, scale=scale, block_s=block_s, interpret=True)
  assert out.shape == (B, H, R) and out.dtype == ql.dtype
  ref = decode_f64(ql, qr, cache, lengths, scale)
  assert np.all(np.asarray(out[3], np.float32) == 0.0), "length 0 must give zeros"
  assert rel_err(out, ref) < tol


def test_tpu_kernel_ignores_rows_past_length():
  """NaN in cache rows past the length (stale memory) must not leak into the result."""
  rng = np.random.default_rng(1)
  B, H, R, K, S = 2, 8, 64, 16, 48
  ql, qr, cache = make(rng, B, H, R, K, S, jnp.float32)
  lengths = jnp.array([5, 40], jnp.int32)
  poisoned = cache.at[0, 5:].set(jnp.nan).at[1, 40:].set(jnp.nan)
  out = kernels_pallas.mla_decode(ql, qr, poisoned, lengths, scale=0.2, interpret=True)
  assert rel_err(out, decode_f64(ql, qr, cache, lengths, 0.2)) < 1e-4


def test_public_entry_and_dispatch_on_cpu():
  rng = np.random.default_rng(2)
  ql, qr, cache = make(rng, 2, 4, 32, 16, 20, jnp.float32)
  lengths = jnp.array([7, 20], jnp.int32)
  ref = decode_f64(ql, qr, cache, lengths, 0.3)
  assert rel_err(kernels_pallas.mla_decode(ql, qr, cache, lengths, scale=0.3, interpret=True), ref) < 1e-4
  assert rel_err(kernels_pallas.mla_decode(ql, qr, cache, lengths, scale=0.3), ref) < 1e-4
  if jax.default_backend() == "cpu":
    with pytest.raises(NotImplementedError, match="cpu"):
      kernels_pallas.mla_decode(ql, qr, cache, lengths, scale=0.3, impl="pallas")
    with pytest.raises(NotImplementedError, match="cpu"):
      ops_mla.mla_decode(ql, qr, cache, lengths, scale=0.3, impl="pallas")
  with pytest.raises(ValueError, match="impl"):
    kernels_pallas.mla_decode(ql, qr, cache, lengths, scale=0.3, impl="triton")
  with pytest.raises(ValueError, match="cache must have shape"):
    decode_tpu.mla_decode_tpu(ql, qr, cache[..., :-1], lengths, scale=0.3, interpret=True)


def test_gpu_supports_names_the_limit():
  rng = np.random.default_rng(3)
  ql, qr, cache = make(rng, 1, 65, 128, 32, 8, jnp.bfloat16)
  assert "heads" in decode_gpu.supports(ql, qr, cache)
  ql, qr, cache = make(rng, 1, 8, 512, 64, 8, jnp.bfloat16)
  assert "row width" in decode_gpu.supports(ql, qr, cache)
  ql, qr, cache = make(rng, 1, 8, 128, 32, 8, jnp.float32)
  assert "dtype" in decode_gpu.supports(ql, qr, cache)


def test_split_combine_matches_f64():
  """The XLA merge of per-split partial softmaxes (used by the GPU kernel), empty splits included."""
  rng = np.random.default_rng(4)
  B, P, H, C = 2, 3, 4, 8
  acc = rng.standard_normal((B, P, H, C))
  m = rng.standard_normal((B, P, H)) * 3
  m[0, 2] = -np.inf  # an empty split
  lsum = rng.uniform(0.5, 2.0, (B, P, H))
  lsum[0, 2] = 0.0
  w = np.where(np.isfinite(m), np.exp2(m - m.max(1, keepdims=True)), 0.0)
  ref = (w[..., None] * acc).sum(1) / (w * lsum).sum(1)[..., None]
  out = decode_gpu.combine_splits(
    jnp.asarray(acc, jnp.float32), jnp.asarray(m, jnp.float32), jnp.asarray(lsum, jnp.float32)
  )
  assert rel_err(out, ref) < 1e-5
  empty = decode_gpu.combine_splits(
    jnp.zeros((1, 2, H, C)), jnp.full((1, 2, H), -jnp.inf), jnp.zeros((1, 2, H))
  )
  assert np.all(np.asarray(empty) == 0.0)


# ----------------------------------------------------------------------- TPU ahead-of-time compile
@pytest.mark.parametrize("topology", ["v5e:2x2", "v5p:2x2x1", "v6e:2x2"])
def test_tpu_kernel_compiles_ahead_of_time(topology):
  pytest.importorskip("libtpu", reason="ahead-of-time TPU compilation needs the tpu-aot extra")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu
  from jax.experimental import topologies

  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])
  sd = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  for B, H, R, K, S, dt in [
    (64, 32, 128, 32, 8192, jnp.bfloat16),  # Zebra-1B layers
    (64, 32, 160, 64, 32768, jnp.bfloat16),  # Zebra-8B layers
    (4, 9, 32, 32, 1001, jnp.float32),
  ]:  # SmolLM2 heads, odd s, fp32
    fn = jax.jit(lambda a, b, c, l: decode_tpu.mla_decode_tpu(a, b, c, l, scale=0.1))
    compiled = fn.lower(
      sd((B, H, R), dt), sd((B, H, K), dt), sd((B, S, R + K), dt), sd((B,), jnp.int32)
    ).compile()
    assert compiled.memory_analysis() is not None


# ------------------------------------------------------------------------------------- GPU kernel
@on_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
  "B,H,R,K,S,block_s,stages,splits",
  [
    (4, 32, 128, 32, 1001, 64, 4, None),  # Zebra-1B layer, odd s
    (3, 32, 160, 64, 777, 128, 3, 3),  # Zebra-8B layer, explicit splits
    (5, 9, 32, 32, 64, 64, 2, 1),  # SmolLM2 heads, one block
    (2, 64, 192, 64, 4100, 64, 3, 4),  # 64 heads, 256-wide rows
  ],
)
def test_gpu_kernel_matches_f64(dtype, B, H, R, K, S, block_s, stages, splits):
  rng = np.random.default_rng([B, H, R, S])
  ql, qr, cache = make(rng, B, H, R, K, S, dtype)
  lengths = jnp.asarray(np.r_[[1, S], rng.integers(1, S + 1, B - 2)][:B], jnp.int32)
  scale = (R + K) ** -0.5 * 2.0
  out = decode_gpu.mla_decode_gpu(
    ql, qr, cache, lengths, scale=scale, block_s=block_s, num_stages=stages, num_splits=splits
  )
  assert out.shape == (B, H, R) and out.dtype == ql.dtype
  assert rel_err(out, decode_f64(ql, qr, cache, lengths, scale)) < 1e-2


@on_gpu
@pytest.mark.gpu
def test_gpu_dispatch_uses_kernel_and_zero_length():
  rng = np.random.default_rng(7)
  ql, qr, cache = make(rng, 3, 32, 128, 32, 300, jnp.bfloat16)
  lengths = jnp.array([0, 300, 17], jnp.int32)
  ref = decode_f64(ql, qr, cache, lengths, 0.1)
  for out in (
    kernels_pallas.mla_decode(ql, qr, cache, lengths, scale=0.1, impl="pallas"),
    ops_mla.mla_decode(ql, qr, cache, lengths, scale=0.1, impl="pallas"),
  ):
    assert np.all(np.asarray(out[0], np.float32) == 0.0)
    assert rel_err(out[1:], ref[1:]) < 1e-2
  # float32 is outside the GPU kernel: "auto" runs the reference, "pallas" says why not.
  ql32, qr32, c32 = (x.astype(jnp.float32) for x in (ql, qr, cache))
  assert rel_err(ops_mla.mla_decode(ql32, qr32, c32, lengths, scale=0.1)[1:], ref[1:]) < 1e-4
  with pytest.raises(NotImplementedError, match="dtype"):
    ops_mla.mla_decode(ql32, qr32, c32, lengths, scale=0.1, impl="pallas")
