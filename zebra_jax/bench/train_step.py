"""`python scripts/bench.py train`: one distillation step at preset shapes, random weights, synthetic
tokens (no checkpoint, no data), with its throughput, MFU, memory and a breakdown.

    python scripts/bench.py train --stage kd --student zebra_1b_4mla12m2 \
        --teacher llama-3.1-8b-instruct --seq-len 2048 --batch 8 [--loss-impl logits,fused] \
        [--steps 10] [--append docs/benchmarks.md]
    python scripts/bench.py train --stage ild_mla --student zebra_1b_4mla12m2 --batch 16
    python scripts/bench.py train --stage dpo --student zebra_1b_4mla12m2 --batch 4

Stages: kd (the student preset against --teacher; KL, + CE with --ce-weight), ild_mla / ild_mamba
(the all-MLA / all-Mamba2 version of the student against the Llama it is built from: the ILD loss
of distill/stages.py), dpo (the student as policy against a frozen bf16 copy of itself as the
reference, as the dpo stage runs; each row of the batch is a chosen and a rejected sequence whose
first quarter is the prompt, masked out of the log-probs; tokens/s counts both sequences). Each
--loss-impl (kd and dpo) is one row, so the first row is the peer of the others in the same run
("logits" = today's full-logits loss).

Columns: step time (median wall ms of the jitted step: forward, backward, AdamW update, parameters
donated), tokens/s, MFU = tokens/s x (student fwd+bwd + teacher fwd FLOPs per token, from
`zebra_jax.accounting`) / the device's dense bf16 peak, XLA's compiled memory of the step
(arguments + temporaries + outputs: what it needs at its peak, from `memory_analysis`), and the
breakdown: teacher forward, student forward+backward with the loss, the optimizer update, each
jitted and timed alone (their sum exceeds the step, which XLA schedules as one program).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from zebra_jax.cli import HelpFormatter, ScriptError
from zebra_jax import accounting, presets
from zebra_jax.bench import environment
from zebra_jax.config import REMAT_POLICIES, HybridConfig
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.distill import objectives
from zebra_jax.ops.ssd import ssd_scan
from zebra_jax.train import fused_losses, losses
from zebra_jax.train.optim import make_optimizer

STAGES = ("kd", "ild_mla", "ild_mamba", "dpo")

# dense bf16 peak FLOP/s by device kind (substring match, first wins)
PEAK_FLOPS = (
  ("H200", 989e12),
  ("H100", 989e12),
  ("A100", 312e12),
  ("v6", 918e12),
  ("v5p", 459e12),
  ("v5 lite", 197e12),
  ("v5e", 197e12),
  ("v4", 275e12),
)


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((f for k, f in PEAK_FLOPS if k.lower() in kind.lower()), None)


def median_ms(fn, args, iters):
  """Median wall milliseconds of fn(*args) over `iters` calls, after one untimed call."""
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(ts)


def _base_of(student: str):
  """The Llama a Zebra preset is built from (the ILD teacher)."""
  table = presets.ZEBRA_TABLE
  if student.lower() not in table:
    raise SystemExit(f"--stage ild_* needs a Zebra student preset (one of {sorted(table)}), got {student!r}")
  return table[student.lower()][0](instruct=True)


def _name(spec) -> str:
  return spec if isinstance(spec, str) else "custom"


def _with_dtypes(cfg, param_dtype: str):
  return dataclasses.replace(cfg, dtype="bfloat16", param_dtype=param_dtype)


def _config(spec):
  return presets.get_preset(spec) if isinstance(spec, str) else spec


def build(stage: str, student, teacher):
  """(student config, teacher config) of the stage, bf16 compute; the student keeps float32
  parameters (as training does), the teacher bfloat16. student / teacher: preset names or
  configs; for ild_* the teacher defaults to the Llama the Zebra student preset is built from."""
  s_cfg = _config(student)
  if stage == "kd":
    if teacher is None:
      raise SystemExit("--stage kd needs --teacher (a preset name)")
    t_cfg = _config(teacher)
    if t_cfg.vocab_size != s_cfg.vocab_size:
      raise SystemExit(f"teacher vocab {t_cfg.vocab_size} != student vocab {s_cfg.vocab_size}")
  elif stage == "dpo":  # the reference is the policy's own config (a frozen copy)
    t_cfg = s_cfg
  elif stage in ("ild_mla", "ild_mamba"):
    t_cfg = _config(teacher) if teacher is not None else _base_of(student)
    if not isinstance(s_cfg, HybridConfig):
      raise SystemExit(f"{student!r} is not a hybrid preset")
    L = s_cfg.num_hidden_layers
    s_cfg = dataclasses.replace(
      s_cfg, mla_layers=tuple(range(L)) if stage == "ild_mla" else (), attn_layers=()
    )
  else:
    raise SystemExit(f"--stage must be one of {STAGES}, got {stage!r}")
  return _with_dtypes(s_cfg, "float32"), _with_dtypes(t_cfg, "bfloat16")


def loss_fn_for(stage: str, impl: str, ce_weight: float, chunk: int):
  if stage == "kd":
    return objectives.kd_loss_fn(1.0, ce_weight, 1.0, impl, chunk)
  if stage == "dpo":
    return objectives.dpo_loss_fn(0.1, impl, chunk)
  return objectives.ild_loss_fn("l2")


def synthetic_batch(stage: str, batch: int, seq_len: int, vocab: int) -> dict:
  """Random tokens; for dpo a chosen and a rejected sequence per row that share their first
  quarter (the prompt), which the masks leave out of the log-probs."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(2))
  tokens = jax.random.randint(k1, (batch, seq_len), 0, vocab, jnp.int32)
  if stage != "dpo":
    return {"tokens": tokens}
  prompt = seq_len // 4
  rejected = jnp.concatenate(
    [tokens[:, :prompt], jax.random.randint(k2, (batch, seq_len - prompt), 0, vocab, jnp.int32)], axis=1
  )
  mask = jnp.broadcast_to(jnp.arange(seq_len) >= prompt, (batch, seq_len)).astype(jnp.int32)
  return {"chosen": tokens, "chosen_mask": mask, "rejected": rejected, "rejected_mask": mask}


def run(
  stage: str,
  student: str,
  teacher: str | None,
  *,
  seq_len: int,
  batch: int,
  impls=("logits",),
  ce_weight: float = 0.0,
  chunk: int = 1024,
  iters: int = 10,
  remat: str | bool | tuple = False,
  breakdown: bool = True,
) -> list[dict]:
  """One row per (remat setting, loss impl): `remat` is False, True ("full"), a REMAT_POLICIES
  name, or a tuple of those to compare side by side in one run."""
  remats = remat if isinstance(remat, (tuple, list)) else (remat,)
  s_cfg, t_cfg = build(stage, student, teacher)
  s_model = CausalLM(s_cfg, rngs=nnx.Rngs(0))
  t_model = CausalLM(t_cfg, rngs=nnx.Rngs(1))
  t_graph, t_state = nnx.split(t_model)
  if stage == "dpo":  # the reference starts as the policy: its weights, in bf16
    t_state = jax.tree.map(lambda t, p: p.astype(t.dtype), t_state, nnx.state(s_model))
  batch_d = synthetic_batch(stage, batch, seq_len, s_cfg.vocab_size)
  # dpo runs policy (fwd + bwd) and reference (fwd) over both sequences of each row
  rows_per_example = 2 if stage == "dpo" else 1
  step_tokens = rows_per_example * batch * seq_len
  flops = step_tokens * accounting.distill_flops_per_token(
    s_cfg, t_cfg, seq_len, heads=stage in ("kd", "dpo")
  )
  role = "reference" if stage == "dpo" else "teacher"
  peak = peak_flops(jax.devices()[0])
  opt = make_optimizer(1e-4, 1000)
  rows = []
  with_impls = stage in ("kd", "dpo")
  cases = [(r, i) for r in remats for i in (impls if with_impls else ("-",))]
  for remat_now, impl in cases:
    s_model.remat = remat_now
    loss_fn = loss_fn_for(stage, impl if with_impls else "logits", ce_weight, chunk)
    graph, params, rest = nnx.split(s_model, nnx.Param, ...)
    params = jax.tree.map(jnp.copy, params)  # the step donates its parameters: keep the model's
    opt_state = opt.init(params)

    def loss_of(p, ts, b):
      return loss_fn(nnx.merge(graph, p, rest), {role: nnx.merge(t_graph, ts)}, b)[0]

    def step(p, o, ts, b):
      loss, g = jax.value_and_grad(loss_of)(p, ts, b)
      updates, o = opt.update(g, o, p)
      return optax.apply_updates(p, updates), o, loss

    step_c = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, t_state, batch_d).compile()
    mem = step_c.memory_analysis()
    mem_gib = None
    if mem is not None:
      mem_gib = (
        sum(
          getattr(mem, k, 0) or 0
          for k in ("argument_size_in_bytes", "temp_size_in_bytes", "output_size_in_bytes")
        )
        / 2**30
      )
    state = [params, opt_state]

    def timed_step():
      state[0], state[1], loss = step_c(state[0], state[1], t_state, batch_d)
      return loss

    loss0 = float(timed_step())
    step_ms = median_ms(timed_step, (), iters)
    tps = step_tokens / (step_ms / 1e3)
    teacher_name = (
      "a frozen copy" if stage == "dpo" else _name(teacher) if teacher is not None else "its base Llama"
    )
    row = {
      "stage": stage,
      "student": _name(student),
      "teacher": teacher_name,
      "seq_len": seq_len,
      "batch": batch,
      "impl": impl,
      "remat": "full" if remat_now is True else (remat_now or "none"),
      "step_ms": step_ms,
      "tokens_per_s": tps,
      "mfu": None if peak is None else flops / (step_ms / 1e3) / peak,
      "memory_gib": mem_gib,
      "teacher_fwd_ms": None,
      "student_fwd_bwd_ms": None,
      "optimizer_ms": None,
      "loss": loss0,
    }
    rows.append(row)
    if not breakdown:
      continue
    # breakdown, each part jitted alone
    if stage == "kd":
      t_fwd = jax.jit(lambda ts, b: nnx.merge(t_graph, ts).final_hidden(b["tokens"]))
    elif stage == "dpo":  # the reference's forward over both sequences
      t_fwd = jax.jit(
        lambda ts, b: [nnx.merge(t_graph, ts).final_hidden(b[k]) for k in ("chosen", "rejected")]
      )
    else:
      t_fwd = jax.jit(lambda ts, b: nnx.merge(t_graph, ts).forward_with_intermediates(b["tokens"])[1])
    teacher_ms = median_ms(t_fwd, (t_state, batch_d), iters)
    grad_fn = jax.jit(jax.value_and_grad(loss_of))
    grad_ms = median_ms(grad_fn, (state[0], t_state, batch_d), iters)
    grads = grad_fn(state[0], t_state, batch_d)[1]
    upd = jax.jit(lambda g, o, p: opt.update(g, o, p))
    opt_ms = median_ms(upd, (grads, state[1], state[0]), iters)
    # the loss's value_and_grad runs the teacher's forward inside it: the student's share is the rest
    row.update(
      teacher_fwd_ms=teacher_ms, student_fwd_bwd_ms=max(grad_ms - teacher_ms, 0.0), optimizer_ms=opt_ms
    )
    state.clear()  # frees the arrays (the closure above holds the list)
    del grads
  return rows


def layer_breakdown(
  stage: str,
  student,
  teacher,
  *,
  seq_len: int,
  batch: int,
  iters: int = 10,
  loss_impl: str = "logits",
  chunk: int = 1024,
) -> list[dict]:
  """Where a kd step's time goes, part by part, each part jitted and timed alone at the step's
  shapes: one student block of each mixer type, its mixer and its MLP (forward + backward w.r.t.
  the block's parameters and input, a random cotangent), one teacher block (forward), the
  embedding, and the head with the KD loss (forward + backward from the final hidden states).
  Rows: part, how many the step runs, ms each, ms in all (count x each). The sum misses what XLA
  overlaps or fuses across parts; it says which part to make faster."""
  if stage != "kd":
    raise SystemExit("--layers breaks down the kd step (the other stages run the same blocks)")
  s_cfg, t_cfg = build(stage, student, teacher)
  s_model = CausalLM(s_cfg, rngs=nnx.Rngs(0))
  t_model = CausalLM(t_cfg, rngs=nnx.Rngs(1))
  dt = jnp.bfloat16
  key = jax.random.PRNGKey(3)
  h_BTD = jax.random.normal(key, (batch, seq_len, s_cfg.hidden_size), dt)
  g_BTD = jax.random.normal(jax.random.fold_in(key, 1), h_BTD.shape, dt)
  pos_BT = CausalLM.default_positions(jnp.zeros((batch, seq_len), jnp.int32))
  tokens_BT = synthetic_batch("kd", batch, seq_len, s_cfg.vocab_size)["tokens"]
  rows = []

  def fwd_bwd(module, apply):
    """ms of value_and_grad of <apply(module, h), g> w.r.t. the module's params and h."""
    return module_fwd_bwd_ms(module, apply, (h_BTD,), iters)

  def fwd(module, apply):
    graph, state = nnx.split(module)
    return median_ms(jax.jit(lambda st, h: apply(nnx.merge(graph, st), h)), (state, h_BTD), iters)

  def add(part, count, ms):
    rows.append({"part": part, "count": count, "ms_each": ms, "ms_total": count * ms})

  kinds = s_cfg.layer_types()
  for kind in sorted(set(kinds)):
    block = s_model.layers[kinds.index(kind)]
    n = kinds.count(kind)
    add(f"student {kind} block (fwd+bwd)", n, fwd_bwd(block, lambda b, h: b(h, pos_BT)[0]))
    add(f"  of which the {kind} mixer", n, fwd_bwd(block, lambda b, h: b.mixer(b.input_layernorm(h), pos_BT)))
    if kind == "mamba2":
      for part, ms in mamba2_piece_ms(block.mixer, s_cfg, batch, seq_len, iters):
        add(f"    {part}" if part.startswith("candidate") else f"    of which {part}", n, ms)
    add("  of which the MLP", n, fwd_bwd(block, lambda b, h: b.mlp(b.post_attention_layernorm(h))))
  t_kinds = t_cfg.layer_types()
  for kind in sorted(set(t_kinds)):
    block = t_model.layers[t_kinds.index(kind)]
    add(f"teacher {kind} block (fwd)", t_kinds.count(kind), fwd(block, lambda b, h: b(h, pos_BT)[0]))
  e_graph, e_params, e_rest = nnx.split(s_model.embed_tokens, nnx.Param, ...)
  emb = jax.jit(
    jax.grad(
      lambda p: jnp.sum(
        nnx.merge(e_graph, p, e_rest)(tokens_BT).astype(jnp.float32) * g_BTD.astype(jnp.float32)
      )
    )
  )
  add("student embedding (fwd+bwd)", 1, median_ms(emb, (e_params,), iters))
  ht_BTD = h_BTD * 0.5
  head_s, head_t = s_model.head_DV(), t_model.head_DV()

  def head_loss(h, w):
    if loss_impl == "fused":
      return fused_losses.kd_loss(
        h, w, ht_BTD, head_t, tokens_BT, kl_weight=1.0, ce_weight=0.0, temperature=1.0, chunk=chunk
      )[0]
    t_logits = jnp.einsum("btd,dv->btv", ht_BTD, head_t)
    return losses.forward_kl(t_logits, jnp.einsum("btd,dv->btv", h, w.astype(h.dtype)))

  add(
    f"head + KD loss, {loss_impl} (fwd+bwd)",
    1,
    median_ms(jax.jit(jax.value_and_grad(head_loss, argnums=(0, 1))), (h_BTD, head_s), iters),
  )
  return rows


def module_fwd_bwd_ms(module, apply, args, iters: int, seed: int = 7) -> float:
  """ms of value_and_grad of <apply(module, *args), g> w.r.t. the module's params and every arg,
  g a fixed random cotangent of the output's shape (of each output, when apply returns several)."""
  graph, params, rest = nnx.split(module, nnx.Param, ...)
  call = lambda p, *a: apply(nnx.merge(graph, p, rest), *a)  # noqa: E731
  outs = jax.tree.leaves(jax.eval_shape(call, params, *args))  # one output, or several
  keys = jax.random.split(jax.random.PRNGKey(seed), len(outs))
  gs = [jax.random.normal(k, o.shape, o.dtype) for k, o in zip(keys, outs)]

  def f(p, *a):
    ys = jax.tree.leaves(call(p, *a))
    return sum(jnp.sum(y.astype(jnp.float32) * g.astype(jnp.float32)) for y, g in zip(ys, gs))

  grad = jax.value_and_grad(f, argnums=tuple(range(1 + len(args))))
  return median_ms(jax.jit(grad), (params, *args), iters)


def mamba2_piece_ms(mixer, cfg, batch: int, seq_len: int, iters: int) -> list[tuple[str, float]]:
  """(piece, ms of its fwd+bwd) for the pieces of one Mamba2 mixer at the step's shapes, in the
  order the mixer runs them: the input projection, the causal conv with its SiLU, the SSD scan,
  the gated RMSNorm, the output projection; and, after the input projection, the same product
  split at the dt columns (two aligned products instead of one of odd width: a candidate row). What the mixer row has beyond their sum is the glue
  between them (splits, the grouped heads' repeat, reshapes) and what XLA fuses across them."""
  bf = jnp.bfloat16
  k = jax.random.split(jax.random.PRNGKey(11), 4)
  E, conv_dim = cfg.d_inner, cfg.mamba_conv_dim
  h = jax.random.normal(k[0], (batch, seq_len, cfg.hidden_size), bf)
  xBC = jax.random.normal(k[1], (batch, seq_len, conv_dim), bf)
  y, z = (jax.random.normal(kk, (batch, seq_len, E), bf) for kk in jax.random.split(k[2]))
  n_zxbc = 2 * E + 2 * cfg.d_xb  # [z | x | B | C]; the H dt columns after them make the width odd

  def in_proj_split(m, a):  # a candidate, measured beside the mixer's own product; not in the model
    w = m.kernel[...].astype(bf)
    return jnp.einsum("btd,dn->btn", a, w[:, :n_zxbc]), jnp.einsum("btd,dn->btn", a, w[:, n_zxbc:])

  return [
    ("in_proj", module_fwd_bwd_ms(mixer.in_proj, lambda m, a: m(a), (h,), iters)),
    (
      f"candidate in place of in_proj (not in the model): [z|x|B|C] ({n_zxbc} columns) and dt "
      f"({cfg.mamba_nheads}) as two products",
      module_fwd_bwd_ms(mixer.in_proj, in_proj_split, (h,), iters),
    ),
    ("the conv + SiLU", module_fwd_bwd_ms(mixer.conv1d, lambda m, a: jax.nn.silu(m(a)[0]), (xBC,), iters)),
    ("the SSD scan", ssd_fwd_bwd_ms(cfg, batch, seq_len, iters)),
    ("the gated norm", module_fwd_bwd_ms(mixer.norm, lambda m, a, b: m(a, b), (y, z), iters)),
    ("out_proj", module_fwd_bwd_ms(mixer.out_proj, lambda m, a: m(a), (y,), iters)),
  ]


def ssd_fwd_bwd_ms(cfg, batch: int, seq_len: int, iters: int) -> float:
  """ms of the SSD scan's forward + backward (w.r.t. x, dt, B, C) at a Mamba2 layer's shapes, as
  the mixer calls it (`ops.ssd.ssd_scan` with the config's impl and chunk, bf16 x / B / C, float32
  dt / A / D / dt_bias): the mixer's time minus this is its projections, conv, gates and norm."""
  H, P, G, N = cfg.mamba_nheads, cfg.headdim, cfg.ngroups, cfg.d_state
  k = jax.random.split(jax.random.PRNGKey(5), 6)
  bf = jnp.bfloat16
  x = jax.random.normal(k[0], (batch, seq_len, H, P), bf)
  dt = jax.random.normal(k[1], (batch, seq_len, H), jnp.float32) - 2.0
  B = jax.random.normal(k[2], (batch, seq_len, G, N), bf)
  C = jax.random.normal(k[3], (batch, seq_len, G, N), bf)
  g = jax.random.normal(k[4], (batch, seq_len, H, P), bf)
  A = -jnp.exp(jax.random.uniform(k[5], (H,), jnp.float32, 0.0, 2.0))
  D, dt_bias = jnp.ones((H,), jnp.float32), jnp.zeros((H,), jnp.float32)

  def f(x, dt, B, C):
    y = ssd_scan(
      x,
      dt,
      A,
      B,
      C,
      D=D,
      dt_bias=dt_bias,
      dt_softplus=True,
      chunk_size=min(cfg.chunk_size, seq_len),
      impl=cfg.impl,
    )
    return jnp.sum(y.astype(jnp.float32) * g.astype(jnp.float32))

  return median_ms(jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3))), (x, dt, B, C), iters)


def layers_markdown(rows, step_ms: float | None, command: str) -> str:
  total = sum(r["ms_total"] for r in rows if not r["part"].startswith("  "))
  out = [
    f"### Where the step goes: `{command}`\n",
    f"{environment()}. Each part jitted and timed alone at the step's shapes (median); "
    f"'of which' rows are inside the block row above them and not added again.\n",
    "| part | count | ms each | ms in all | share of the parts' sum |",
    "| --- | ---: | ---: | ---: | ---: |",
  ]
  for r in rows:
    share = "" if r["part"].startswith("  ") else f"{100 * r['ms_total'] / total:.1f}%"
    out.append(f"| {r['part']} | {r['count']} | {r['ms_each']:.2f} | {r['ms_total']:.1f} | {share} |")
  out.append(f"| **sum of the parts** | | | **{total:.1f}** | |")
  if step_ms is not None:
    out.append(f"| the whole jitted step (for comparison) | | | {step_ms:.1f} | |")
  return "\n".join(out) + "\n"


def _ms(x) -> str:
  return "-" if x is None else f"{x:.1f}"


def markdown(rows, command: str) -> str:
  head = (
    f"### Training step: `{command}`\n\n{environment()}. Random weights, synthetic tokens; "
    "student float32 "
    "parameters, bf16 compute; teacher bf16. MFU counts student fwd+bwd and teacher fwd FLOPs "
    "(`zebra_jax.accounting`; ILD without the LM heads, which it never runs); memory is XLA's "
    "compiled arguments + temporaries + outputs. Breakdown, each part jitted alone: teacher "
    "forward; student forward + backward + loss (the loss's value_and_grad minus the teacher "
    "forward it contains); optimizer update.\n\n"
    "| stage | student | teacher | batch x seq | loss impl | remat | step ms | tokens/s | MFU | "
    "memory GiB | teacher fwd ms | student fwd+bwd ms | optimizer ms |\n"
    "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
  )
  out = []
  for r in rows:
    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    mem = "-" if r["memory_gib"] is None else f"{r['memory_gib']:.1f}"
    out.append(
      f"| {r['stage']} | {r['student']} | {r['teacher']} | {r['batch']} x {r['seq_len']} | "
      f"{r['impl']} | {r['remat']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} | "
      f"{_ms(r['teacher_fwd_ms'])} | {_ms(r['student_fwd_bwd_ms'])} | "
      f"{_ms(r['optimizer_ms'])} |"
    )
  return head + "\n".join(out) + "\n"


def main(argv=None) -> str:
  p = argparse.ArgumentParser(
    prog="scripts/bench.py train", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
  )
  p.add_argument("--stage", default="kd", choices=STAGES)
  p.add_argument("--student", default="zebra_1b_4mla12m2", help="a preset name (zebra_jax.presets)")
  p.add_argument(
    "--teacher",
    default="llama-3.1-8b-instruct",
    help="KD teacher preset (ild: default the student's base Llama; dpo: unused, "
    "the reference is a frozen copy of the student)",
  )
  p.add_argument("--seq-len", type=int, default=2048)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--loss-impl", default="logits,fused", help="kd / dpo: comma list of logits / fused")
  p.add_argument("--loss-chunk", type=int, default=1024)
  p.add_argument("--ce-weight", type=float, default=0.0)
  p.add_argument(
    "--remat",
    nargs="?",
    const="full",
    default="none",
    help="recompute each student block in the backward pass: a comma list of none / "
    f"{' / '.join(REMAT_POLICIES)} (zebra_jax.config.REMAT_POLICIES), one row each; "
    "--remat alone is full",
  )
  p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
  p.add_argument(
    "--layers",
    action="store_true",
    help="kd: also time each part of the step alone (one block of each type, its "
    "mixer and MLP, the teacher's block, the embedding, the head + loss)",
  )
  p.add_argument("--append", default=None, help="append the markdown section to this file")
  a = p.parse_args(argv)
  for flag, value in (("--batch", a.batch), ("--seq-len", a.seq_len), ("--steps", a.steps)):
    if value < 1:
      raise ScriptError(f"{flag} must be >= 1, got {value}")
  impls = tuple(i for i in a.loss_impl.split(",") if i)
  remats = tuple(r for r in a.remat.split(",") if r)
  unknown = [r for r in remats if r not in ("none", *REMAT_POLICIES)]
  if unknown or not remats:
    raise ScriptError(f"--remat: unknown setting(s) {unknown}; choose from none, {', '.join(REMAT_POLICIES)}")
  remats = tuple(False if r == "none" else r for r in remats)
  rows = run(
    a.stage,
    a.student,
    a.teacher if a.stage == "kd" else None,
    seq_len=a.seq_len,
    batch=a.batch,
    impls=impls,
    ce_weight=a.ce_weight,
    chunk=a.loss_chunk,
    iters=a.steps,
    remat=remats,
  )
  cmd = "python scripts/bench.py train " + shlex.join(argv if argv is not None else [])
  md = markdown(rows, cmd.strip())
  if a.layers:
    parts = layer_breakdown(
      a.stage,
      a.student,
      a.teacher,
      seq_len=a.seq_len,
      batch=a.batch,
      iters=a.steps,
      loss_impl=impls[0],
      chunk=a.loss_chunk,
    )
    md += "\n" + layers_markdown(parts, rows[0]["step_ms"], cmd.strip())
  print(md)
  if a.append:
    with open(a.append, "a") as f:
      f.write("\n" + md)
    print(f"appended to {a.append}")
  return md


if __name__ == "__main__":
  main()
