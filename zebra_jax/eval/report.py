"""Quality and speed of distilled students next to their teacher, as JSON and a markdown report.

Per model (teacher and each student), on the held-out split of the run's REAL sources (never
trained on; teacher samples excluded):
  perplexity                      exp(mean NLL) over every held-out token (windows of data.seq_len)
  top1 / kl                       agreement with the teacher at every position: argmax match rate and
                                  mean KL(teacher || student) in nats (the KD objective)
  kv_fraction                     cached values per token vs the teacher's (accounting.kv_cache_fraction)
  decode tokens/s                 greedy decode at batch B and each context length (eval/throughput)
  samples                         greedy continuations of fixed prompts, side by side
The held-out split of the run's own sources is the in-domain row; `results["suite"]` (when present,
eval/suite.py) adds the multi-domain section: held-out sources, zero-shot tasks, chat answers.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time

from zebra_jax import accounting
from zebra_jax._io import atomic_write
from zebra_jax.data.prompts import REPORT_PROMPTS, decode_text, prompt_ids
from zebra_jax.eval.suite import suite_markdown


def evaluate_model(
  model,
  teacher,
  tokenizer,
  heldout,
  *,
  seq_len: int,
  decode_batch: int,
  contexts,
  decode_steps: int,
  sample_tokens: int,
  prompts=REPORT_PROMPTS,
  decode: bool = True,
  samples: bool = True,
  sampling: dict | None = None,
) -> dict:
  """Every measurement of one model (`model is teacher` for the teacher's own row); decode=False
  and samples=False leave out the decode-throughput and sample parts. Samples are greedy, and
  also drawn with `sampling` (generate's temperature / top_p / top_k / seed) when given: small
  models loop under greedy decoding, so both are shown, with the same settings for every model."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.eval.agreement import teacher_agreement

  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.eval.throughput import decode_throughput

  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.infer.generation import generate

  t0 = time.time()
  out = {
    "kv_fraction": accounting.kv_cache_fraction(model.config, teacher.config),
    "params": accounting.param_count(model.config),
  }
  if hasattr(model.config, "layer_types"):
    out["layer_types"] = "".join(
      {"mla": "M", "mamba2": "s", "attention": "A"}[t] for t in model.config.layer_types()
    )
  agree = teacher_agreement(model, teacher, heldout, max_length=seq_len)
  out.update(
    perplexity=agree["student_perplexity"],
    teacher_perplexity=agree["teacher_perplexity"],
    top1=agree["top1"],
    kl=agree["kl"],
    heldout_tokens=agree["tokens"],
  )
  out["decode"] = []
  for ctx in contexts if decode else ():
    try:
      r = decode_throughput(model, decode_batch, int(ctx), decode_steps)
      out["decode"].append(
        {k: r[k] for k in ("batch", "context", "tokens_per_s", "ms_per_step", "cache_bytes")}
      )
    except Exception as e:  # noqa: BLE001  (out of memory at a long context: record it, go on)
      out["decode"].append(
        {"batch": decode_batch, "context": int(ctx), "error": str(e).splitlines()[0][:200]}
      )
  if samples:
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    gens = generate(model, ids, sample_tokens, temperature=0.0)
    out["samples"] = [
      {"prompt": p.get("chat", p.get("text")), "completion": decode_text(tokenizer, g)}
      for p, g in zip(prompts, gens)
    ]
    if sampling:
      gens = generate(model, ids, sample_tokens, **sampling)
      out["sampled"] = {
        "settings": dict(sampling),
        "samples": [
          {"prompt": p.get("chat", p.get("text")), "completion": decode_text(tokenizer, g)}
          for p, g in zip(prompts, gens)
        ],
      }
  out["eval_seconds"] = round(time.time() - t0, 1)
  return out


def environment() -> dict:
  import jax
  import flax

  env = {
    "date": datetime.date.today().isoformat(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "flax": flax.__version__,
    "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
    "device_count": jax.device_count(),
  }
  try:
    import orbax.checkpoint as ocp

    env["orbax"] = getattr(ocp, "__version__", "?")
  except ImportError:
    pass
  return env


# -- markdown ---------------------------------------------------------------------------------------
def _fmt(x, spec=".2f"):
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _decode_at(row, ctx):
  for d in row.get("decode", []):
    if d["context"] == ctx:
      return d.get("tokens_per_s")
  return None


def markdown(results: dict, chart: str | None = None) -> str:
  """The report: environment, main table, ablations, timings, samples, and the multi-domain suite
  when results has one (`chart`: the path of its PNG as the markdown should link it)."""
  env, models, meta = results["environment"], results["models"], results["meta"]
  teacher = models["teacher"]
  tppl = teacher["perplexity"]
  ctxs = meta["contexts"]
  lines = [
    f"Run of `{meta['command']}` on {env['device']} ({env['date']}; jax {env['jax']}, "
    f"flax {env['flax']}, orbax {env.get('orbax', '?')}). Held-out ppl, top-1 and KL: the "
    f"in-domain held-out split of data.source, {teacher['heldout_tokens']:,} tokens never "
    "trained on"
    + ("; the multi-domain suite below adds held-out sources" if results.get("suite") else "")
    + f". Decode: batch "
    f"{meta['decode_batch']}, greedy, tokens/s at each context.",
    "",
  ]
  # `--contexts ''` (quality only) leaves out the decode columns
  speed_cols = [f"decode tok/s @{c}" for c in ctxs] + ([f"speed-up @{ctxs[-1]}"] if ctxs else [])
  head = (
    "| "
    + " | ".join(
      [
        "model",
        "kind",
        "layers (M=MLA, s=Mamba2)",
        "KV cache vs teacher",
        "held-out ppl",
        "ppl vs teacher",
        "top-1 agreement",
        "KL (nats)",
      ]
      + speed_cols
    )
    + " |"
  )
  lines += [head, "|" + " --- |" * (8 + len(speed_cols))]
  t_last = _decode_at(teacher, ctxs[-1]) if ctxs else None
  for name, row in models.items():
    kind = "teacher" if name == "teacher" else results["variants"].get(name, {}).get("kind", "?")
    rel = "-" if name == "teacher" else f"{100 * (row['perplexity'] / tppl - 1):+.1f}%"
    cells = [
      name,
      kind,
      f"`{row.get('layer_types', 'A' * 0) or 'all attention'}`",
      f"{100 * row['kv_fraction']:.2f}%",
      _fmt(row["perplexity"]),
      rel,
      "-" if name == "teacher" else _fmt(100 * row["top1"], ".1f") + "%",
      "-" if name == "teacher" else _fmt(row["kl"], ".3f"),
    ]
    cells += [_fmt(_decode_at(row, c), ",.0f") for c in ctxs]
    if ctxs:
      speed = _decode_at(row, ctxs[-1])
      cells.append("-" if name == "teacher" or not (speed and t_last) else f"{speed / t_last:.2f}x")
    lines.append("| " + " | ".join(cells) + " |")
  if ctxs and any(not row.get("decode") for n, row in models.items() if n != "teacher"):
    lines += [
      "",
      "Rows without decode numbers (ablations) have the same layer mix, hence the same "
      "decode cost, as their main variant; they are scored for quality only.",
    ]
  if not meta.get("complete", True):
    lines += ["", "**Partial report**: the run has not finished every variant yet."]
  lines += [
    "",
    "Wall time (seconds) per piece, the GGUF file to this report:",
    "",
    "| piece | seconds |",
    "| --- | --- |",
  ]
  for k, v in results["timings"].items():
    lines.append(f"| {k} | {v:.0f} |")
  lines.append(f"| **total** | **{sum(results['timings'].values()):.0f}** |")
  lines += ["", "Samples (greedy, the same prompts for every model):", ""]
  lines += _sample_lines(models, lambda row: row.get("samples"))
  if "sampled" in teacher:
    st = teacher["sampled"]["settings"]
    lines += [
      "Samples drawn with "
      + ", ".join(f"{k} {v}" for k, v in st.items())
      + " (the same settings and seed for every model):",
      "",
    ]
    lines += _sample_lines(models, lambda row: row.get("sampled", {}).get("samples"))
  if results.get("suite"):
    lines += ["", suite_markdown(results["suite"], chart=chart)]
  return "\n".join(lines)


def _sample_lines(models: dict, get) -> list[str]:
  lines = []
  first = next(iter(models.values()))
  for i, s in enumerate(get(first) or []):
    lines += [f"**Prompt:** {s['prompt']}", ""]
    for name, row in models.items():
      if get(row):
        lines.append(f"- *{name}*: {get(row)[i]['completion'].strip().replace(chr(10), ' / ')}")
    lines.append("")
  return lines


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_doc(path: str, body: str) -> None:
  """Replaces the generated block of `path` (between the markers), keeping the prose around it."""
  text = ""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      text = f.read()
  block = f"{BEGIN}\n{body}\n{END}"
  if BEGIN in text and END in text:
    text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
  else:
    text = (text.rstrip() + "\n\n" if text else "# Results\n\n") + block + "\n"
  with atomic_write(path) as f:
    f.write(text)
