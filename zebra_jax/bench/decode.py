"""Decode-throughput benchmark: Llama teacher vs MambaInLlama-style (GQA + Mamba2) vs Zebra (MLA +
Mamba2) of one size, all through zebra_jax.infer in the same run (`scripts/bench.py generate`).

Follows the reference's `benchmark_generation_speed.py --random_context` (reference 8.4): random
weights, the cache filled with random rows up to the context length (prefill skipped) and random
Mamba2 states, then timed greedy decode steps (the jitted while loop of `generate`: embedding,
every layer, final norm, LM head, argmax) after a warm-up that compiles
(`zebra_jax.eval.throughput.decode_throughput`, which the report's decode rows use too). Throughput =
batch * steps / seconds. Scaled to one GPU and a device-time budget:

* context sweep: batch 48, contexts 4k..32k (and more with --contexts), `--steps` decode steps
  (default 64) at each instead of the reference's 1024 (the per-step cost is constant to within
  steps / context);
* batch sweep: batches 8..512 at `--batch-context` (default 4096, the mean context of generating
  8k tokens from a 1-token prompt as in speed.sh; reported as such).

The cache is allocated for context + warm-up + steps rows exactly, since attention cost follows the
allocated length (GQA) or the live length (MLA Pallas kernel). Memory columns: the cache measured on
its arrays (`cache_nbytes`), the per-token bytes (== accounting.kv_bytes_per_token), and the device's
peak bytes in use after the measurement (cumulative over the process: runs go in increasing size).

`--mesh data,fsdp,tensor` shards the weights and the cache over that many local devices (made there
directly, never whole on one device) and runs the sharded decode loop (docs/inference.md); the
cache column is then the whole cache and `device0 cache GiB` the part one device holds.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import shlex
import time

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax.cli import HelpFormatter
from zebra_jax import presets
from zebra_jax.eval.throughput import decode_throughput
from zebra_jax.infer.cache import cache_nbytes, init_cache
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.parallel import make_mesh
from zebra_jax.parallel.sharding import param_shardings

# a 4-layer Llama of width 64 with a 256-token vocabulary: the CPU tests' teacher shape (`--size tiny`)
TINY = presets.llama_3_2_1b().replace(
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=4,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=16,
  vocab_size=256,
)
SIZES = {
  # name: (teacher, MambaInLlama-style hybrid, Zebra hybrid) built from one teacher shape
  "1b": (
    lambda: presets.llama_3_2_1b(instruct=True),
    lambda: presets.mamba_in_llama(presets.llama_3_2_1b(instruct=True), attn_every=4),
    lambda: presets.get_preset("zebra_1b_4mla12m2"),
  ),
  # the README main job's shapes: the samples stage decodes with this teacher (~500-token contexts,
  # batch 512); its student is configs/smollm2_135m.py's 9 MLA + 21 Mamba2 hybrid
  "smollm2": (
    lambda: presets.smollm2_135m(instruct=True),
    lambda: presets.mamba_in_llama(presets.smollm2_135m(instruct=True), attn_every=4),
    lambda: presets.get_preset("zebra_smollm2_135m_9mla21m2"),
  ),
  # a CPU smoke test of the harness
  "tiny": (
    lambda: TINY,
    lambda: presets.mamba_in_llama(TINY, attn_every=4),
    lambda: presets.zebra(TINY, (0,), q_lora_rank=32, kv_lora_rank=16, yarn_factor=32),
  ),
  "3b": (
    lambda: presets.llama_3_2_3b(instruct=True),
    lambda: presets.mamba_in_llama(presets.llama_3_2_3b(instruct=True), attn_every=2),
    lambda: presets.get_preset("zebra_3b_14mla14m2"),
  ),
  "8b": (
    lambda: presets.llama_3_1_8b(instruct=True),
    lambda: presets.mamba_in_llama(presets.llama_3_1_8b(instruct=True), attn_every=4),
    lambda: presets.get_preset("zebra_8b_8mla24m2"),
  ),
}
MODEL_NAMES = ("teacher", "mil", "zebra")
LABELS = {
  "teacher": "Llama teacher (GQA)",
  "mil": "MambaInLlama-style (GQA + Mamba2)",
  "zebra": "Zebra (MLA + Mamba2)",
}


def random_model(config, seed: int = 0, mesh=None):
  """A CausalLM with random weights made on the device in one jitted call (no host init); with a
  mesh, made directly in the sharded layout of `decode.shard_for_inference`."""
  abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
  graphdef, abs_state = nnx.split(abstract)
  leaves, treedef = jax.tree.flatten(abs_state)
  out_shardings = None
  if mesh is not None:
    out_shardings = jax.tree.leaves(param_shardings(abs_state, mesh))

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def make(key):
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, leaf in zip(keys, leaves):
      if leaf.ndim >= 2:
        out.append((0.02 * jax.random.normal(k, leaf.shape, jnp.float32)).astype(leaf.dtype))
      else:  # norms, A_log, D, dt_bias, biases
        out.append(jnp.ones(leaf.shape, leaf.dtype) + 0.01 * jax.random.normal(k, leaf.shape, leaf.dtype))
    return out

  return nnx.merge(graphdef, jax.tree.unflatten(treedef, make(jax.random.PRNGKey(seed))))


def _run(name, model, batch, context, steps, results, mesh=None):
  try:
    r = decode_throughput(model, batch, context, steps, mesh=mesh)
  except Exception as e:  # noqa: BLE001  (OOM etc.: record and go on)
    msg = str(e).splitlines()[0][:160]
    r = {"batch": batch, "context": context, "steps": steps, "error": msg}
  r["model"] = name
  results.append(r)
  print(json.dumps(r), flush=True)
  return r


def _gib(x):
  return "-" if x is None else f"{x / 2**30:.2f}"


def markdown(results, meta) -> str:
  lines = [
    f"## Decode throughput ({meta['size']} shapes, {meta['dtype']}, random weights and random context)",
    "",
    f"{meta['device']}{meta.get('mesh_note', '')}; jax {meta['jax']}; {meta['date']}. "
    f"`python scripts/bench.py generate "
    f"{meta['argv']}`. Greedy decode steps of the jitted loop after a compiling warm-up; "
    f"{meta['steps']} timed steps per point; prefill skipped (reference `random_context`).",
    "",
  ]
  for sweep, key in (("context sweep", "context"), ("batch sweep", "batch")):
    rows = [r for r in results if r.get("sweep") == sweep]
    if not rows:
      continue
    fixed = "batch" if key == "context" else "context"
    sharded = bool(meta.get("mesh_note"))
    dev0 = " device0 cache GiB |" if sharded else ""
    lines += [
      f"### {sweep} ({fixed} {rows[0][fixed]})",
      "",
      f"| {key} | model | tokens/s | ms/step | vs teacher | vs MambaInLlama | cache GiB |"
      f"{dev0} cache B/token (= formula) | peak GiB |",
      "|---|---|---|---|---|---|---|---|---|" + ("---|" if sharded else ""),
    ]
    for v in sorted({r[key] for r in rows}):
      at = {r["model"]: r for r in rows if r[key] == v}
      for m in MODEL_NAMES:
        r = at.get(m)
        if r is None:
          continue
        if "error" in r:
          lines.append(f"| {v} | {LABELS[m]} | {r['error'][:60]} | | | | | | |" + (" |" if sharded else ""))
          continue
        ratio = lambda o: (
          f"{r['tokens_per_s'] / at[o]['tokens_per_s']:.2f}x" if o in at and "tokens_per_s" in at[o] else "-"
        )
        ok = "✓" if r["cache_bytes_per_token"] == r["formula_bytes_per_token"] else "✗"
        lines.append(
          f"| {v} | {LABELS[m]} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.2f} | "
          f"{ratio('teacher')} | {ratio('mil')} | {_gib(r['cache_bytes'])} | "
          + (f"{_gib(r.get('device0_cache_bytes'))} | " if sharded else "")
          + f"{r['cache_bytes_per_token']} {ok} | {_gib(r['peak_bytes'])} |"
        )
    lines.append("")
  return "\n".join(lines)


def write_report(md: str, meta: dict, results, *, json_path=None, append_path=None) -> str:
  """The benchmarks' common ending: {meta, results} as JSON, the markdown section appended to a
  file (docs/benchmarks.md is append-only) and printed."""
  if json_path:
    with open(json_path, "w") as f:
      json.dump({"meta": meta, "results": results}, f, indent=1)
  if append_path:
    with open(append_path, "a") as f:
      f.write("\n" + md)
  print(md)
  return md


def main(argv=None) -> str:
  p = argparse.ArgumentParser(
    prog="bench.py generate", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
  )
  p.add_argument("--size", default="1b", choices=sorted(SIZES))
  p.add_argument("--models", default=",".join(MODEL_NAMES))
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  p.add_argument("--batch", type=int, default=48, help="batch of the context sweep")
  p.add_argument("--contexts", default="4096,8192,16384,32768")
  p.add_argument("--batches", default="8,16,32,64,128,256,512", help="'' skips the batch sweep")
  p.add_argument("--batch-context", type=int, default=4096)
  p.add_argument("--steps", type=int, default=64)
  p.add_argument("--json", default=None, help="write every result as JSON here")
  p.add_argument("--append", default=None, help="append the markdown section to this file")
  p.add_argument(
    "--mesh",
    default=None,
    metavar="DATA,FSDP,TENSOR",
    help="shard weights and cache over local devices (default: one device)",
  )
  args = p.parse_args(argv)
  mesh = None
  if args.mesh:
    try:
      sizes = tuple(int(x) for x in args.mesh.split(","))
      mesh = make_mesh(*sizes) if len(sizes) == 3 else None
    except ValueError as e:
      raise SystemExit(f"--mesh {args.mesh!r}: {e}") from None
    if mesh is None:
      raise SystemExit(f"--mesh {args.mesh!r}: expected data,fsdp,tensor sizes")

  models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(models) - set(MODEL_NAMES))
  if unknown:
    raise SystemExit(f"unknown --models {unknown}; choose from {MODEL_NAMES}")
  contexts = [int(x) for x in args.contexts.split(",") if x]
  batches = [int(x) for x in args.batches.split(",") if x]
  builders = dict(zip(MODEL_NAMES, SIZES[args.size]))
  built = {}
  for name in models:  # all resident: every sweep point measures the three models back to back
    config = builders[name]().replace(dtype=args.dtype, param_dtype=args.dtype)
    built[name] = random_model(config, mesh=mesh)
    print(f"# {name}: {LABELS[name]}, {config.num_hidden_layers} layers {config.layer_types()}", flush=True)
  limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
  param_bytes = sum(x.size * x.dtype.itemsize for m in built.values() for x in jax.tree.leaves(nnx.state(m)))
  n_dev = 1 if mesh is None else mesh.devices.size
  results = []
  points = [("context sweep", args.batch, c) for c in contexts] + [
    ("batch sweep", b, args.batch_context) for b in batches
  ]
  for sweep, batch, ctx in points:
    for name, model in built.items():
      config = model.config
      shapes = jax.eval_shape(lambda: init_cache(config, batch, ctx + 4 + args.steps))
      # per device; sharded: assumes an even split (replicated parts make it an underestimate)
      need = (cache_nbytes(shapes) + param_bytes) / n_dev + 4 * batch * config.vocab_size * 4 + 2**31
      t0 = time.perf_counter()
      if limit and need > limit:  # would not fit: say so instead of spending minutes failing
        r = {
          "batch": batch,
          "context": ctx,
          "steps": args.steps,
          "model": name,
          "error": f"skipped: needs ~{need / 2**30:.0f} GiB of {limit / 2**30:.0f} GiB",
        }
        results.append(r)
        print(json.dumps(r), flush=True)
      else:
        r = _run(name, model, batch, ctx, args.steps, results, mesh=mesh)
      r["sweep"] = sweep
      r["wall_s"] = time.perf_counter() - t0
  meta = {
    "size": args.size,
    "dtype": args.dtype,
    "steps": args.steps,
    "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
    "jax": jax.__version__,
    "date": datetime.date.today().isoformat(),
    "argv": shlex.join(argv or []),
    "mesh_note": ""
    if mesh is None
    else f" x {n_dev}, mesh data x fsdp x tensor = {'x'.join(map(str, mesh.devices.shape))}",
  }
  return write_report(markdown(results, meta), meta, results, json_path=args.json, append_path=args.append)
