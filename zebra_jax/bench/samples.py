"""The samples stage's decode at its own shapes, with and without the windowed cache
(`scripts/bench.py samples`).

The samples stage (`distill/samples.py`) makes one `generate` call per part: `--batch` prompts
(continuation prompts of `--prompt-len` tokens; chat parts have prompts of many lengths, the
longest setting the cache: `--longest` gives one row that length), `--new-tokens` sampled tokens
each, the cache `cache_len(prompts, new_tokens)` rows long. Every decode step's attention reads
the whole allocated cache, so `generate(..., cache_window=W)` starts the cache at the prefill's
length and grows it by W rows at a time; each new cache length compiles another decode loop. This
benchmark runs that call with random teacher weights (the speed does not depend on them; no stop
token, so every row decodes all its tokens) for each window, twice: the first call includes the
compiles (a fresh process, as a run's first part), the second is warm (the later parts of a run).
Whether the tokens equal the full cache's is printed (bfloat16 sums over a shorter cache may round
differently, so sampled tokens can part ways; the CPU tests check equality in float32).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import time

import jax
import numpy as np

from zebra_jax import presets
from zebra_jax.bench.decode import TINY, random_model, write_report
from zebra_jax.cli import HelpFormatter
from zebra_jax.distill.samples import PROMPT_BUCKET, cache_len
from zebra_jax.infer.generation import generate

TEACHERS = {"smollm2": lambda: presets.smollm2_135m(instruct=True), "tiny": lambda: TINY}  # tiny: tests


def _prompts(batch: int, prompt_len: int, longest: int, vocab: int, seed: int) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  lens = [prompt_len] * batch
  if longest:
    lens[0] = longest
  return [rng.integers(3, vocab, n).tolist() for n in lens]


def run_window(model, prompts, new_tokens: int, window: int, seed: int = 0) -> dict:
  """Two identical generate calls (cold, then warm) with cache_window `window` (0: the full
  cache); their seconds and tokens."""
  out = {"window": window}
  for name in ("cold", "warm"):
    t0 = time.perf_counter()
    toks = generate(
      model,
      prompts,
      new_tokens,
      temperature=1.0,
      seed=seed,
      stop_tokens=(),
      pad_multiple=PROMPT_BUCKET,
      max_len=cache_len(prompts, new_tokens),
      cache_window=window or None,
    )
    out[f"{name}_s"] = time.perf_counter() - t0
  out["tokens"] = toks
  out["new_tokens"] = sum(len(t) for t in toks)
  return out


def markdown(rows, meta) -> str:
  lines = [
    f"## The samples stage's decode, with the windowed cache ({meta['teacher']}, {meta['dtype']}, random weights)",
    "",
    f"{meta['device']}, jax {meta['jax']}, {meta['date']}: `python scripts/bench.py samples {meta['argv']}`.",
    f"Batch {meta['batch']}, prompts of {meta['prompt_len']} tokens"
    + (f" (one of {meta['longest']})" if meta["longest"] else "")
    + f", {meta['new_tokens']} new tokens each, cache {meta['cache_len']} rows; cold = the first call of the"
    " process (compiles included), warm = the same call again.",
    "",
    "| cache_window | cold s | warm s | new tokens/s warm | vs full cache warm | tokens equal to the full cache's |",
    "| ---: | ---: | ---: | ---: | ---: | --- |",
  ]
  base = next((r for r in rows if r["window"] == 0), None)
  for r in rows:
    rate = r["new_tokens"] / r["warm_s"]
    rel = "" if base is None else f"{base['warm_s'] / r['warm_s']:.2f}x"
    same = "-" if base is None or r is base else ("yes" if r["tokens"] == base["tokens"] else "no")
    lines.append(
      f"| {r['window'] or 'off (full)'} | {r['cold_s']:.1f} | {r['warm_s']:.2f} | {rate:,.0f} | {rel} | {same} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> tuple[str, list[dict]]:
  p = argparse.ArgumentParser(
    prog="bench.py samples", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
  )
  p.add_argument("--teacher", default="smollm2", choices=sorted(TEACHERS))
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  p.add_argument("--batch", type=int, default=256, help="prompts per generate call (samples.batch_size)")
  p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (samples.prompt_tokens)")
  p.add_argument("--longest", type=int, default=0, help="one prompt of this many tokens (0: none)")
  p.add_argument(
    "--new-tokens", type=int, default=960, help="sampled tokens per row (samples.max_new_tokens)"
  )
  p.add_argument("--windows", default="0,128,256", help="cache_window values to compare (0: the full cache)")
  p.add_argument("--append", default=None, help="append the markdown section to this file")
  args = p.parse_args(argv)
  windows = [int(w) for w in args.windows.split(",") if w.strip()]
  if any(w < 0 for w in windows) or not windows:
    raise SystemExit(f"--windows {args.windows!r}: give cache_window values >= 0 (0: the full cache)")
  config = TEACHERS[args.teacher]().replace(dtype=args.dtype, param_dtype=args.dtype)
  model = random_model(config)
  prompts = _prompts(args.batch, args.prompt_len, args.longest, config.vocab_size, seed=0)
  rows = []
  for w in windows:
    r = run_window(model, prompts, args.new_tokens, w)
    print({k: v for k, v in r.items() if k != "tokens"}, flush=True)
    rows.append(r)
  meta = {
    "teacher": args.teacher,
    "dtype": args.dtype,
    "batch": args.batch,
    "prompt_len": args.prompt_len,
    "longest": args.longest,
    "new_tokens": args.new_tokens,
    "cache_len": cache_len(prompts, args.new_tokens),
    "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
    "jax": jax.__version__,
    "date": datetime.date.today().isoformat(),
    "argv": shlex.join(argv or []),
  }
  md = write_report(
    markdown(rows, meta),
    meta,
    [{k: v for k, v in r.items() if k != "tokens"} for r in rows],
    append_path=args.append,
  )
  return md, rows
