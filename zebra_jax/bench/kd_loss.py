"""Benchmark family "kd_loss": the KD output-head loss and its gradient, full logits vs chunked.

    python scripts/bench.py kernels --family kd_loss [--loss-shapes smollm2,zebra-1b] [--chunks 1024,4096]
    (or python -m zebra_jax.bench.kd_loss)

One row per (shape, implementation): the step's head part, i.e. KL(teacher || student) + CE from
the two models' final hidden states (bf16) through their LM heads, and the gradient with respect to
the student's hidden states and head. "logits" is today's path (`train/losses.py` on both full
logits), "fused c" is `train/fused_losses.kd_loss` (gradient formed in the forward pass) with chunks of c
tokens. Time: median wall
milliseconds of the jitted value-and-grad; memory: XLA's temporary buffers of the compiled program
(`memory_analysis().temp_size_in_bytes`, what the step needs beyond its inputs and outputs).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from zebra_jax.train import fused_losses, losses
from zebra_jax.bench import environment
from zebra_jax.bench.train_step import median_ms

# name: (tokens, student hidden, teacher hidden, vocabulary)
SHAPES = {
  "smollm2": (16 * 2048, 576, 576, 49152),  # the smollm2 KD step (teacher = student width)
  "zebra-1b": (8 * 2048, 2048, 4096, 128256),  # Llama-3.2-1B student, Llama-3.1-8B teacher
  "zebra-8b": (4 * 2048, 4096, 4096, 128256),  # Llama-3.1-8B student and teacher
}


def _inputs(n, ds, dt, v, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  bf = jnp.bfloat16
  hs = jax.random.normal(k[0], (1, n, ds), bf)
  ht = jax.random.normal(k[1], (1, n, dt), bf)
  ws = (jax.random.normal(k[2], (ds, v), jnp.float32) / np.sqrt(ds)).astype(bf)
  wt = (jax.random.normal(k[3], (dt, v), jnp.float32) / np.sqrt(dt)).astype(bf)
  tokens = jax.random.randint(k[4], (1, n), 0, v, jnp.int32)
  return hs, ws, ht, wt, tokens


def _logits_loss(hs, ws, ht, wt, tokens):
  s = jnp.einsum("btd,dv->btv", hs, ws)  # bf16 logits, as the models compute them
  t = jax.lax.stop_gradient(jnp.einsum("btd,dv->btv", ht, wt))
  return losses.forward_kl(t, s) + losses.cross_entropy(s[:, :-1], tokens[:, 1:])


def _fused_loss(chunk):
  def f(hs, ws, ht, wt, tokens):
    return fused_losses.kd_loss(hs, ws, ht, wt, tokens, ce_weight=1.0, chunk=chunk)[0]

  return f


def run(shapes, chunks, iters: int = 10, tokens_override: int | None = None) -> list[dict]:
  rows = []
  for name in shapes:
    n, ds, dt, v = SHAPES[name]
    n = tokens_override or n
    args = _inputs(n, ds, dt, v)
    impls = [("logits", _logits_loss)] + [(f"fused {c}", _fused_loss(c)) for c in chunks]
    base = None
    for label, loss in impls:
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
      compiled = step.lower(*args).compile()
      mem = compiled.memory_analysis()
      temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
      ms = median_ms(compiled, args, iters)
      val = float(compiled(*args)[0])
      base = base or (ms, temp, val)
      rows.append(
        {
          "shape": name,
          "tokens": n,
          "impl": label,
          "ms": ms,
          "temp_gib": None if temp is None else temp / 2**30,
          "loss": val,
          "speedup": base[0] / ms,
          "mem_ratio": None if not (temp and base[1]) else temp / base[1],
          "loss_rel_diff": abs(val - base[2]) / abs(base[2]),
        }
      )
  return rows


def markdown(rows, command: str) -> str:
  head = (
    f"### KD head loss: full logits vs chunked (`{command}`)\n\n{environment()}. KL + CE "
    "and its gradient (student hidden + head), "
    "bf16 inputs; temp memory = XLA temporary buffers of the compiled value-and-grad.\n\n"
    "| shape | tokens | impl | ms | vs logits | temp memory (GiB) | vs logits | loss rel. diff |\n"
    "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n"
  )
  lines = []
  for r in rows:
    mem = "-" if r["temp_gib"] is None else f"{r['temp_gib']:.2f}"
    ratio = "-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}x"
    lines.append(
      f"| {r['shape']} | {r['tokens']:,} | {r['impl']} | {r['ms']:.2f} | "
      f"{r['speedup']:.2f}x | {mem} | {ratio} | {r['loss_rel_diff']:.1e} |"
    )
  return head + "\n".join(lines) + "\n"


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description="KD head loss: full logits vs chunked")
  p.add_argument("--loss-shapes", default="smollm2,zebra-1b,zebra-8b", help=f"comma list of {sorted(SHAPES)}")
  p.add_argument("--chunks", default="1024,4096", help="token chunk sizes of the fused loss")
  p.add_argument("--loss-tokens", type=int, default=None, help="tokens per step (smoke runs)")
  p.add_argument("--iters", type=int, default=10)
  args, _ = p.parse_known_args(argv)
  shapes = [s for s in args.loss_shapes.split(",") if s]
  unknown = [s for s in shapes if s not in SHAPES]
  if unknown:
    raise SystemExit(f"unknown --loss-shapes {unknown}; known: {sorted(SHAPES)}")
  rows = run(shapes, [int(c) for c in args.chunks.split(",") if c], args.iters, args.loss_tokens)
  cmd = "scripts/bench.py kernels --family kd_loss" + (f" {' '.join(argv)}" if argv else "")
  md = markdown(rows, cmd)
  print(md)
  return md


if __name__ == "__main__":
  main()
