r"""Distil at several MLA budgets with ablations, then evaluate every student next to the teacher.

  python scripts/report.py --config configs/smollm2_135m.py --root workdir/smollm2_report \
      --budgets 9,4 --contexts 32768 --doc docs/results.md

Runs the config's budget-free stages once (teacher, samples, ild_mla, ild_mamba), then per budget a
SMART-placed student (select, assemble, kd), and at the first budget two ablations: uniform placement,
and no ILD (SMART's layers, blocks straight from the initialisers). Each model is evaluated as
soon as it exists (the teacher after the shared stages, each student after its KD) on the held-out
split: perplexity, top-1 agreement, KL, KV-cache fraction, and for the teacher and the main students
decode tokens/s at batch --decode_batch and each of --contexts plus greedy samples (ablations share
their main variant's layer mix: quality only, unless --full_eval_ablations). After every evaluation
it rewrites <root>/results.json, <root>/results.md and, with --doc, the generated block of that
markdown file, so a run cut short keeps what it measured.
Once every variant is trained, the multi-domain suite (zebra_jax/eval/suite.py, docs/evaluation.md)
runs for the teacher and every student: per-domain perplexity / top-1 / KL on the held-out sources
and the validation split of the training sources, zero-shot multiple-choice tasks through the lm-eval
command line (% of the teacher's accuracy retained), chat answers; its tables and chart
(<root>/suite/suite.png, copied next to --doc) join the report (--nosuite: leave it out).
Any --config.x.y=v override applies to every run. Killed at any point (e.g. a 10-minute job limit),
the same command resumes: training from its last checkpoint, finished evaluations from their JSON.
Exit codes as scripts/distill.py: 143 preempted (SIGTERM; rerun to resume), 3 non-finite loss.
"""

from __future__ import annotations

import json
import os
import sys
import time

try:
  import zebra_jax  # noqa: F401
except ImportError:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from zebra_jax._io import write_json  # noqa: E402
from zebra_jax.assets import use_compilation_cache  # noqa: E402
from zebra_jax.cli import HELP_ARGS, ScriptError, absl_help, parse_absl_flags, script_errors  # noqa: E402
from zebra_jax.distill.experiment import plan, run_experiment  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "python config file with get_config()", lock_config=False
)
_ROOT = flags.DEFINE_string("root", None, "experiment directory (default: workdir/<name>_report)")
_BUDGETS = flags.DEFINE_list("budgets", None, "MLA layer budgets (default: the config's model.n_mla)")
_ABL = flags.DEFINE_bool("ablations", True, "also run uniform placement and no-ILD at the first budget")
_ABL_LIST = flags.DEFINE_list(
  "ablation_list",
  None,
  "ablations to run at the first budget instead "
  "of --ablations' two: any of uniform, no_ild, kd_all (KD trains every "
  "parameter group), kd_freeze (KD freezes embeddings and MLPs), and KD "
  "sweeps kd:<field>=<value> (one KD setting changed, e.g. "
  "kd:ce_weight=0.1, kd:lr_scale.mixer=2)",
)
_CONTEXTS = flags.DEFINE_list(
  "contexts", ["8192"], "decode-throughput context lengths ('': none, quality only)"
)
_DBATCH = flags.DEFINE_integer("decode_batch", 48, "decode-throughput batch size")
_DSTEPS = flags.DEFINE_integer("decode_steps", 64, "timed decode steps per measurement")
_SAMPLE = flags.DEFINE_integer("sample_tokens", 64, "new tokens per sample prompt")
_STEMP = flags.DEFINE_float(
  "sample_temperature",
  0.7,
  "also show samples drawn at this temperature (with --sample_top_p; 0: greedy samples only)",
)
_STOPP = flags.DEFINE_float("sample_top_p", 0.9, "nucleus of the drawn samples")
_HELDOUT = flags.DEFINE_integer(
  "heldout_limit_tokens", 0, "score only about this many held-out tokens (0: all; for smoke runs)"
)
_FULL_ABL = flags.DEFINE_bool(
  "full_eval_ablations",
  False,
  "also measure decode speed and samples of the ablations (same layer mix as their main variant)",
)
_DTYPE = flags.DEFINE_string("eval_dtype", "bfloat16", "compute dtype of the evaluated models")
_DOC = flags.DEFINE_string("doc", None, "markdown file whose generated results block to replace")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "disable progress bars")
_SUITE = flags.DEFINE_bool("suite", True, "run the multi-domain suite once every model is trained")
_SUITE_TOKENS = flags.DEFINE_integer("suite_max_tokens", 60_000, "suite: tokens scored per domain (0: all)")
_SUITE_TASKS = flags.DEFINE_list("suite_tasks", None, "suite: multiple-choice tasks (default: all)")
_SUITE_LIMIT = flags.DEFINE_integer("suite_limit", 0, "suite: lm-eval items per task (0: all; smoke runs)")
_SUITE_CHAT = flags.DEFINE_bool("suite_chat", True, "suite: chat answers of every model")
_SUITE_BATCH = flags.DEFINE_integer("suite_lm_eval_batch", 32, "suite: lm-eval batch size")
_SHARED_FROM = flags.DEFINE_string(
  "shared_from",
  None,
  "another report root whose finished shared "
  "stages (teacher, samples, ILD) to link instead of running them; "
  "refused if made with other settings for those stages",
)


@script_errors()  # exit 2 with one line for config / workdir / data errors, 3, 4, 143 (cli.py)
def main(argv):
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config is required, e.g. --config configs/smollm2_135m.py")
  from zebra_jax.convert.orbax_io import load_model  # lazy: --help runs without jax, flax, optax
  from zebra_jax.data.prompts import heldout_sequences  # lazy: --help runs without grain, orbax, jax
  from zebra_jax.eval import report  # lazy: --help runs without grain, orbax, jax

  use_compilation_cache()  # the students of a sweep and their evaluations share compiled programs

  budgets = _BUDGETS.value or [cfg.model.n_mla]
  variants = plan(budgets, ablations=_ABL_LIST.value if _ABL_LIST.value is not None else _ABL.value)
  if _SUITE.value:  # the suite runs once every variant is trained: its settings are checked now
    from zebra_jax.eval.suite import check_settings  # lazy: --help runs without grain, orbax, jax

    try:
      check_settings(tasks=_SUITE_TASKS.value or None, limit=_SUITE_LIMIT.value or None)
    except ValueError as e:  # "tasks: ..." / "limit ..." -> the flag's name
      raise ScriptError(f"--suite_{e}") from None
  root = os.path.abspath(_ROOT.value or os.path.join("workdir", f"{cfg.name}_report"))
  command = "python scripts/report.py " + " ".join(sys.argv[1:])
  eval_dir = os.path.join(root, "eval")
  kw = dict(
    seq_len=cfg.data.seq_len,
    decode_batch=_DBATCH.value,
    contexts=[int(c) for c in _CONTEXTS.value],
    decode_steps=_DSTEPS.value,
    sample_tokens=_SAMPLE.value,
    sampling=(dict(temperature=_STEMP.value, top_p=_STOPP.value, seed=0) if _STEMP.value > 0 else None),
  )
  kinds = {v.name: v for v in variants}
  state = {"models": {}, "summaries": {}}

  def evaluate(name, model_dir):
    """Evaluates one model (or reads its finished JSON) and rewrites the report with every model
    evaluated so far, so a run cut short still leaves the numbers it got."""
    path = os.path.join(eval_dir, f"{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        state["models"][name] = json.load(f)
    else:
      if "teacher" not in state:
        from zebra_jax.distill.context import RunContext  # lazy: --help runs without jax, flax, optax

        ctx = RunContext(cfg, os.path.join(root, "shared"), progress=False)
        state["tok"] = ctx.tokenizer()
        state["heldout"] = heldout_sequences(cfg, state["tok"], _HELDOUT.value or None)
        state["teacher"] = load_model(os.path.join(root, "shared", "teacher", "model"), dtype=_DTYPE.value)
      teacher = state["teacher"]
      model = teacher if name == "teacher" else load_model(model_dir, dtype=_DTYPE.value)
      # Ablations share their main variant's layer mix, so their decode speed is the same; they
      # are scored for quality only unless --full_eval_ablations.
      light = name in kinds and kinds[name].kind != "main" and not _FULL_ABL.value
      print(f"[report] evaluating {name}" + (" (quality only)" if light else ""), flush=True)
      t0 = time.time()
      row = report.evaluate_model(
        model, teacher, state["tok"], state["heldout"], decode=not light, samples=not light, **kw
      )
      print(
        f"[report] {name}: ppl {row['perplexity']:.3f} (teacher {row['teacher_perplexity']:.3f})"
        f", top-1 {row['top1']:.3f}, KL {row['kl']:.4f}, {time.time() - t0:.0f}s",
        flush=True,
      )
      os.makedirs(eval_dir, exist_ok=True)
      write_json(path, row)
      state["models"][name] = row
    write()

  def write():
    models, summaries = state["models"], state["summaries"]
    timings = {
      (
        f"train {n} (linked from {_SHARED_FROM.value})"
        if n == "shared" and _SHARED_FROM.value
        else f"train {n}"
      ): s["wall_time_s"]
      for n, s in summaries.items()
    }
    timings.update({f"eval {n}": m["eval_seconds"] for n, m in models.items()})
    results = {
      "environment": report.environment(),
      "meta": {
        "command": command,
        "root": root,
        "budgets": [int(b) for b in budgets],
        "decode_batch": _DBATCH.value,
        "contexts": kw["contexts"],
        "config": cfg.name,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "shared_from": _SHARED_FROM.value,
        "complete": all(v.name in models for v in variants),
      },
      "variants": {
        v.name: {
          "kind": v.kind,
          "budget": v.budget,
          "placement": v.placement,
          "ild": v.ild,
          "mla_layers": summaries[v.name].get("mla_layers"),
          "training": summaries[v.name].get("training"),
        }
        for v in variants
        if v.name in summaries
      },
      "models": models,
      "timings": timings,
    }
    if "suite" in state:
      results["suite"] = state["suite"]
      timings["suite (all models)"] = state["suite"]["meta"]["seconds"]
    write_json(os.path.join(root, "results.json"), results)
    md = report.markdown(results, chart=os.path.join("suite", "suite.png"))
    with open(os.path.join(root, "results.md"), "w") as f:
      f.write(md + "\n")
    if _DOC.value:
      chart = None
      png = os.path.join(root, "suite", "suite.png")
      if "suite" in state and os.path.exists(png):
        import shutil

        stem = os.path.splitext(os.path.basename(_DOC.value))[0]
        chart = f"{stem}_suite.png"
        shutil.copyfile(png, os.path.join(os.path.dirname(os.path.abspath(_DOC.value)), chart))
      report.write_doc(_DOC.value, report.markdown(results, chart=chart))
    state["md"] = md

  def after(name, summary):
    state["summaries"][name] = summary
    if name == "shared":
      evaluate("teacher", None)
    else:
      evaluate(name, os.path.join(root, name, "kd", "model"))

  def run_suite():
    """The multi-domain suite for the teacher and every student (finished models reused)."""
    from zebra_jax.eval import suite  # lazy: --help runs without grain, orbax, jax

    print("[report] multi-domain suite", flush=True)
    state["suite"] = suite.run_suite(
      [(v.name, os.path.join(root, v.name, "kd", "model")) for v in variants],
      os.path.join(root, "shared", "teacher", "model"),
      os.path.join(root, "suite"),
      tokenizer=suite.tokenizer_spec(cfg),
      run_config=cfg,
      max_tokens=_SUITE_TOKENS.value or None,
      seq_len=cfg.data.seq_len,
      tasks=_SUITE_TASKS.value or None,
      limit=_SUITE_LIMIT.value or None,
      chat=_SUITE_CHAT.value,
      chat_tokens=_SAMPLE.value,
      dtype=_DTYPE.value,
      lm_eval_batch_size=_SUITE_BATCH.value,
      log=lambda m: print(m, flush=True),
    )
    write()

  run_experiment(
    cfg, root, variants, progress=not _NO_PROGRESS.value, after_each=after, shared_from=_SHARED_FROM.value
  )
  if _SUITE.value:
    run_suite()
  print(state["md"])


if __name__ == "__main__":
  if any(a in HELP_ARGS for a in sys.argv[1:]):
    absl_help(__doc__)
  app.run(main, flags_parser=parse_absl_flags)
