"""Benchmark family "mla": absorbed MLA decode against the HBM copy ceiling and an XLA decode.

    python -m zebra_jax.bench.mla [--contexts 8192,16384,32768] [--batch 64] [--out table.md]
    (or `scripts/bench.py kernels --family mla`)

Rows: one per (shape, implementation). GB/s counts the bytes of the cache read once
(sum of lengths x (r_kv + d_r) x itemsize); "vs copy" divides by the measured HBM bandwidth of a
2 GiB jnp elementwise copy (bytes read + written) in the same run; "vs XLA" is the XLA decode's time
over ours. The XLA peers: "xla-ref" is `mla_decode_reference` under jit (float32 upcast, the oracle),
"xla-bf16" the same math with bf16 operands and float32 accumulation.
Timing: median device time over repeats through CUPTI (`jax.experimental.mosaic.gpu.profiler`),
falling back to wall clock around block_until_ready.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from kernels_pallas.mla import decode_gpu, decode_tpu
from kernels_pallas.mla.reference import mla_decode_reference

# (name, heads, r_kv, d_r): the Zebra MLA layers (Llama-3.2-1B / 3.1-8B heads).
SHAPES = (("zebra-1b", 32, 128, 32), ("zebra-8b", 32, 160, 64))
GPU_VARIANTS = ((64, 4), (64, 6), (128, 2), (128, 3))  # (block_s, num_stages)


# -------------------------------------------------------------------------------- timing helpers
def time_ms(fn, *args, iters: int = 20) -> float:
  """Median device milliseconds of fn(*args) (fn already jitted and warmed up by the caller)."""
  jax.block_until_ready(fn(*args))
  if jax.default_backend() == "gpu":
    try:
      from jax.experimental.mosaic.gpu import profiler

      _, times = profiler.measure(fn, iterations=iters)(*args)
      if times and all(t is not None for t in times):
        return float(statistics.median(times))
    except Exception:  # CUPTI unavailable: wall clock below
      pass
  samples = []
  for _ in range(max(3, iters // 4)):
    t0 = time.perf_counter()
    for _ in range(4):
      out = fn(*args)
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - t0) * 1e3 / 4)
  return float(statistics.median(samples))


def kernel_breakdown(fn, *args) -> list[tuple[str, float]]:
  """[(kernel name, ms)] of one call on GPU through CUPTI (diagnostics; empty elsewhere)."""
  try:
    from jax.experimental.mosaic.gpu import profiler

    _, kernels = profiler.measure(fn, aggregate=False)(*args)
    return list(kernels or [])
  except Exception:
    return []


def hbm_copy_gbps(gib: float = 2.0) -> float:
  """JAX elementwise copy of a `gib` GiB bf16 array: (bytes read + written) / time."""
  n = int(gib * 2**30) // 2
  x = jnp.ones((n,), jnp.bfloat16)
  f = jax.jit(lambda a: a + jnp.ones((), a.dtype))
  ms = time_ms(f, x)
  del x
  return 2 * n * 2 / (ms * 1e-3) / 1e9


def torch_copy_gbps(gib: float = 2.0) -> float | None:
  """torch device-to-device copy_ of a `gib` GiB bf16 tensor, (read + written) / time; None without
  a CUDA torch."""
  try:
    import torch
  except ImportError:
    return None
  if not torch.cuda.is_available():
    return None
  n = int(gib * 2**30) // 2
  src = torch.ones(n, dtype=torch.bfloat16, device="cuda")
  dst = torch.empty_like(src)
  for _ in range(3):
    dst.copy_(src)
  times = []
  for _ in range(10):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    dst.copy_(src)
    b.record()
    torch.cuda.synchronize()
    times.append(a.elapsed_time(b))
  del src, dst
  torch.cuda.empty_cache()
  return 2 * n * 2 / (statistics.median(times) * 1e-3) / 1e9


def versions() -> str:
  import flax
  import jaxlib

  dev = jax.devices()[0]
  return (
    f"device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
    f"jaxlib {jaxlib.__version__}, "
    f"flax {flax.__version__}, python {platform.python_version()}, "
    f"{datetime.date.today().isoformat()}"
  )


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    cells = []
    for c in columns:
      v = r.get(c, "")
      cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------- the family
def _xla_bf16_decode(q_latent, q_rope, cache, lengths, *, scale):
  """Absorbed decode in XLA with the cache's dtype as matmul operands (f32 accumulation)."""
  R = q_latent.shape[-1]
  q = jnp.concatenate([q_latent, q_rope], -1).astype(cache.dtype)
  s = jnp.einsum("bhc,bsc->bhs", q, cache, preferred_element_type=jnp.float32) * scale
  valid = jnp.arange(cache.shape[1])[None, None, :] < lengths[:, None, None]
  p = jax.nn.softmax(jnp.where(valid, s, -jnp.inf), axis=-1)
  out = jnp.einsum("bhs,bsr->bhr", p.astype(cache.dtype), cache[..., :R], preferred_element_type=jnp.float32)
  return out.astype(q_latent.dtype)


def run(
  contexts=(8192, 16384, 32768),
  batch: int = 64,
  iters: int = 20,
  seed: int = 0,
  shapes=SHAPES,
  variants=GPU_VARIANTS,
) -> tuple[list[dict], dict]:
  """Measures every (shape, context, implementation); returns (rows, ceilings)."""
  backend = jax.default_backend()
  ceilings = {"torch_copy_gbps": torch_copy_gbps(), "jax_copy_gbps": hbm_copy_gbps()}
  copy_bw = ceilings["jax_copy_gbps"]
  rows = []
  key = jax.random.key(seed)
  for name, H, R, K in shapes:
    for S in contexts:
      k1, k2, k3, key = jax.random.split(key, 4)
      dt = jnp.bfloat16
      ql = jax.random.normal(k1, (batch, H, R), dt)
      qr = jax.random.normal(k2, (batch, H, K), dt)
      cache = jax.random.normal(k3, (batch, S, R + K), dt)
      lengths = jnp.full((batch,), S, jnp.int32)
      scale = (R + K) ** -0.5
      nbytes = batch * S * (R + K) * 2
      ref_fn = jax.jit(functools.partial(mla_decode_reference, scale=scale))
      ref = ref_fn(ql, qr, cache, lengths).astype(jnp.float32)
      impls = [("xla-ref", ref_fn), ("xla-bf16", jax.jit(functools.partial(_xla_bf16_decode, scale=scale)))]
      if backend == "gpu":
        for bs, st in variants:
          impls.append(
            (
              f"pallas-mgpu bs{bs} st{st}",
              jax.jit(functools.partial(decode_gpu.mla_decode_gpu, scale=scale, block_s=bs, num_stages=st)),
            )
          )
      elif backend == "tpu":
        impls.append(("pallas-tpu", jax.jit(functools.partial(decode_tpu.mla_decode_tpu, scale=scale))))
      times = {}
      for impl, fn in impls:
        try:
          out = fn(ql, qr, cache, lengths).astype(jnp.float32)
          err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
          ms = time_ms(fn, ql, qr, cache, lengths, iters=iters)
        except Exception as e:  # a variant that does not fit is reported, not fatal
          rows.append(
            dict(
              shape=f"{name} b{batch} s{S}",
              impl=impl,
              error=type(e).__name__ + ": " + str(e).splitlines()[0][:120],
            )
          )
          continue
        times[impl] = ms
        if impl.startswith("pallas") and S == contexts[0]:
          print(
            f"# {name} s{S} {impl}: kernels",
            [(k[:40], round(t * 1e3, 1)) for k, t in kernel_breakdown(fn, ql, qr, cache, lengths)],
            flush=True,
          )
        rows.append(
          dict(shape=f"{name} b{batch} s{S}", impl=impl, ms=ms, gbps=nbytes / ms / 1e6, rel_err=err)
        )
      best_xla = min(times.get("xla-ref", math.inf), times.get("xla-bf16", math.inf))
      for r in rows:
        if r["shape"] == f"{name} b{batch} s{S}" and "ms" in r:
          r["vs_copy"] = r["gbps"] / copy_bw
          r["xla_over_this"] = best_xla / r["ms"]
      del ql, qr, cache
  return rows, ceilings


COLUMNS = ["shape", "impl", "ms", "gbps", "vs_copy", "xla_over_this", "rel_err", "error"]


def report(rows, ceilings) -> str:
  head = (
    "### kernels --family mla: absorbed MLA decode\n\n"
    f"bf16 cache, all lengths = context. {versions()}.\n"
    f"HBM copy: jax elementwise {ceilings['jax_copy_gbps']:.0f} GB/s"
    + (f", torch copy_ {ceilings['torch_copy_gbps']:.0f} GB/s" if ceilings.get("torch_copy_gbps") else "")
    + " (bytes read + written). gbps = cache bytes read once / time; vs_copy = gbps / jax copy;"
    " xla_over_this = fastest XLA decode time / this time.\n\n"
  )
  return head + markdown_table(rows, COLUMNS)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--contexts", default="8192,16384,32768")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--out", default=None, help="also write the markdown table here")
  a, _ = p.parse_known_args(argv)  # options of other families are ignored
  rows, ceilings = run(tuple(int(c) for c in a.contexts.split(",")), a.batch, a.iters)
  text = report(rows, ceilings)
  print(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text + "\n")
  return text


if __name__ == "__main__":
  main()
