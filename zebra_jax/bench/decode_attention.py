"""Benchmark family "decode_attention": one GQA decode step over the [v | k] cache, the latent decode
kernel (reads the rows below each length) against the XLA path (reads every allocated row).

    python -m zebra_jax.bench.decode_attention [--shapes samples,llama8b] [--iters 20] [--out table.md]
    (or `scripts/bench.py kernels --family decode_attention`)

Shapes: "samples" is the samples stage's teacher step (SmolLM2: 512 rows, 9 heads on 3 kv heads of
64, a 1,536-row cache, lengths spread from 130 to 1,536 as chat prompts plus answers are);
"llama8b" a Llama-3.1-8B layer (64 rows, 32 heads on 8 kv heads of 128, 8,192 rows, lengths
4,096-8,192). Rows per implementation: time, GB/s over the bytes of the written rows (sum of
lengths x 2 x head_dim x 2 bytes x kv heads), GB/s over the allocated cache, error against the
float32 reference, and "vs xla": the XLA path's time over the row's. Implementations: "xla" (the
decode path's default, `decode_attention(impl="reference")`), "xla-kv" (the same attention over separate
k / v arrays as the cache held them before the [v | k] layout: the layout's own cost) and, on a GPU,
"pallas" (`decode_attention_gpu`), on a TPU "pallas-tpu".
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.attention import decode_latent
from kernels_pallas.attention.reference import kv_rows_attention_reference
from zebra_jax.bench.mla import markdown_table, time_ms, versions
from zebra_jax.ops.attention import decode_attention

# name: (batch, heads, kv heads, head_dim, allocated rows, (shortest, longest) length)
SHAPES = {
  "samples": (512, 9, 3, 64, 1536, (130, 1536)),
  "llama8b": (64, 32, 8, 128, 8192, (4096, 8192)),
  "tiny": (4, 4, 2, 16, 64, (5, 64)),  # CPU smoke
}


def _xla_kv(q_BHK, k_BGSK, v_BGSK, lengths_B, *, scale):
  """The decode attention as it read separate k / v caches (models.attention.masked_attention)."""
  B, H, K = q_BHK.shape
  G, S = k_BGSK.shape[1:3]
  q = q_BHK.reshape(B, G, H // G, K)
  s = jnp.einsum("bgrk,bgsk->bgrs", q, k_BGSK, preferred_element_type=jnp.float32) * scale
  valid = jnp.arange(S)[None, None, None, :] < lengths_B[:, None, None, None]
  p = jax.nn.softmax(jnp.where(valid, s, -jnp.inf), axis=-1).astype(q.dtype)
  return jnp.einsum("bgrs,bgsv->bgrv", p, v_BGSK).reshape(B, H, -1)


def run(shapes=("samples", "llama8b"), iters: int = 20, seed: int = 0) -> list[dict]:
  backend = jax.default_backend()
  rows = []
  for name in shapes:
    B, H, G, K, S, (lo, hi) = SHAPES[name]
    rng = np.random.default_rng(seed)
    lengths = jnp.asarray(rng.integers(lo, hi + 1, B), jnp.int32)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    dt = jnp.bfloat16
    q = jax.random.normal(k1, (B, H, K), dt)
    k = jax.random.normal(k2, (B, G, S, K), dt)
    v = jax.random.normal(k3, (B, G, S, K), dt)
    cache = jnp.concatenate([v, k], -1)
    scale = K**-0.5
    written = int(jnp.sum(lengths)) * G * 2 * K * 2
    allocated = B * G * S * 2 * K * 2
    ref = jax.jit(functools.partial(kv_rows_attention_reference, scale=scale))(
      q[:, None].astype(jnp.float32), cache.astype(jnp.float32), lengths[:, None]
    )[:, 0]
    impls = [
      (
        "xla",
        jax.jit(functools.partial(decode_attention, scale=scale, impl="reference")),
        (q, cache, lengths),
      ),
      ("xla-kv", jax.jit(functools.partial(_xla_kv, scale=scale)), (q, k, v, lengths)),
    ]
    if backend == "gpu":
      impls.append(
        (
          "pallas",
          jax.jit(functools.partial(decode_latent.decode_attention_gpu, scale=scale)),
          (q, cache, lengths),
        )
      )
    elif backend == "tpu":
      impls.append(
        (
          "pallas-tpu",
          jax.jit(functools.partial(decode_latent.decode_attention_tpu, scale=scale)),
          (q, cache, lengths),
        )
      )
    times, shape_rows = {}, []
    for impl, fn, args in impls:
      shape = f"{name} b{B} h{H}/{G} d{K} s{S} len {lo}-{hi}"
      try:
        out = fn(*args).astype(jnp.float32)
        err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
        ms = time_ms(fn, *args, iters=iters)
      except Exception as e:  # reported, not fatal
        shape_rows.append(
          dict(shape=shape, impl=impl, error=type(e).__name__ + ": " + str(e).splitlines()[0][:120])
        )
        continue
      times[impl] = ms
      shape_rows.append(
        {
          "shape": shape,
          "impl": impl,
          "time (us)": ms * 1e3,
          "GB/s (written rows)": written / (ms * 1e-3) / 1e9,
          "GB/s (allocated)": allocated / (ms * 1e-3) / 1e9,
          "rel err": err,
        }
      )
    for r in shape_rows:
      if r["impl"] in times and "xla" in times:
        r["vs xla"] = f"{times['xla'] / times[r['impl']]:.2f}x"
    rows += shape_rows
  return rows


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", default="samples,llama8b", help=f"comma-separated, of {', '.join(SHAPES)}")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--out", default=None, help="also write the markdown section here")
  args, _ = p.parse_known_args(argv)
  shapes = [s for s in args.shapes.split(",") if s]
  unknown = [s for s in shapes if s not in SHAPES]
  if unknown:
    raise SystemExit(f"--shapes: unknown {unknown}; known: {', '.join(SHAPES)}")
  rows = run(shapes, iters=args.iters)
  columns = [
    "shape",
    "impl",
    "time (us)",
    "GB/s (written rows)",
    "GB/s (allocated)",
    "rel err",
    "vs xla",
    "error",
  ]
  text = "\n".join(
    [
      "## GQA decode attention over the [v | k] cache",
      "",
      "Command: `python scripts/bench.py kernels --family decode_attention`; " + versions() + ".",
      "",
      markdown_table(rows, columns),
      "",
    ]
  )
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return text


if __name__ == "__main__":
  main()
