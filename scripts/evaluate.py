"""Evaluate a zebra-jax model: perplexity, teacher agreement, KV cache, needle in a haystack, lm-eval.

    python scripts/evaluate.py perplexity --checkpoint CKPT --files a.txt b.txt [--tokenizer TOK]
        [--max-length 2048] [--stride 1024] [--batch-size 8] [--dtype float32] [--json out.json]
    python scripts/evaluate.py agreement --checkpoint STUDENT --teacher TEACHER --files a.txt ...
    python scripts/evaluate.py kv (--checkpoint CKPT | --preset zebra_3b_6mla22m2) [--seq-lens 2048]
    python scripts/evaluate.py needle --checkpoint CKPT [--tokenizer TOK] --lengths 1024 4096 16384
        [--depths 0 0.25 0.5 0.75 1] [--trials 2] [--max-new-tokens 12] [--no-cache]
    python scripts/evaluate.py lm-eval --model zebra_jax --model_args checkpoint=CKPT --tasks ...
    python scripts/evaluate.py suite --checkpoint CKPT [CKPT ...] [--teacher T|smollm2] [--out DIR]
        [--max_tokens 60000] [--tasks wn_definitions ...] [--no_chat] [--no_mc] [--limit N]
    python scripts/evaluate.py chat-validation --checkpoint kd=WD/kd/model dpo=WD/dpo/model
        [--teacher WD/teacher/model] [--num 128] [--max-new-tokens 256] [--json out.json]
    python scripts/evaluate.py compare A/suite.json:LABEL B/suite.json:LABEL [--criterion chat
        --chat A.json:LABEL B.json:LABEL] [--min-gain 0.004] [--json out.json]

CKPT is anything `zebra_jax.from_pretrained` reads (saved dir, HF dir, GGUF, exported hybrid, or
smollm2). The tokenizer defaults to the checkpoint's own files (a distilled model carries its
teacher's; `agreement` falls back to the teacher's, `suite` to the run config's). `lm-eval` passes everything after it to
lm-eval's own command line with the "zebra_jax" model registered. Results print as text; --json
also writes them as JSON. `suite` is the multi-domain held-out evaluation of docs/evaluation.md
(students next to their teacher; writes suite.json, suite.md and suite.png under --out).
`chat-validation` answers chat prompts about passages of the run's VALIDATION documents (never the
suite's prompts) and reports each model's repetition: the chat signal to choose a recipe on.
`compare` is the choice rule (zebra_jax/eval/compare.py): recipe B over A on the validation splits
only, the held-out rows printed after the decision.
"""

from __future__ import annotations

import json
import os
import sys

try:
  import zebra_jax  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installation
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zebra_jax.assets import use_compilation_cache  # noqa: E402
from zebra_jax.cli import ScriptError, argument_parser, script_errors, with_help_formatter  # noqa: E402
from zebra_jax import presets  # noqa: E402
from zebra_jax.eval.compare import compare, markdown, model_domains  # noqa: E402


def _load(path, dtype):
  from zebra_jax.convert import from_pretrained  # lazy: --help runs without jax, flax, optax

  return from_pretrained(path, dtype=dtype, progress=True)


def _tokenizer(tok, ckpt, fallback=None):
  from zebra_jax.convert import CheckpointError, load_tokenizer  # lazy: --help runs without jax, flax, optax

  try:
    return load_tokenizer(tok or ckpt)
  except CheckpointError:
    if tok or fallback is None:
      raise
    return load_tokenizer(fallback)


def _config_only(path: str):
  """The model config without reading weights, where the format allows it."""
  from zebra_jax.convert import resolve_checkpoint  # lazy: --help runs without jax, flax, optax

  ck = resolve_checkpoint(path)
  if ck.kind == "saved":
    from zebra_jax.convert.orbax_io import load_config  # lazy: --help runs without jax, flax, optax

    return load_config(ck.path)
  if ck.kind == "hybrid":
    # lazy: --help runs without jax, flax, optax
    from zebra_jax.convert.hybrid_import import load_hybrid_config

    return load_hybrid_config(ck.path)
  if ck.kind == "hf":
    from zebra_jax.convert.hf import load_hf_config  # lazy: --help runs without jax, flax, optax

    return load_hf_config(ck.path)
  from zebra_jax.convert.gguf import gguf_reader, gguf_config  # lazy: --help runs without jax, flax, optax

  return gguf_config(gguf_reader(ck.path), ck.path)[0]  # the GGUF's metadata, no tensors read


def _dump(res, path):
  if path:

    def default(o):
      return o.item() if hasattr(o, "item") else str(o)

    if isinstance(res, dict) and any(isinstance(k, tuple) for k in res.get("accuracy", {})):
      res = {**res, "accuracy": {f"{L}@{d}": v for (L, d), v in res["accuracy"].items()}}
    with open(path, "w") as f:
      json.dump(res, f, indent=2, default=default)
    print(f"wrote {path}")


def _texts_to_tokens(tok, files, add_bos=True):
  """One token sequence per document: a text file, or each {"text"} row of a *.jsonl file."""
  from zebra_jax.eval.ppl import encode_text, file_documents  # lazy: --help runs without jax, flax, optax

  return [encode_text(tok, d, add_bos) for p in files for d in file_documents(p)]


def cmd_perplexity(a):
  from zebra_jax.eval import perplexity_of_files  # lazy: zebra_jax.eval's lazy exports pull in jax, flax

  model = _load(a.checkpoint, a.dtype)
  res = perplexity_of_files(
    model,
    _tokenizer(a.tokenizer, a.checkpoint),
    a.files,
    max_length=a.max_length,
    stride=a.stride,
    batch_size=a.batch_size,
  )
  for e in res["per_sequence"]:
    print(
      f"{e['file']}: ppl {e['perplexity']:.4f} over {e['tokens']} tokens, {e['bits_per_byte']:.4f} bits/byte"
    )
  print(f"all: ppl {res['perplexity']:.4f} over {res['tokens']} tokens, {res['bits_per_byte']:.4f} bits/byte")
  _dump(res, a.json)


def cmd_agreement(a):
  from zebra_jax.eval import teacher_agreement  # lazy: zebra_jax.eval's lazy exports pull in jax, flax

  student, teacher = _load(a.checkpoint, a.dtype), _load(a.teacher, a.dtype)
  seqs = _texts_to_tokens(_tokenizer(a.tokenizer, a.checkpoint, fallback=a.teacher), a.files)
  res = teacher_agreement(
    student, teacher, seqs, max_length=a.max_length, stride=a.stride, batch_size=a.batch_size
  )
  print(
    f"top-1 agreement {100 * res['top1']:.2f}%, mean KL(teacher||student) {res['kl']:.4f} nats "
    f"over {res['tokens']} tokens; ppl student {res['student_perplexity']:.3f}, teacher "
    f"{res['teacher_perplexity']:.3f}"
  )
  _dump(res, a.json)


def cmd_kv(a):
  # lazy: zebra_jax.eval's lazy exports pull in jax, flax
  from zebra_jax.eval import format_kv_report, kv_cache_report

  if (a.checkpoint is None) == (a.preset is None):
    raise ScriptError("kv: give exactly one of --checkpoint / --preset")
  config = presets.get_preset(a.preset) if a.preset else _config_only(a.checkpoint)
  teacher = presets.get_preset(a.teacher_preset) if a.teacher_preset else None
  res = kv_cache_report(config, teacher, seq_lens=a.seq_lens, batch=a.batch, dtype=a.cache_dtype)
  print(format_kv_report(res))
  _dump(res, a.json)


def cmd_needle(a):
  # lazy: zebra_jax.eval's lazy exports pull in jax, flax
  from zebra_jax.eval import format_needle_grid, needle_in_a_haystack

  model = _load(a.checkpoint, a.dtype)
  res = needle_in_a_haystack(
    model,
    _tokenizer(a.tokenizer, a.checkpoint),
    a.lengths,
    a.depths,
    trials=a.trials,
    max_new_tokens=a.max_new_tokens,
    seed=a.seed,
    batch_size=a.batch_size,
    use_cache=not a.no_cache,
  )
  print(format_needle_grid(res))
  _dump(res, a.json)


def cmd_suite(a):
  # lazy: --help runs without grain, orbax, jax
  from zebra_jax.eval.suite import read_run_config, recorded_teacher, run_suite

  students = list(a.checkpoint)
  if a.labels:
    if len(a.labels) != len(students):
      raise ScriptError(f"{len(a.labels)} --labels for {len(students)} checkpoints")
    students = list(zip(a.labels, students))
  for s in students:  # before the teacher's lookup, whose message would hide a mistyped path
    path = s[1] if isinstance(s, tuple) else s.split("=")[-1]
    if os.sep in path and not os.path.exists(path):
      raise ScriptError(f"--checkpoint {path}: no such file or directory")
  teacher = a.teacher
  if teacher is None:
    first = students[0][1] if isinstance(students[0], tuple) else students[0].split("=")[-1]
    teacher = recorded_teacher(first)
    if teacher is None:
      raise ScriptError(
        "--teacher is required (no teacher recorded next to the checkpoint: <workdir>/teacher/model)"
      )
    print(f"teacher: {teacher} (recorded next to {first})")
  run_config = None
  if a.run_config:
    try:
      run_config = read_run_config(a.run_config)
    except ValueError as e:
      raise ScriptError(f"--run_config {a.run_config}: {e}") from None
  res = run_suite(
    students,
    teacher,
    a.out,
    tokenizer=a.tokenizer,
    max_tokens=a.max_tokens or None,
    seq_len=a.seq_len,
    tasks=a.tasks,
    chat=not a.no_chat,
    mc=not a.no_mc,
    chat_tokens=a.chat_tokens,
    dtype=a.dtype,
    batch_size=a.batch_size,
    lm_eval_batch_size=a.lm_eval_batch_size,
    limit=a.limit,
    run_config=run_config,
    cache_dir=a.cache_dir,
  )
  with open(os.path.join(a.out, "suite.md")) as f:
    print(f.read())
  print(f"wrote {os.path.join(a.out, 'suite.json')}, suite.md, suite.png ({res['meta']['seconds']:.0f}s)")
  _dump(res, a.json)


def _labelled(spec: str, what: str):
  """(parsed JSON, label) of a FILE.json:LABEL argument."""
  path, sep, label = spec.rpartition(":")
  if not sep or not path or not label:
    raise ScriptError(f"{what} {spec!r}: expected FILE.json:LABEL")
  try:
    with open(path) as f:
      return json.load(f), label
  except OSError as e:
    raise ScriptError(f"{what} {path}: {e.strerror or e}") from None
  except ValueError as e:
    raise ScriptError(f"{what} {path}: not JSON ({e})") from None


def cmd_compare(a):
  (suite_a, label_a), (suite_b, label_b) = (_labelled(s, "suite") for s in (a.a, a.b))
  chats = [None, None]
  if a.chat:
    if len(a.chat) != 2:
      raise ScriptError("--chat takes two FILE.json:LABEL arguments (A's and B's chat-validation results)")
    for i, spec in enumerate(a.chat):
      res, label = _labelled(spec, "--chat")
      models = res.get("models", {})
      if label not in models:
        raise ScriptError(f"--chat {spec}: no model {label!r} (it has: {', '.join(models) or 'none'})")
      chats[i] = models[label]
  try:
    res = compare(
      model_domains(suite_a, label_a),
      model_domains(suite_b, label_b),
      criterion=a.criterion,
      min_gain=a.min_gain,
      chat_a=chats[0],
      chat_b=chats[1],
    )
  except ValueError as e:
    raise ScriptError(str(e)) from None
  print(markdown(res, label_a, label_b))
  _dump(res, a.json)


def cmd_chat_validation(a):
  # lazy: --help runs without grain, orbax, jax
  from zebra_jax.eval.chat_validation import chat_validation, validation_chat_prompts

  # lazy: as above (the suite module loads ml_collections)
  from zebra_jax.eval.suite import read_run_config, recorded_teacher, run_config_of

  students = []
  for spec in a.checkpoint:
    label, _, path = spec.rpartition("=")
    if not os.path.exists(path):
      raise ScriptError(f"--checkpoint {path}: no such file or directory")
    students.append((label or os.path.basename(os.path.dirname(os.path.abspath(path))), path))
  if a.num < 1 or a.max_new_tokens < 1 or a.batch_size < 1:
    raise ScriptError(
      f"--num {a.num}, --max-new-tokens {a.max_new_tokens}, --batch-size {a.batch_size}: each must be >= 1"
    )
  first = students[0][1]
  teacher = a.teacher or recorded_teacher(first)
  if teacher is None:
    raise ScriptError(
      "--teacher is required (no teacher recorded next to the checkpoint: <workdir>/teacher/model)"
    )
  try:
    cfg = read_run_config(a.run_config) if a.run_config else run_config_of(first)
  except ValueError as e:
    raise ScriptError(f"--run_config {a.run_config or first}: {e}") from None
  if cfg is None:
    raise ScriptError(f"--run_config is required ({first} is not a run's <workdir>/<stage>/model)")
  tokenizer = _tokenizer(a.tokenizer, first, fallback=teacher)
  prompts = validation_chat_prompts(cfg, tokenizer, a.num)
  models = {"teacher": _load(teacher, a.dtype)} | {label: _load(path, a.dtype) for label, path in students}
  res = chat_validation(models, tokenizer, prompts, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
  res = {"settings": {"num": a.num, "max_new_tokens": a.max_new_tokens, "seed": int(cfg.seed)}, "models": res}
  _dump(res, a.json)


@script_errors()
def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == "lm-eval":
    from zebra_jax.eval.lm_eval_adapter import main as lm_main  # lazy: --help runs without lm_eval, jax, flax

    lm_main(argv[1:])
    return 0
  p = argument_parser(__doc__)
  sub = p.add_subparsers(dest="cmd", required=True)

  def common(sp, ckpt=True):
    if ckpt:
      sp.add_argument(
        "--checkpoint", required=True, help="saved model dir, HF dir, exported hybrid dir, .gguf or smollm2"
      )
      sp.add_argument(
        "--tokenizer", default=None, help="HF dir, .gguf, smollm2 or byte (default: the checkpoint's own)"
      )
      sp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    sp.add_argument("--json", default=None, help="also write the results here")

  sp = sub.add_parser("perplexity", help="perplexity of text files")
  common(sp)
  sp.add_argument("--files", nargs="+", required=True, help="UTF-8 text files to score")
  sp.add_argument("--max-length", type=int, default=2048, help="tokens per scored window")
  sp.add_argument(
    "--stride", type=int, default=None, help="tokens between window starts (None: --max-length, no overlap)"
  )
  sp.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
  sp.set_defaults(fn=cmd_perplexity)

  sp = sub.add_parser("agreement", help="top-1 agreement and KL against a teacher")
  common(sp)
  sp.add_argument("--teacher", required=True, help="the reference model (any --checkpoint form)")
  sp.add_argument("--files", nargs="+", required=True, help="UTF-8 text files to score")
  sp.add_argument("--max-length", type=int, default=2048, help="tokens per scored window")
  sp.add_argument(
    "--stride", type=int, default=None, help="tokens between window starts (None: --max-length, no overlap)"
  )
  sp.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
  sp.set_defaults(fn=cmd_agreement)

  sp = sub.add_parser("kv", help="KV-cache report from the config")
  common(sp, ckpt=False)
  sp.add_argument("--checkpoint", default=None, help="a model whose config is reported")
  sp.add_argument("--preset", default=None, help="or a preset of zebra_jax.presets")
  sp.add_argument("--teacher-preset", default=None, help="the preset the fractions are taken of")
  sp.add_argument(
    "--seq-lens",
    type=int,
    nargs="+",
    default=[2048, 8192, 32768, 131072],
    help="context lengths (tokens) to report the cache size at",
  )
  sp.add_argument("--batch", type=int, default=1, help="sequences")
  sp.add_argument("--cache-dtype", default="bfloat16", help="dtype of the cached values")
  sp.set_defaults(fn=cmd_kv)

  sp = sub.add_parser("needle", help="needle in a haystack (pass-key retrieval)")
  common(sp)
  sp.add_argument("--lengths", type=int, nargs="+", required=True, help="haystack lengths in tokens")
  sp.add_argument(
    "--depths",
    type=float,
    nargs="+",
    default=[0.0, 0.25, 0.5, 0.75, 1.0],
    help="where the pass key sits, as a fraction of the haystack",
  )
  sp.add_argument("--trials", type=int, default=1, help="pass keys per length and depth")
  sp.add_argument("--max-new-tokens", type=int, default=12, help="tokens generated per answer")
  sp.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
  sp.add_argument("--seed", type=int, default=0, help="seed of the pass keys and filler")
  sp.add_argument("--no-cache", action="store_true", help="recompute instead of using the caches")
  sp.set_defaults(fn=cmd_needle)

  sp = sub.add_parser("compare", help="recipe B vs A on the validation splits (held-out rows after)")
  sp.add_argument("a", help="the current recipe's suite.json:LABEL")
  sp.add_argument("b", help="the candidate's suite.json:LABEL")
  sp.add_argument("--criterion", default="perplexity", choices=("perplexity", "chat"), help="what decides")
  sp.add_argument("--chat", nargs="+", default=None, help="A's and B's chat-validation FILE.json:LABEL")
  sp.add_argument("--min-gain", type=float, default=0.004, help="pooled ratio difference taken as noise")
  sp.add_argument("--json", default=None, help="also write the decision and the numbers here")
  sp.set_defaults(fn=cmd_compare)

  sp = sub.add_parser("chat-validation", help="repetition of chat answers about validation passages")
  sp.add_argument(
    "--checkpoint",
    nargs="+",
    required=True,
    help="student checkpoint(s) <workdir>/<stage>/model, or label=path",
  )
  sp.add_argument(
    "--teacher", default=None, help="default: <workdir>/teacher/model next to the first checkpoint"
  )
  sp.add_argument("--tokenizer", default=None, help="default: the first checkpoint's own, else the teacher's")
  sp.add_argument("--run_config", default=None, help="default: the config.json next to the first checkpoint")
  sp.add_argument("--num", type=int, default=128, help="prompts")
  sp.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per answer")
  sp.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
  sp.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="compute dtype")
  sp.add_argument("--json", default=None, help="also write the results (answers included) here")
  sp.set_defaults(fn=cmd_chat_validation)

  sp = sub.add_parser(
    "suite", help="multi-domain held-out evaluation next to the teacher (docs/evaluation.md)"
  )
  sp.add_argument(
    "--checkpoint",
    "--checkpoint2",
    dest="checkpoint",
    action="extend",
    nargs="+",
    required=True,
    help="student checkpoint(s), or label=checkpoint; repeatable",
  )
  sp.add_argument("--labels", nargs="+", default=None, help="one label per checkpoint")
  sp.add_argument(
    "--teacher",
    default=None,
    help="teacher checkpoint or 'smollm2' (default: "
    "<workdir>/teacher/model recorded next to the first checkpoint)",
  )
  sp.add_argument(
    "--tokenizer",
    default=None,
    help="default: the first checkpoint's own, else the run config's, else the teacher's",
  )
  sp.add_argument("--out", default="workdir/suite", help="directory for suite.json / .md / .png")
  sp.add_argument(
    "--max_tokens", "--max-tokens", type=int, default=60_000, help="tokens scored per domain (0: all)"
  )
  sp.add_argument("--seq_len", "--seq-len", type=int, default=2048, help="tokens per scored window")
  sp.add_argument("--tasks", nargs="+", default=None, help="multiple-choice tasks (default: all)")
  sp.add_argument("--limit", type=int, default=None, help="lm-eval --limit: items per task")
  sp.add_argument("--no_chat", "--no-chat", action="store_true", help="skip the chat answers")
  sp.add_argument("--no_mc", "--no-mc", action="store_true", help="skip the lm-eval tasks")
  sp.add_argument("--chat_tokens", type=int, default=128, help="new tokens per chat answer")
  sp.add_argument(
    "--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype of every model"
  )
  sp.add_argument("--batch_size", type=int, default=8, help="windows per forward pass")
  sp.add_argument("--lm_eval_batch_size", type=int, default=32, help="lm-eval's --batch_size")
  sp.add_argument(
    "--run_config",
    default=None,
    help="a run's config.json for the in-domain rows "
    "(default: the one recorded next to the first checkpoint)",
  )
  sp.add_argument(
    "--cache_dir",
    default=None,
    help="where the sources are cached (default: $ZEBRA_JAX_CACHE, ~/.cache/zebra_jax)",
  )
  sp.add_argument("--json", default=None, help="also write the results here")
  sp.set_defaults(fn=cmd_suite)
  # lm-eval is not an argparse sub-command (its arguments go to lm-eval's own parser): listed here
  p.epilog = (
    "lm-eval: everything after `lm-eval` goes to lm-eval's own command line, with the\n"
    "zebra_jax model registered (`python scripts/evaluate.py lm-eval run --help` lists its options):\n"
    "  python scripts/evaluate.py lm-eval --model zebra_jax --model_args checkpoint=CKPT \\\n"
    "      --tasks TASKS"
  )
  with_help_formatter(p)

  args = p.parse_args(argv)
  use_compilation_cache()  # exported as $JAX_COMPILATION_CACHE_DIR: the lm-eval subprocesses share it
  args.fn(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
