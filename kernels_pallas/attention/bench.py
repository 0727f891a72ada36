"""Benchmark family "attention": causal prefill/training attention with MLA head sizes.

    python -m kernels_pallas.attention.bench [--seqlens 2048,4096,8192] [--tokens 16384]
    (or `scripts/bench.py kernels --family attention`)

Rows: (shape, implementation, pass) with TFLOP/s and the ratio to cuDNN
(`jax.nn.dot_product_attention(implementation="cudnn")`, measured in the same run). FLOPs count the
causal half: forward 2 B H T^2 (K + V) / 2, backward 2 B H T^2 (3K + 2V) / 2 (with the recomputed
scores, as in the FlashAttention papers). On GPU our Pallas attention kernel does not exist yet, so
the rows are cuDNN (our dispatch's choice) and XLA; on TPU they are our flash kernel and splash.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from kernels_pallas.attention import cudnn, flash_tpu, splash
from kernels_pallas.attention.reference import causal_attention_reference
from kernels_pallas.mla.bench import markdown_table, time_ms, versions

# (name, heads, kv heads, qk head dim, v head dim)
SHAPES = (("zebra-1b mla", 32, 8, 64, 64), ("zebra-8b mla", 32, 8, 128, 128),
          ("deepseek-style mla", 16, 16, 192, 128))


def _flops(B, T, H, K, V, what):
  fwd = B * H * T * T * (K + V)
  return fwd if what == "fwd" else fwd + B * H * T * T * (3 * K + 2 * V)


def _impls(backend, K, V, T):
  out = []
  if backend == "gpu":
    out.append(("cudnn", functools.partial(cudnn.cudnn_attention)))
    if K != V:
      out.append(("cudnn pad-v", functools.partial(cudnn.cudnn_attention, mla_path="pad")))
    if T <= 2048:
      out.append(("xla", lambda q, k, v, scale: jax.nn.dot_product_attention(
          q, k, v, scale=scale, is_causal=True, implementation="xla") if K == V
          else causal_attention_reference(q, k, v, scale=scale)))
  elif backend == "tpu":
    out += [("pallas-tpu", flash_tpu.flash_attention_tpu), ("splash", splash.splash_attention_tpu)]
  else:
    out.append(("reference", causal_attention_reference))
  return out


def run(seqlens=(2048, 4096, 8192), tokens: int = 16384, iters: int = 10, shapes=SHAPES):
  backend = jax.default_backend()
  rows = []
  key = jax.random.key(0)
  for name, H, G, K, V in shapes:
    for T in seqlens:
      B = max(1, tokens // T)
      k1, k2, k3, k4, key = jax.random.split(key, 5)
      dt = jnp.bfloat16
      q = jax.random.normal(k1, (B, T, H, K), dt)
      k = jax.random.normal(k2, (B, T, G, K), dt)
      v = jax.random.normal(k3, (B, T, G, V), dt)
      do = jax.random.normal(k4, (B, T, H, V), dt)
      scale = K ** -0.5
      base = {}
      for impl, fn in _impls(backend, K, V, T):
        f = functools.partial(fn, scale=scale)
        fwd = jax.jit(f)

        def loss(q, k, v, f=f):
          return jnp.sum(f(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))

        fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        for what, g in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
          label = f"{name} b{B} t{T} h{H}/{G} qk{K} v{V}"
          try:
            ms = time_ms(g, q, k, v, iters=iters)
          except Exception as e:
            rows.append(dict(shape=label, impl=impl, pass_=what,
                             error=type(e).__name__ + ": " + str(e).splitlines()[0][:120]))
            continue
          tf = _flops(B, T, H, K, V, what) / (ms * 1e-3) / 1e12
          base.setdefault(what, tf if impl == "cudnn" else None)
          rows.append(dict(shape=label, impl=impl, pass_=what, ms=ms, tflops=tf))
      for r in rows:
        if r["shape"].startswith(f"{name} b{B} t{T} ") and "tflops" in r and base.get(r["pass_"]):
          r["vs_cudnn"] = r["tflops"] / base[r["pass_"]]
      del q, k, v, do
  return rows


COLUMNS = ["shape", "impl", "pass_", "ms", "tflops", "vs_cudnn", "error"]


def report(rows) -> str:
  return ("### kernels --family attention: causal prefill/training attention, MLA head sizes\n\n"
          f"bf16, batch x seqlen = 16k tokens. {versions()}.\n"
          "tflops counts the causal half (backward with recomputed scores); vs_cudnn = tflops / "
          "cuDNN's in the same run.\n\n" + markdown_table(rows, COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seqlens", default="2048,4096,8192")
  p.add_argument("--tokens", type=int, default=16384)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--out", default=None)
  a, _ = p.parse_known_args(argv)  # options of other families are ignored
  rows = run(tuple(int(s) for s in a.seqlens.split(",")), a.tokens, a.iters)
  text = report(rows)
  print(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text + "\n")
  return text


if __name__ == "__main__":
  main()
