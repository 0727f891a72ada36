"""GQA decode attention over [v | k] cache rows (`ops.attention.decode_attention`) against a float64
numpy GQA attention written here, with k and v as separate arrays.

* the XLA path (`kv_rows_attention_reference`), T = 1 and T > 1 with per-query lengths, lengths 0;
* the TPU latent kernel through the adapter, in the Pallas TPU interpreter (ragged lengths, several
  blocks), and ahead-of-time compiled for v5e / v5p / v6e when libtpu is importable;
* the dispatch: which impl "auto" takes per backend, what "pallas" refuses;
* the GPU latent kernel through the adapter: only on a GPU backend (run on the device machine); a
  whole model decoding with it (impl="pallas") is `tests/test_models_gpu.py`'s incremental test.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.attention import decode_latent
from zebra_jax.ops import attention as ops_attention
from zebra_jax.ops.dispatch import dispatch_backend

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")


def gqa_f64(q_BTHK, k_BGSK, v_BGSK, kv_len_BT, scale):
  """softmax(q k^T scale) v over the first kv_len[b, t] keys, head h on kv head h // (H / G)."""
  q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q_BTHK, k_BGSK, v_BGSK))
  B, T, H, K = q.shape
  G = k.shape[1]
  k_h, v_h = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)  # (B, H, S, .)
  s = np.einsum("bthk,bhsk->bths", q, k_h) * scale
  valid = np.arange(k.shape[2])[None, None, None, :] < np.asarray(kv_len_BT)[:, :, None, None]
  s = np.where(valid, s, -np.inf)
  m = s.max(-1, keepdims=True)
  p = np.where(valid, np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
  den = p.sum(-1, keepdims=True)
  return np.einsum("bths,bhsv->bthv", p / np.where(den > 0, den, 1.0), v_h)


def rel_err(out, ref):
  out = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  assert np.all(np.isfinite(out)), "non-finite output"
  return np.linalg.norm(out - ref) / np.linalg.norm(ref)


def make(rng, B, T, H, G, K, S, dtype):
  q = jnp.asarray(rng.standard_normal((B, T, H, K)), dtype)
  k = jnp.asarray(rng.standard_normal((B, G, S, K)), dtype)
  v = jnp.asarray(rng.standard_normal((B, G, S, K)), dtype)
  return q, k, v, jnp.concatenate([v, k], axis=-1)  # the cache's [v | k] rows


@pytest.mark.parametrize("T", [1, 3])
def test_xla_rows_attention_matches_f64(T):
  rng = np.random.default_rng(T)
  B, H, G, K, S = 4, 6, 2, 16, 23
  q, k, v, rows = make(rng, B, T, H, G, K, S, jnp.float32)
  kv_len = jnp.asarray([[1, 2, 3][:T], [S] * T, [0] * T, [9, 10, 11][:T]], jnp.int32)
  scale = K**-0.5 * 2.0  # sharper than uniform: errors in the softmax show
  out = ops_attention.kv_rows_attention_reference(q, rows, kv_len, scale=scale)
  ref = gqa_f64(q, k, v, kv_len, scale)
  assert out.shape == (B, T, H, K) and out.dtype == q.dtype
  assert np.all(np.asarray(out[2]) == 0.0)  # no row: zeros, not NaN
  assert rel_err(out, ref) < 1e-5
  if T == 1:  # the op's XLA path is the same computation
    got = ops_attention.decode_attention(q[:, 0], rows, kv_len[:, 0], scale=scale, impl="reference")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(out[:, 0]))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("S", [37, 1100])  # one block; three blocks (512 rows each), the last ragged
def test_tpu_latent_kernel_in_the_interpreter_matches_f64(dtype, tol, S):
  rng = np.random.default_rng([S, jnp.dtype(dtype).itemsize])
  B, H, G, K = 3, 9, 3, 64  # SmolLM2's heads: 3 query heads per kv head
  q, k, v, rows = make(rng, B, 1, H, G, K, S, dtype)
  lengths = jnp.asarray([1, S, S // 2 + 3], jnp.int32)
  scale = K**-0.5 * 2.0
  out = ops_attention.decode_attention(q[:, 0], rows, lengths, scale=scale, impl="pallas", interpret=True)
  assert out.shape == (B, H, K) and out.dtype == dtype
  assert rel_err(out, gqa_f64(q, k, v, lengths[:, None], scale)[:, 0]) < tol


def test_tpu_latent_kernel_ignores_rows_past_the_length():
  rng = np.random.default_rng(0)
  q, k, v, rows = make(rng, 2, 1, 4, 2, 32, 40, jnp.float32)
  lengths = jnp.asarray([0, 17], jnp.int32)
  poisoned = rows.at[:, :, 17:].set(jnp.nan)  # stale rows past every length
  out = decode_latent.decode_attention_tpu(q[:, 0], poisoned, lengths, scale=0.2, interpret=True)
  assert np.all(np.asarray(out[0]) == 0.0)
  assert rel_err(out[1], gqa_f64(q, k, v, lengths[:, None], 0.2)[1, 0]) < 1e-4


def test_dispatch_per_backend():
  q = jnp.zeros((2, 9, 64), jnp.bfloat16)
  rows = jnp.zeros((2, 3, 256, 128), jnp.bfloat16)
  lengths = jnp.zeros((2,), jnp.int32)
  K = ops_attention.DECODE_KERNELS
  assert K.auto_impl("tpu", q, rows, lengths) == "pallas"
  assert K.auto_impl("cpu", q, rows, lengths) == "reference"
  # registered for the GPU, but out of "auto" until the GPU test below has passed on a GPU
  assert ("pallas", "gpu") in K.kernels and K.auto_impl("gpu", q, rows, lengths) == "reference"
  assert set(K.auto.get("gpu", ())) <= set(b for b, bs in K.verified.items() if "gpu" in bs)
  # what the GPU kernel takes: bf16 / fp16 rows of at most 256 columns, at most 64 heads per group
  assert decode_latent.supports(q, rows, lengths) is None
  assert "dtype" in decode_latent.supports(q, rows.astype(jnp.float32), lengths)
  wide_q, wide_rows = jnp.zeros((2, 9, 160), jnp.bfloat16), jnp.zeros((2, 3, 256, 320), jnp.bfloat16)
  assert "row width" in decode_latent.supports(wide_q, wide_rows, lengths)
  with dispatch_backend("cpu"), pytest.raises(NotImplementedError, match="no Pallas decode attention kernel"):
    ops_attention.decode_attention(q, rows, lengths, scale=0.1, impl="pallas")
  with pytest.raises(ValueError, match="impl='flash'"):
    ops_attention.decode_attention(q, rows, lengths, scale=0.1, impl="flash")


@pytest.mark.parametrize("topology", ["v5e:2x2", "v5p:2x2x1", "v6e:2x2"])
def test_tpu_latent_kernel_compiles_ahead_of_time(topology):
  pytest.importorskip("libtpu", reason="ahead-of-time TPU compilation needs the tpu-aot extra")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu
  from jax.experimental import topologies

  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])
  sd = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  for B, H, G, K, S in [(512, 9, 3, 64, 1536), (8, 32, 8, 128, 8192)]:  # SmolLM2 samples; Llama-3.1-8B
    fn = jax.jit(lambda q, r, n: decode_latent.decode_attention_tpu(q, r, n, scale=0.1))
    compiled = fn.lower(
      sd((B, H, K), jnp.bfloat16), sd((B, G, S, 2 * K), jnp.bfloat16), sd((B,), jnp.int32)
    ).compile()
    assert compiled.memory_analysis() is not None


# ------------------------------------------------------------------------------------- GPU kernel
@on_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
  "B,H,G,K,S",
  [(5, 9, 3, 64, 1001), (3, 32, 8, 128, 777), (2, 4, 4, 64, 64)],  # SmolLM2, Llama-3.1-8B, MHA
)
def test_gpu_latent_kernel_matches_f64(dtype, B, H, G, K, S):
  rng = np.random.default_rng([B, H, G, S])
  q, k, v, rows = make(rng, B, 1, H, G, K, S, dtype)
  lengths = jnp.asarray(np.r_[[1, S], rng.integers(1, S + 1, B - 2)][:B], jnp.int32)
  scale = K**-0.5 * 2.0
  out = ops_attention.decode_attention(q[:, 0], rows, lengths, scale=scale, impl="pallas")
  assert out.shape == (B, H, K) and out.dtype == dtype
  assert rel_err(out, gqa_f64(q, k, v, lengths[:, None], scale)[:, 0]) < 1e-2


def test_the_bench_family_runs_and_checks_its_implementations_on_cpu(tmp_path):
  from zebra_jax.bench import decode_attention as bench

  text = bench.main(["--shapes", "tiny", "--iters", "2", "--out", str(tmp_path / "t.md")])
  assert (tmp_path / "t.md").read_text() == text
  rows = bench.run(("tiny",), iters=2)
  assert [r["impl"] for r in rows] == ["xla", "xla-kv"]  # no kernel row on a CPU
  for r in rows:
    assert "error" not in r and r["rel err"] < 1e-2 and r["time (us)"] > 0
  assert rows[0]["vs xla"] == "1.00x"
