"""Our Pallas GPU flash attention (kernels_pallas/attention/flash_gpu.py, Triton lowering).

Against a float64 numpy forward and backward written here (not the kernel's own code):
* always (CPU): the kernels in the generic Pallas interpreter (`interpret=True`), output and
  dq / dk / dv, fp32 rel err < 1e-4 and bf16 < 1e-2, at odd lengths, qk head dim != v head dim
  (non-powers of two that split into segments, and ones that need padding to 16), GQA, unequal
  q / kv blocks; the lowering of every preset to Triton IR for CUDA (`lowering_platforms=("cuda",)`
  on a CPU: catches what the Triton lowering rejects, e.g. non-power-of-two tensors, before a GPU
  sees it); the dispatch table; the config helpers.
* on a CUDA GPU only (`-m gpu`, run on the device machine): the real kernels, every preset, bf16 /
  fp16 / fp32, and the ops dispatch picking ours for impl="pallas".
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.attention import flash_gpu
from zebra_jax.ops import attention as ops_attention

ON_GPU = jax.default_backend() == "gpu"
on_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


def reference_f64(q, k, v, do, scale):
  """Causal GQA attention and its (dq, dk, dv) in float64 numpy, from the softmax Jacobian."""
  q, k, v, do = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v, do))
  B, T, H, _ = q.shape
  G = k.shape[2]
  group = np.arange(H) // (H // G)  # kv head read by each query head
  kh, vh = k[:, :, group], v[:, :, group]  # (B, T, H, .)
  logits = np.einsum("bqhd,bkhd->bhqk", q, kh) * scale
  visible = np.arange(T)[:, None] >= np.arange(T)[None, :]
  logits = np.where(visible, logits, -np.inf)
  w = np.exp(logits - logits.max(axis=-1, keepdims=True))
  w = w / w.sum(axis=-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", w, vh)
  dw = np.einsum("bqhd,bkhd->bhqk", do, vh)
  dlogits = w * (dw - np.sum(dw * w, axis=-1, keepdims=True))
  dq = scale * np.einsum("bhqk,bkhd->bqhd", dlogits, kh)
  dk_h = scale * np.einsum("bhqk,bqhd->bkhd", dlogits, q)
  dv_h = np.einsum("bhqk,bqhd->bkhd", w, do)
  dk, dv = np.zeros_like(k), np.zeros_like(v)
  np.add.at(dk, (slice(None), slice(None), group), dk_h)  # sum over each group's query heads
  np.add.at(dv, (slice(None), slice(None), group), dv_h)
  return out, (dq, dk, dv)


def rel_err(x, ref):
  x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
  assert np.all(np.isfinite(x)), "non-finite values"
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def inputs(seed, B, T, H, G, K, V, dtype):
  rng = np.random.default_rng(seed)
  return [
    jnp.asarray(rng.standard_normal(s), dtype)
    for s in ((B, T, H, K), (B, T, G, K), (B, T, G, V), (B, T, H, V))
  ]


def check(fn, q, k, v, do, scale, tol):
  @jax.jit
  def fwd_bwd(q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(do)

  out, grads = fwd_bwd(q, k, v, do)
  ref_out, ref_grads = reference_f64(q, k, v, do, scale)
  assert out.shape == ref_out.shape and out.dtype == q.dtype
  assert all(g.shape == x.shape and g.dtype == x.dtype for g, x in zip(grads, (q, k, v)))
  errs = [rel_err(out, ref_out)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]
  assert max(errs) < tol, f"rel errors out/dq/dk/dv = {errs}"


def test_reference_f64_matches_jax_autodiff():
  """The test's own oracle against jax autodiff of plain float64-free jnp attention (sanity)."""
  q, k, v, do = inputs(0, 1, 7, 4, 2, 6, 5, jnp.float32)

  def attn(q, k, v):
    kh, vh = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, kh, precision="highest") * 0.4
    s = jnp.where(jnp.tril(jnp.ones((7, 7), bool)), s, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), vh, precision="highest")

  out, vjp = jax.vjp(attn, q, k, v)
  ref_out, ref_grads = reference_f64(q, k, v, do, 0.4)
  assert rel_err(out, ref_out) < 1e-5
  assert max(rel_err(g, r) for g, r in zip(vjp(do), ref_grads)) < 1e-5


# ---------------------------------------------------------------------------------- interpreter
CASES = [
  # dtype, tol, (B, T, H, G, K, V), config: odd T, GQA 4/2, qk 96 = 64 + 32 segments, v 64,
  # q blocks twice the kv blocks forward and the other way round backward
  (jnp.float32, 1e-4, (1, 45, 4, 2, 96, 64), "fwd=32x16x4x1,dkv=16x32x4x1,dq=16x32x4x1"),
  # batch 2, qk 24 padded to 32 and v 8 padded to 16, MQA (one kv head), square blocks
  (jnp.float32, 1e-4, (2, 37, 2, 1, 24, 8), "fwd=16x16x4x1,dkv=16x16x4x1,dq=16x16x4x1"),
  # bf16, qk 48 = 32 + 16 and v 80 = 64 + 16 (v wider than qk), kv blocks twice the q blocks
  (jnp.bfloat16, 1e-2, (1, 50, 3, 1, 48, 80), "fwd=16x32x4x1,dkv=32x16x4x1,dq=16x32x4x1"),
]


@pytest.mark.parametrize("dtype,tol,shape,config", CASES)
def test_interpret_fwd_bwd(dtype, tol, shape, config):
  B, T, H, G, K, V = shape
  q, k, v, do = inputs(list(shape), B, T, H, G, K, V, dtype)
  scale = K**-0.5
  fn = lambda q, k, v: flash_gpu.flash_attention_gpu(q, k, v, scale=scale, config=config, interpret=True)
  check(fn, q, k, v, do, scale, tol)


def test_interpret_default_config_short_sequence():
  """Default config (F32 preset) with blocks clipped to a 19-token sequence; one query head."""
  q, k, v, do = inputs(3, 1, 19, 1, 1, 16, 32, jnp.float32)
  fn = lambda q, k, v: flash_gpu.flash_attention_gpu(q, k, v, scale=0.7, interpret=True)
  check(fn, q, k, v, do, 0.7, 1e-4)


# ------------------------------------------------------------------------ Triton lowering on CPU
@pytest.mark.parametrize("preset", list(flash_gpu.PRESETS))
def test_presets_lower_to_triton_for_cuda(preset):
  """Forward + both backward kernels lower to Triton IR for CUDA (no GPU needed): the Pallas
  Triton lowering rejects e.g. non-power-of-two tensors and unsupported primitives here."""
  dtype = jnp.float32 if preset == "F32" else jnp.bfloat16
  sd = lambda s: jax.ShapeDtypeStruct(s, dtype)
  loss = lambda q, k, v: (
    flash_gpu.flash_attention_gpu(q, k, v, scale=0.1, config=preset).astype(jnp.float32).sum()
  )
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  # DeepSeek-style 192/128 (two segments each side) with GQA 32/8 at an odd length.
  traced = grad.trace(sd((1, 1000, 32, 192)), sd((1, 1000, 8, 192)), sd((1, 1000, 8, 128)))
  text = traced.lower(lowering_platforms=("cuda",)).as_text()
  calls = re.findall(r"custom_call @([^(\s]+)", text)
  assert len([c for c in calls if "triton" in c]) == 3, calls  # fwd, dK/dV, dQ


# ----------------------------------------------------------------------------- helpers, dispatch
def test_head_segments():
  assert flash_gpu.head_segments(64) == ((0, 64),)
  assert flash_gpu.head_segments(96) == ((0, 64), (64, 32))
  assert flash_gpu.head_segments(192) == ((0, 128), (128, 64))
  assert flash_gpu.head_segments(112) == ((0, 64), (64, 32), (96, 16))
  for D in range(16, 257, 16):
    segs = flash_gpu.head_segments(D)
    assert sum(n for _, n in segs) == D and all(n >= 16 and n & (n - 1) == 0 for _, n in segs)
  with pytest.raises(ValueError, match="multiple of 16"):
    flash_gpu.head_segments(24)


def test_config_parsing_and_fit():
  cfg = flash_gpu.parse_config("fwd=128x64x4x3,dkv=64x128x8x2,dq=128x32x4x4")
  assert cfg.dkv == flash_gpu.Tiles(64, 128, 8, 2) and cfg.period == 128
  assert flash_gpu.parse_config(cfg.spec()) == cfg
  assert flash_gpu.parse_config("A") == flash_gpu.PRESETS["A"]
  assert cfg.fit(19).fwd == flash_gpu.Tiles(32, 32, 4, 3) and cfg.fit(19).period == 32
  with pytest.raises(ValueError, match="powers of two"):
    flash_gpu.parse_config("fwd=96x64x4x3,dkv=64x64x4x3,dq=64x64x4x3")
  with pytest.raises(ValueError, match="must give"):
    flash_gpu.parse_config("fwd=64x64x4x3")
  assert flash_gpu.default_config(96, 64, jnp.float32) == flash_gpu.PRESETS["F32"]


def test_supports_names_the_problem():
  s = lambda *shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dt)
  assert flash_gpu.supports(s(2, 64, 8, 192), s(2, 64, 2, 192), s(2, 64, 2, 128)) is None
  assert "multiple of kv heads" in flash_gpu.supports(s(1, 8, 6, 64), s(1, 8, 4, 64), s(1, 8, 4, 64))
  assert "at most 256" in flash_gpu.supports(s(1, 8, 2, 320), s(1, 8, 2, 320), s(1, 8, 2, 64))
  assert "dtype" in flash_gpu.supports(*(s(1, 8, 2, 64, dt=jnp.int8),) * 3)
  assert "self-attention" in flash_gpu.supports(s(1, 8, 2, 64), s(1, 9, 2, 64), s(1, 9, 2, 64))
  with pytest.raises(ValueError, match="flash_attention_gpu: .*head dim"):
    flash_gpu.flash_attention_gpu(
      jnp.zeros((1, 8, 2, 64)), jnp.zeros((1, 8, 2, 32)), jnp.zeros((1, 8, 2, 64)), scale=1.0, interpret=True
    )


def test_dispatch_table_registers_ours_and_cudnn_on_gpu():
  kernels = ops_attention.KERNELS
  assert kernels.kernels[("pallas", "gpu")].fn is flash_gpu.flash_attention_gpu
  assert kernels.kernels[("cudnn", "gpu")].fn.__name__ == "cudnn_attention"
  # "auto" on GPU only lists kernels verified on a GPU, each of them registered.
  for name in kernels.auto["gpu"]:
    assert "gpu" in kernels.verified.get(name, ())
    assert (name, "gpu") in kernels.kernels
  bf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  zebra = (bf(2, 2048, 32, 64), bf(2, 2048, 8, 64), bf(2, 2048, 8, 64))
  assert kernels.auto_impl("gpu", *zebra) == kernels.auto["gpu"][0]
  # float32 is outside cuDNN: auto takes the next verified kernel in the order, else the reference.
  fp32 = (f32(1, 33, 2, 16), f32(1, 33, 1, 16), f32(1, 33, 1, 8))
  expect = next(
    (n for n in kernels.auto["gpu"] if kernels.kernels[(n, "gpu")].supports(*fp32) is None), "reference"
  )
  assert kernels.auto_impl("gpu", *fp32) == expect == "pallas"
  odd = (bf(1, 1000, 6, 128), bf(1, 1000, 2, 128), bf(1, 1000, 2, 128))  # T % 64 != 0: not cuDNN
  assert kernels.auto_impl("gpu", *odd) == "pallas"
  assert kernels.auto_impl("cpu", *zebra) == "reference"


# ------------------------------------------------------------------------------- real GPU kernel
GPU_CASES = [
  (jnp.bfloat16, 1e-2, (2, 300, 8, 2, 64, 64)),  # Zebra-1B MLA heads (GQA 4:1), odd T
  (jnp.bfloat16, 1e-2, (1, 1000, 6, 2, 128, 128)),  # Zebra-3B MLA heads, several blocks
  (jnp.bfloat16, 1e-2, (1, 200, 4, 4, 192, 128)),  # DeepSeek-style 128 + 64 / 128
  (jnp.bfloat16, 1e-2, (1, 257, 8, 2, 96, 64)),  # 64 + 32 / 64, GQA
  (jnp.float16, 1e-2, (1, 130, 4, 1, 40, 24)),  # padded head dims (48 / 32), fp16
  (jnp.float32, 1e-4, (1, 100, 4, 2, 96, 64)),  # fp32 (IEEE dots, F32 preset)
  (jnp.float32, 1e-4, (1, 70, 2, 1, 192, 128)),
]


@on_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol,shape", GPU_CASES)
def test_gpu_kernel_default_config(dtype, tol, shape):
  B, T, H, G, K, V = shape
  q, k, v, do = inputs(list(shape), B, T, H, G, K, V, dtype)
  fn = lambda q, k, v: flash_gpu.flash_attention_gpu(q, k, v, scale=K**-0.5)
  check(fn, q, k, v, do, K**-0.5, tol)


# Each preset at the head sizes it is meant for (B's 128 x 128 tiles are for head dims <= 128; at
# 192/128 it may exceed shared memory, which the benchmark records as an error row).
PRESET_CASES = [(p, (1, 384, 8, 2, 128, 128)) for p in ("A", "B", "C", "D")] + [
  (p, (1, 512, 4, 1, 192, 128)) for p in ("A", "C", "D")
]


@on_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("preset,shape", PRESET_CASES)
def test_gpu_every_preset(preset, shape):
  """Each block configuration the benchmark may pick compiles and matches."""
  B, T, H, G, K, V = shape
  q, k, v, do = inputs(list(shape), B, T, H, G, K, V, jnp.bfloat16)
  fn = lambda q, k, v: flash_gpu.flash_attention_gpu(q, k, v, scale=0.1, config=preset)
  check(fn, q, k, v, do, 0.1, 1e-2)


@on_gpu
@pytest.mark.gpu
def test_gpu_dispatch_pallas_is_ours_and_cudnn_stays():
  q, k, v, do = inputs(9, 1, 256, 8, 2, 192, 128, jnp.bfloat16)
  for impl in ("pallas", "cudnn", "auto"):
    fn = lambda q, k, v, impl=impl: ops_attention.causal_attention(q, k, v, scale=0.1, impl=impl)
    check(fn, q, k, v, do, 0.1, 1e-2)
  # impl="pallas" is our kernel (bitwise: same deterministic kernel), not cuDNN.
  ours = jax.jit(lambda q, k, v: flash_gpu.flash_attention_gpu(q, k, v, scale=0.1))(q, k, v)
  dispatched = jax.jit(lambda q, k, v: ops_attention.causal_attention(q, k, v, scale=0.1, impl="pallas"))(
    q, k, v
  )
  np.testing.assert_array_equal(np.asarray(dispatched, np.float32), np.asarray(ours, np.float32))
