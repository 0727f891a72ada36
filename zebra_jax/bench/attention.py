"""Benchmark family "attention": causal prefill/training attention with MLA head sizes.

    python -m zebra_jax.bench.attention [--seqlens 2048,4096,8192] [--tokens 16384]
        [--flash-config A --flash-config fwd=128x64x4x3,dkv=64x64x4x3,dq=64x64x4x3 ...]
        [--attn-shapes zebra-1b,zebra-3b,deepseek,mla-96] [--iters 10] [--out table.md]
    (or `scripts/bench.py kernels --family attention [same options]`)

Rows: (shape, implementation, pass) with TFLOP/s and the ratio to cuDNN
(`jax.nn.dot_product_attention(implementation="cudnn")`, measured in the same run). FLOPs count the
causal half: forward 2 B H T^2 (K + V) / 2, backward 2 B H T^2 (3K + 2V) / 2 (with the recomputed
scores, as in the FlashAttention papers).

On GPU the rows are cuDNN (also with v zero-padded to K for MLA sizes), our Pallas flash kernel
(`flash_gpu`, Triton lowering) once per block configuration -- a small autotune: every preset of
`flash_gpu.PRESETS` except F32 by default, or the `--flash-config` ones (preset names or
"fwd=BQxBKxWARPSxSTAGES,dkv=...,dq=..." specs) -- and XLA at 2k. For ours, `err_vs_cudnn` is the
relative difference of the forward output to cuDNN's (a sanity check, not the accuracy test:
tests/test_flash_gpu.py is) and a summary table gives the best configuration per shape and pass.
On TPU: our flash kernel and splash. On CPU: the reference, plus our GPU kernel in the Pallas
interpreter with `--interpret` (a smoke test of this script, not a timing).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from kernels_pallas.attention import cudnn, flash_gpu, flash_tpu, splash
from kernels_pallas.attention.reference import causal_attention_reference
from zebra_jax.bench.mla import markdown_table, time_ms, versions

# name -> (label, heads, kv heads, qk head dim, v head dim). Zebra MLA layers keep the teacher's 8
# kv heads and d_qk = d_nope + d_rope = d_h/2 + d_h/2, d_v = d_h (zebra_jax/presets.py).
SHAPES = {
  "zebra-1b": ("zebra-1b mla", 32, 8, 64, 64),  # Llama-3.2-1B heads
  "zebra-3b": ("zebra-3b mla", 24, 8, 128, 128),  # Llama-3.2-3B heads
  "deepseek": ("deepseek-style mla", 16, 16, 192, 128),
  "mla-96": ("mla qk 64+32 v64", 32, 8, 96, 64),  # a non-power-of-two qk head dim
}
DEFAULT_SHAPES = ("zebra-1b", "zebra-3b", "deepseek")
DEFAULT_CONFIGS = tuple(n for n in flash_gpu.PRESETS if n != "F32")


def _flops(B, T, H, K, V, what):
  fwd = B * H * T * T * (K + V)
  return fwd if what == "fwd" else fwd + B * H * T * T * (3 * K + 2 * V)


def _impls(backend, K, V, T, configs, interpret):
  """[(label, fn(q, k, v, *, scale), is_ours)]."""
  out = []
  if backend == "gpu":
    out.append(("cudnn", cudnn.cudnn_attention, False))
    if K != V:
      out.append(("cudnn pad-v", functools.partial(cudnn.cudnn_attention, mla_path="pad"), False))
  if backend == "gpu" or interpret:
    for name, cfg in configs:
      fn = functools.partial(flash_gpu.flash_attention_gpu, config=cfg, interpret=interpret)
      out.append((f"pallas-gpu[{name}]", fn, True))
  if backend == "gpu" and T <= 2048:
    out.append(
      (
        "xla",
        lambda q, k, v, scale: (
          jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation="xla")
          if K == V
          else causal_attention_reference(q, k, v, scale=scale)
        ),
        False,
      )
    )
  if backend == "tpu":
    out += [
      ("pallas-tpu", flash_tpu.flash_attention_tpu, False),
      ("splash", splash.splash_attention_tpu, False),
    ]
  if backend not in ("gpu", "tpu"):
    out.append(("reference", causal_attention_reference, False))
  return out


def _rel(a, b):
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def run(
  seqlens=(2048, 4096, 8192),
  tokens: int = 16384,
  iters: int = 10,
  shapes=DEFAULT_SHAPES,
  configs=None,
  interpret: bool = False,
):
  """Rows of the main table (dicts) for every shape x seqlen x implementation x pass."""
  backend = jax.default_backend()
  configs = configs or [(n, flash_gpu.PRESETS[n]) for n in DEFAULT_CONFIGS]
  rows = []
  key = jax.random.key(0)
  for shape in shapes:
    name, H, G, K, V = SHAPES[shape]
    for T in seqlens:
      B = max(1, tokens // T)
      k1, k2, k3, k4, key = jax.random.split(key, 5)
      dt = jnp.bfloat16
      q = jax.random.normal(k1, (B, T, H, K), dt)
      k = jax.random.normal(k2, (B, T, G, K), dt)
      v = jax.random.normal(k3, (B, T, G, V), dt)
      do = jax.random.normal(k4, (B, T, H, V), dt)
      scale = K**-0.5
      label = f"{name} b{B} t{T} h{H}/{G} qk{K} v{V}"
      here, base, cudnn_out = [], {}, None
      for impl, fn, ours in _impls(backend, K, V, T, configs, interpret):
        f = functools.partial(fn, scale=scale)
        fwd = jax.jit(f)

        def loss(q, k, v, f=f, do=do):
          return jnp.sum(f(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))

        fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        for what, g in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
          row = dict(shape=label, impl=impl, pass_=what, ours=ours)
          try:
            ms = time_ms(g, q, k, v, iters=iters)
            if what == "fwd" and impl == "cudnn":
              cudnn_out = fwd(q, k, v)
            elif what == "fwd" and ours and cudnn_out is not None:
              row["err_vs_cudnn"] = _rel(fwd(q, k, v), cudnn_out)
          except Exception as e:  # a config that does not compile is a row, not the end of the run
            row["error"] = type(e).__name__ + ": " + str(e).splitlines()[0][:120]
            here.append(row)
            continue
          tf = _flops(B, T, H, K, V, what) / (ms * 1e-3) / 1e12
          if impl == "cudnn":
            base[what] = tf
          row.update(ms=ms, tflops=tf)
          here.append(row)
      for r in here:
        if "tflops" in r and base.get(r["pass_"]):
          r["vs_cudnn"] = r["tflops"] / base[r["pass_"]]
      rows += here
      del q, k, v, do, cudnn_out
  return rows


def best_configs(rows) -> list[dict]:
  """Per (shape, pass): our fastest configuration, its TFLOP/s and the ratio to cuDNN."""
  best = {}
  for r in rows:
    if r.get("ours") and "tflops" in r:
      k = (r["shape"], r["pass_"])
      if k not in best or r["tflops"] > best[k]["tflops"]:
        best[k] = r
  return [
    dict(
      shape=s,
      pass_=p,
      best=r["impl"],
      tflops=r["tflops"],
      vs_cudnn=r.get("vs_cudnn", ""),
      faster_than_cudnn=("" if "vs_cudnn" not in r else "yes" if r["vs_cudnn"] >= 1.0 else "no"),
    )
    for (s, p), r in best.items()
  ]


COLUMNS = ["shape", "impl", "pass_", "ms", "tflops", "vs_cudnn", "err_vs_cudnn", "error"]
BEST_COLUMNS = ["shape", "pass_", "best", "tflops", "vs_cudnn", "faster_than_cudnn"]


def report(rows, configs, tokens: int = 16384) -> str:
  spec = "; ".join(f"{n} = {c.spec()}" for n, c in configs)
  text = (
    "### kernels --family attention: causal prefill/training attention, MLA head sizes\n\n"
    f"bf16, batch x seqlen = {tokens} tokens. {versions()}.\n"
    "tflops counts the causal half (backward with recomputed scores); vs_cudnn = tflops / "
    "cuDNN's in the same run. pallas-gpu[X] is our Triton-lowered flash kernel "
    f"(kernels_pallas/attention/flash_gpu.py) with block configuration X ({spec}).\n\n"
    + markdown_table(rows, COLUMNS)
  )
  best = best_configs(rows)
  if best:
    text += (
      "\n\nOur best configuration per shape and pass (pick `flash_gpu` defaults and the "
      'GPU "auto" order in zebra_jax/ops/attention.py from this):\n\n' + markdown_table(best, BEST_COLUMNS)
    )
  return text


def _configs(args) -> list[tuple[str, flash_gpu.FlashConfig]]:
  names = args.flash_config or list(DEFAULT_CONFIGS)
  return [(n if n in flash_gpu.PRESETS else f"c{i}", flash_gpu.parse_config(n)) for i, n in enumerate(names)]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seqlens", default="2048,4096,8192")
  p.add_argument("--tokens", type=int, default=16384)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--attn-shapes", default=",".join(DEFAULT_SHAPES), help=f"comma list of {list(SHAPES)}")
  p.add_argument(
    "--flash-config",
    action="append",
    default=None,
    help=f"our kernel's block config to time (repeatable): a preset of "
    f"{list(flash_gpu.PRESETS)} or fwd=BQxBKxWxS,dkv=...,dq=...; default: "
    f"{list(DEFAULT_CONFIGS)}",
  )
  p.add_argument(
    "--interpret",
    action="store_true",
    help="off GPU, also run our GPU kernel in the Pallas interpreter (smoke test)",
  )
  p.add_argument("--out", default=None)
  a, _ = p.parse_known_args(argv)  # options of other families are ignored
  shapes = tuple(s for s in a.attn_shapes.split(",") if s)
  if unknown := [s for s in shapes if s not in SHAPES]:
    raise SystemExit(f"--attn-shapes: unknown {unknown}; known: {list(SHAPES)}")
  configs = _configs(a)
  rows = run(tuple(int(s) for s in a.seqlens.split(",")), a.tokens, a.iters, shapes, configs, a.interpret)
  text = report(rows, configs, a.tokens)
  print(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text + "\n")
  return text


if __name__ == "__main__":
  main()
