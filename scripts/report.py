"""Distil at several MLA budgets with ablations, then evaluate every student next to the teacher.

  python scripts/report.py --config configs/smollm2_135m.py --root workdir/smollm2_report \
      --budgets 8,4 --doc docs/results.md

Runs the config's budget-free stages once (teacher, samples, ild_mla, ild_mamba), then per budget a
SMART-placed student (select, assemble, kd), and at the first budget two ablations: uniform placement,
and no ILD (SMART's layers, blocks straight from the initialisers). Then evaluates the teacher and
every student on the held-out split (perplexity, top-1 agreement, KL, KV-cache fraction, decode
tokens/s at batch --decode_batch and each of --contexts, greedy samples) and writes
<root>/results.json, <root>/results.md and, with --doc, the generated block of that markdown file.
Any --config.x.y=v override applies to every run. Killed at any point (e.g. a 10-minute job limit),
the same command resumes: training from its last checkpoint, finished evaluations from their JSON.
Exit codes as scripts/distill.py: 143 preempted (SIGTERM; rerun to resume), 3 non-finite loss.
"""

from __future__ import annotations

import os
import sys
import time

try:
  import zebra_jax  # noqa: F401
except ImportError:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "python config file with get_config()",
                                          lock_config=False)
_ROOT = flags.DEFINE_string("root", None, "experiment directory (default: workdir/<name>_report)")
_BUDGETS = flags.DEFINE_list("budgets", None, "MLA layer budgets (default: the config's model.n_mla)")
_ABL = flags.DEFINE_bool("ablations", True, "also run uniform placement and no-ILD at the first budget")
_CONTEXTS = flags.DEFINE_list("contexts", ["8192"], "decode-throughput context lengths")
_DBATCH = flags.DEFINE_integer("decode_batch", 48, "decode-throughput batch size")
_DSTEPS = flags.DEFINE_integer("decode_steps", 64, "timed decode steps per measurement")
_SAMPLE = flags.DEFINE_integer("sample_tokens", 64, "greedy tokens per sample prompt")
_HELDOUT = flags.DEFINE_integer("heldout_limit_tokens", 0, "score only about this many held-out "
                                "tokens (0: all; for smoke runs)")
_DTYPE = flags.DEFINE_string("eval_dtype", "bfloat16", "compute dtype of the evaluated models")
_DOC = flags.DEFINE_string("doc", None, "markdown file whose generated results block to replace")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "disable progress bars")


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config is required, e.g. --config configs/smollm2_135m.py")
  from zebra_jax.convert.orbax_io import load_model
  from zebra_jax.distill.experiment import plan, run_experiment
  from zebra_jax.eval import report
  from zebra_jax.train.trainer import NonFiniteLossError, Preempted

  budgets = _BUDGETS.value or [cfg.model.n_mla]
  variants = plan(budgets, ablations=_ABL.value)
  root = os.path.abspath(_ROOT.value or os.path.join("workdir", f"{cfg.name}_report"))
  command = "python scripts/report.py " + " ".join(sys.argv[1:])
  try:
    summaries = run_experiment(cfg, root, variants, progress=not _NO_PROGRESS.value)
  except Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)
  except NonFiniteLossError as e:
    print(str(e), file=sys.stderr)
    sys.exit(3)

  from zebra_jax.distill.context import RunContext
  ctx = RunContext(cfg, os.path.join(root, "shared"), progress=False)
  tok = ctx.tokenizer()
  heldout = report.heldout_sequences(cfg, tok, _HELDOUT.value or None)
  eval_dir = os.path.join(root, "eval")
  os.makedirs(eval_dir, exist_ok=True)
  teacher = load_model(os.path.join(root, "shared", "teacher", "model"), dtype=_DTYPE.value)
  kw = dict(seq_len=cfg.data.seq_len, decode_batch=_DBATCH.value,
            contexts=[int(c) for c in _CONTEXTS.value], decode_steps=_DSTEPS.value,
            sample_tokens=_SAMPLE.value)
  models, timings = {}, {}
  for name in ["teacher"] + [v.name for v in variants]:
    path = os.path.join(eval_dir, f"{name}.json")
    if os.path.exists(path):
      import json
      with open(path) as f:
        models[name] = json.load(f)
    else:
      model = teacher if name == "teacher" else load_model(
          os.path.join(root, name, "kd", "model"), dtype=_DTYPE.value)
      print(f"[report] evaluating {name}", flush=True)
      models[name] = report.evaluate_model(model, teacher, tok, heldout, **kw)
      report.save_json(models[name], path)
    timings[f"eval {name}"] = models[name]["eval_seconds"]
  for name, s in summaries.items():
    timings[f"train {name}"] = s["wall_time_s"]
  results = {
      "environment": report.environment(),
      "meta": {"command": command, "root": root, "budgets": [int(b) for b in budgets],
               "decode_batch": _DBATCH.value, "contexts": kw["contexts"],
               "config": cfg.name, "written": time.strftime("%Y-%m-%d %H:%M:%S")},
      "variants": {v.name: {"kind": v.kind, "budget": v.budget, "placement": v.placement,
                            "ild": v.ild, "mla_layers": summaries[v.name].get("mla_layers"),
                            "training": summaries[v.name].get("training")} for v in variants},
      "models": models, "timings": timings}
  report.save_json(results, os.path.join(root, "results.json"))
  md = report.markdown(results)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(md + "\n")
  if _DOC.value:
    report.write_doc(_DOC.value, md)
  print(md)


if __name__ == "__main__":
  app.run(main)
