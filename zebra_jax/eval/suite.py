"""A multi-domain held-out evaluation of distilled students next to their teacher.

    from zebra_jax.eval.suite import run_suite
    res = run_suite([("mla8", "root/mla8_smart/kd/model")], "smollm2", "workdir/suite")

For the teacher and each student (docs/evaluation.md says what every number means):
  domains   perplexity on each held-out source of `zebra_jax.data.registry` (never trained on) and
            on the validation split of the run's training sources (in-domain rows), at most
            `max_tokens` tokens each; for students also top-1 agreement with the teacher and mean
            KL(teacher || student) at every position (eval/agreement.py)
  tasks     zero-shot multiple choice built from held-out data (eval/tasks.py), run through the real
            lm-eval command line (`python -m zebra_jax.eval.lm_eval_adapter --model zebra_jax ...`)
            once per model: acc and acc_norm with standard errors, and for students the % of the
            teacher's accuracy retained (student / teacher), per task and on average
  chat      greedy and sampled (temperature 0.7, top-p 0.9, seed 0) answers to CHAT_PROMPTS,
            rendered with the tokenizer's chat template
Writes <out_dir>/suite.json, suite.md and suite.png (what each student keeps per domain and per
task, teacher = 100%). Finished models are cached in <out_dir>/models/<label>.json (reused when
their checkpoint and settings match), so a run cut short resumes.
"""

from __future__ import annotations

import datetime
import glob
import json
import math
import os
import random
import subprocess
import sys
import time
from typing import Sequence

from zebra_jax._io import write_json
from zebra_jax.data.prompts import (
  CHAT_PROMPTS,
  chat_stop_tokens,
  decode_text,
  heldout_sequences,
  prompt_ids,
  repeated_ngram_share,
)
from zebra_jax.data import load_tokenizer, registry
from zebra_jax.data.pipeline import validation_documents
from zebra_jax.data.tokenize import encode_document, eos_id
from zebra_jax.eval.tasks import build_tasks, describe_source
from zebra_jax.eval.tasks import task_names as known_tasks

SAMPLING = {"temperature": 0.7, "top_p": 0.9, "seed": 0}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- checkpoints -----------------------------------------------------------------------------------
def resolve_checkpoint(spec: str) -> str:
  """A named checkpoint ("smollm2") -> its local path (zebra_jax.convert.named_checkpoint); else
  `spec` as given (from_pretrained resolves the rest)."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.convert import named_checkpoint

  return named_checkpoint(spec) or os.fspath(spec)


def _workdir_of(ckpt: str) -> str | None:
  """The run workdir of a stage artifact <workdir>/<stage>/model, if `ckpt` is one."""
  ckpt = os.path.abspath(ckpt)
  if os.path.basename(ckpt) == "model":
    wd = os.path.dirname(os.path.dirname(ckpt))
    if os.path.isfile(os.path.join(wd, "config.json")) or os.path.isdir(os.path.join(wd, "teacher")):
      return wd
  return None


def run_config_of(ckpt: str):
  """The run config (ConfigDict) recorded next to a pipeline artifact, or None."""
  wd = _workdir_of(ckpt)
  if wd is None or not os.path.isfile(os.path.join(wd, "config.json")):
    return None
  path = os.path.join(wd, "config.json")
  try:
    return read_run_config(path)
  except ValueError as e:
    raise ValueError(f"{path}: the run config recorded next to {ckpt} is {e}") from None


def read_run_config(path: str):
  """A run's config.json as a ConfigDict; ValueError saying what it is not ("not JSON (...)", "not a
  run's config.json (a JSON object)") for the caller to put after its own name for the file."""
  import ml_collections

  with open(path) as f:
    try:
      recorded = json.load(f)
    except ValueError as e:
      raise ValueError(f"not JSON ({e})") from None
  if not isinstance(recorded, dict):
    raise ValueError("not a run's config.json (a JSON object)")
  return ml_collections.ConfigDict(recorded)


def recorded_teacher(ckpt: str) -> str | None:
  """The teacher a pipeline student was distilled from: <workdir>/teacher/model when it exists,
  else the run config's teacher.path; None for anything else."""
  wd = _workdir_of(ckpt)
  if wd is None:
    return None
  art = os.path.join(wd, "teacher", "model")
  if os.path.exists(art):
    return art
  cfg = run_config_of(ckpt)
  path = cfg.teacher.path if cfg is not None and "teacher" in cfg else None
  return path if isinstance(path, str) and not path.startswith("random:") else None


def tokenizer_spec(cfg=None, teacher: str | None = None, student: str | None = None) -> str:
  """A tokenizer spec string that both this process and the lm-eval subprocess can load: the
  student checkpoint's own tokenizer files, else the run config's data.tokenizer, else its
  teacher.path, else the teacher checkpoint."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.convert.model_files import has_tokenizer

  if student is not None and os.path.isdir(student) and has_tokenizer(student):
    return os.path.abspath(student)
  spec = None
  if cfg is not None:
    spec = cfg.data.get("tokenizer", None) or cfg.teacher.get("path", None)
  spec = spec or teacher
  if spec is None:
    raise ValueError("no tokenizer: pass one (or a teacher checkpoint that carries it)")
  return "byte" if spec == "byte" else resolve_checkpoint(spec)


def _load_tokenizer(spec: str):
  return load_tokenizer(spec)


def _label(ckpt: str) -> str:
  wd = _workdir_of(ckpt)
  base = os.path.basename(wd) if wd else os.path.basename(os.path.normpath(ckpt))
  return os.path.splitext(base)[0] or "student"


# -- domains ---------------------------------------------------------------------------------------
def _doc_ids(tokenizer, doc, max_chars: int | None) -> list[int]:
  """Token ids of one document, BOS first when the tokenizer has one, no EOS. Text is cut to
  `max_chars` first (the token cap makes the rest unused); chat / pre-tokenised documents go
  through the pipeline's own encoder (data.tokenize.encode_document)."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.eval.ppl import encode_text

  if isinstance(doc, dict) and "text" in doc:
    doc = doc["text"]
  if isinstance(doc, str):
    return encode_text(tokenizer, doc[:max_chars] if max_chars else doc)
  ids = [int(t) for t in encode_document(tokenizer, doc)]
  if ids and ids[-1] == eos_id(tokenizer):
    ids = ids[:-1]
  bos = getattr(tokenizer, "bos_token_id", None)
  return ([bos] if bos is not None and (not ids or ids[0] != bos) else []) + ids


def capped_sequences(
  tokenizer, documents: Sequence, max_tokens: int | None, seed: int = 0
) -> list[list[int]]:
  """Token ids (BOS first when the tokenizer has one) of documents taken in a fixed-seed random
  order until `max_tokens` tokens (the last one cut to fit); None: all of them."""
  order = list(range(len(documents)))
  random.Random(seed).shuffle(order)
  seqs, n = [], 0
  for i in order:
    doc = documents[i]
    if isinstance(doc, str) and not doc.strip():
      continue
    # no token is longer than 16 characters
    ids = _doc_ids(tokenizer, doc, max(64, (max_tokens - n) * 16) if max_tokens else None)
    if max_tokens and n + len(ids) > max_tokens:
      ids = ids[: max_tokens - n]
    if len(ids) >= 2:
      seqs.append(ids)
      n += len(ids)
    if max_tokens and n >= max_tokens:
      break
  return seqs


def domains(
  tokenizer, *, max_tokens: int | None = 60_000, cache_dir=None, run_config=None, seed: int = 0, log=print
) -> list[dict]:
  """The scored domains: each held-out source of the registry, then the in-domain rows (the
  validation split of each training source of `run_config.data`; without
  `pipeline.validation_documents`, the held-out split of data.source as prompts.heldout_sequences
  cuts it). Each: {"source", "kind", "split", "licence", "sequences"}."""
  out = []
  for src in (describe_source(registry, x) for x in registry.heldout_sources()):
    docs = registry.source_documents(src.name, cache_dir=cache_dir)
    out.append(
      {
        "source": src.name,
        "kind": getattr(src, "kind", "?"),
        "split": "held-out",
        "licence": getattr(src, "licence", None),
        "sequences": capped_sequences(tokenizer, docs, max_tokens, seed),
      }
    )
  if run_config is None:
    return out
  val = None
  try:
    val = validation_documents(run_config.data, cache_dir=cache_dir)
  except (NotImplementedError, KeyError, ValueError, FileNotFoundError) as e:
    log(f"[suite] validation_documents failed ({e}); using the held-out split of data.source")
  if val is not None:
    for name, docs in val.items():
      s = describe_source(registry, name)
      kind = getattr(s, "kind", "?")
      out.append(
        {
          "source": name,
          "kind": "training" if kind == "?" else kind,
          "split": "in-domain",
          "licence": getattr(s, "licence", None),
          "sequences": capped_sequences(tokenizer, docs, max_tokens, seed),
        }
      )
  else:
    seqs, n = [], 0
    for s in heldout_sequences(run_config, tokenizer, max_tokens):
      s = s[: max_tokens - n] if max_tokens else s
      if len(s) >= 2:
        seqs.append(s)
        n += len(s)
    out.append(
      {
        "source": str(run_config.data.source),
        "kind": "training data (held-out split)",
        "split": "in-domain",
        "licence": None,
        "sequences": seqs,
      }
    )
  return [d for d in out if d["sequences"]]


def _domain_key(d: dict) -> str:
  return f"{d['split']}:{d['source']}"


def score_domains(model, teacher, doms: list[dict], *, seq_len: int, batch_size: int = 8) -> dict:
  """{domain key: stats}: the teacher's perplexity when `model is teacher`, else student and
  teacher perplexity, top-1 agreement and mean KL(teacher || student)."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.eval.agreement import teacher_agreement

  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.eval.ppl import perplexity

  out = {}
  for d in doms:
    if model is teacher:
      r = perplexity(model, d["sequences"], max_length=seq_len, batch_size=batch_size)
      out[_domain_key(d)] = {"perplexity": r["perplexity"], "nll": r["nll"], "tokens": r["tokens"]}
    else:
      r = teacher_agreement(
        model, teacher, d["sequences"], max_length=seq_len, batch_size=max(1, batch_size // 2)
      )
      out[_domain_key(d)] = {
        "perplexity": r["student_perplexity"],
        "teacher_perplexity": r["teacher_perplexity"],
        "top1": r["top1"],
        "kl": r["kl"],
        "tokens": r["tokens"],
      }
  return out


# -- multiple choice through the lm-eval command line ----------------------------------------------
def lm_eval_command(
  checkpoint: str,
  tasks: Sequence[str],
  include_path: str,
  output_path: str,
  *,
  tokenizer: str | None = None,
  dtype: str = "float32",
  batch_size: int = 16,
  max_length: int | None = None,
  limit: int | None = None,
  log_samples: bool = False,
) -> list[str]:
  margs = [f"checkpoint={resolve_checkpoint(checkpoint)}", f"dtype={dtype}"]
  if tokenizer:
    margs.append(f"tokenizer={tokenizer}")
  if max_length:
    margs.append(f"max_length={max_length}")
  cmd = [
    sys.executable,
    "-m",
    "zebra_jax.eval.lm_eval_adapter",
    "--model",
    "zebra_jax",
    "--model_args",
    ",".join(margs),
    "--tasks",
    ",".join(tasks),
    "--include_path",
    os.path.abspath(include_path),
    "--output_path",
    os.path.abspath(output_path),
    "--batch_size",
    str(batch_size),
  ]
  if limit:
    cmd += ["--limit", str(limit)]
  if log_samples:
    cmd.append("--log_samples")
  return cmd


def _float(x):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return None
  return None if math.isnan(x) else x


def parse_lm_eval_output(output_path: str, tasks: Sequence[str]) -> dict:
  """{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}} (plus "samples": the
  logged per-item records when --log_samples was on) from lm-eval's newest results_*.json."""
  found = sorted(
    glob.glob(os.path.join(output_path, "**", "results_*.json"), recursive=True), key=os.path.getmtime
  )
  if not found:
    raise FileNotFoundError(f"lm-eval wrote no results_*.json under {output_path}")
  with open(found[-1]) as f:
    res = json.load(f)
  out = {}
  for t in tasks:
    r = res["results"].get(t)
    if r is None:
      raise KeyError(f"lm-eval results have no task {t!r} (got {sorted(res['results'])})")
    n = res.get("n-samples", {}).get(t, {})
    out[t] = {
      "acc": _float(r.get("acc,none")),
      "acc_stderr": _float(r.get("acc_stderr,none")),
      "acc_norm": _float(r.get("acc_norm,none")),
      "acc_norm_stderr": _float(r.get("acc_norm_stderr,none")),
      "n": n.get("effective", n.get("original")),
    }
    samples = sorted(
      glob.glob(os.path.join(os.path.dirname(found[-1]), f"samples_{t}_*.jsonl")), key=os.path.getmtime
    )
    if samples:
      with open(samples[-1]) as f:
        out[t]["samples"] = [json.loads(line) for line in f if line.strip()]
  return out


def run_lm_eval(
  checkpoint: str,
  tasks: Sequence[str],
  include_path: str,
  output_path: str,
  *,
  log=print,
  timeout: float | None = None,
  **kw,
) -> dict:
  """Runs lm-eval's command line in a subprocess for one model; returns parse_lm_eval_output.

  The child gets XLA_PYTHON_CLIENT_PREALLOCATE=false (this process may already hold most of the
  accelerator's memory) and offline Hugging Face flags (the task data are local files)."""
  os.makedirs(output_path, exist_ok=True)
  cmd = lm_eval_command(checkpoint, tasks, include_path, output_path, **kw)
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  env.setdefault("HF_DATASETS_OFFLINE", "1")
  env.setdefault("HF_HUB_OFFLINE", "1")
  env.setdefault("TOKENIZERS_PARALLELISM", "false")
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  log(f"[suite] lm-eval: {' '.join(cmd)}")
  t0 = time.time()
  log_path = os.path.join(output_path, "lm_eval.log")
  with open(log_path, "w") as f:  # written as the child runs, so a killed run leaves its log
    f.write(f"$ {' '.join(cmd)}\n")
    f.flush()
    proc = subprocess.run(
      cmd, stdout=f, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=REPO, env=env
    )
  if proc.returncode != 0:
    with open(log_path) as f:
      tail = "\n".join(f.read().strip().splitlines()[-25:])
    raise RuntimeError(
      f"lm-eval exited {proc.returncode} after {time.time() - t0:.0f}s ({log_path}):\n{tail}"
    )
  log(f"[suite] lm-eval done in {time.time() - t0:.0f}s")
  return parse_lm_eval_output(output_path, tasks)


def retained(student: dict, teacher: dict, metric: str = "acc") -> dict:
  """% of the teacher's accuracy a student keeps: per task 100 * student / teacher, the mean of
  those, and 100 * (mean student accuracy) / (mean teacher accuracy) over the same tasks (the
  headline: Zebra-Llama reports the student's average zero-shot accuracy against the teacher's)."""
  per = {}
  s_acc, t_acc = [], []
  for t, tr in teacher.items():
    sr = student.get(t)
    if sr is None or sr.get(metric) is None or tr.get(metric) is None:
      continue
    s_acc.append(sr[metric])
    t_acc.append(tr[metric])
    per[t] = 100.0 * sr[metric] / tr[metric] if tr[metric] > 0 else None
  vals = [v for v in per.values() if v is not None]
  return {
    "per_task": per,
    "mean_of_ratios": sum(vals) / len(vals) if vals else None,
    "of_average": (100.0 * sum(s_acc) / sum(t_acc)) if t_acc and sum(t_acc) > 0 else None,
    "student_average": sum(s_acc) / len(s_acc) if s_acc else None,
    "teacher_average": sum(t_acc) / len(t_acc) if t_acc else None,
  }


# -- chat ------------------------------------------------------------------------------------------
def chat_answers(
  model,
  tokenizer,
  prompts: Sequence[str] = CHAT_PROMPTS,
  *,
  max_new_tokens: int = 128,
  sampling: dict | None = SAMPLING,
) -> dict:
  """{"greedy": [answer per prompt], "sampled": [...], "settings": sampling} via zebra_jax.generate."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.infer.generation import generate

  ids = [prompt_ids(tokenizer, {"chat": p}) for p in prompts]
  stops = chat_stop_tokens(model.config, tokenizer)

  def run(**kw):
    gens = generate(model, ids, max_new_tokens, stop_tokens=stops, **kw)
    return [decode_text(tokenizer, [t for t in g if int(t) not in stops]).strip() for g in gens]

  out = {"prompts": list(prompts), "greedy": run(temperature=0.0), "max_new_tokens": max_new_tokens}
  if sampling:
    out["sampled"] = run(**sampling)
    out["settings"] = dict(sampling)
  return out


# -- the suite -------------------------------------------------------------------------------------
def _normalise_students(students) -> list[tuple[str, str]]:
  if isinstance(students, (str, os.PathLike)):
    students = [students]
  if isinstance(students, dict):
    students = list(students.items())
  out = []
  for s in students:
    if isinstance(s, (tuple, list)):
      label, ckpt = s
    elif isinstance(s, str) and "=" in s and not os.path.exists(s):
      label, ckpt = s.split("=", 1)
    else:
      label, ckpt = _label(s), s
    out.append((str(label), os.fspath(ckpt)))
  labels = [label for label, _ in out]
  if len(set(labels)) != len(labels) or "teacher" in labels:
    raise ValueError(f"student labels must be distinct and not 'teacher': {labels}")
  return out


def _load_model(ckpt: str, dtype: str):
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.convert import from_pretrained

  return from_pretrained(resolve_checkpoint(ckpt), dtype=dtype)


def ensure_tasks(task_dir: str, tasks: Sequence[str] | None = None, *, cache_dir=None, log=print) -> dict:
  """{task: index entry} of the lm-eval tasks in task_dir, built there first when missing, when
  `tasks` asks for more, or when the folder was built elsewhere (its YAMLs name absolute paths)."""
  index = os.path.join(task_dir, "tasks.json")
  have, complete = {}, False
  if os.path.exists(index):
    with open(index) as f:
      saved = json.load(f)
    if saved.get("dir") == os.path.abspath(task_dir):
      have, complete = saved["tasks"], saved.get("complete", True)
    else:
      log(f"[suite] {task_dir} was built in {saved.get('dir')}; rebuilding its tasks here")
  # every task wanted (tasks=None) from a folder built for a few of them: build the rest
  if not have or (tasks and not set(tasks) <= set(have)) or (not tasks and not complete):
    build_tasks(task_dir, cache_dir=cache_dir, only=tasks, log=log)
    with open(index) as f:
      have = json.load(f)["tasks"]
  return have


def check_settings(
  *,
  tasks: Sequence[str] | None = None,
  seq_len: int = 2048,
  batch_size: int = 8,
  chat: bool = True,
  chat_tokens: int = 128,
  mc: bool = True,
  lm_eval_batch_size: int = 32,
  limit: int | None = None,
  max_tokens: int | None = None,
) -> None:
  """run_suite's settings that cannot work, refused before anything is loaded or scored (and by
  report.py before it trains): ValueError "<argument> ...", the argument named first."""
  if tasks is not None:
    known = known_tasks()
    unknown = [t for t in tasks if t not in known]
    if unknown:
      raise ValueError(f"tasks: unknown task(s) {unknown}; tasks: {known}")
  sizes = {"seq_len": (seq_len, 2), "batch_size": (batch_size, 1)}
  sizes.update({"chat_tokens": (chat_tokens, 1)} if chat else {})
  sizes.update({"lm_eval_batch_size": (lm_eval_batch_size, 1)} if mc else {})
  sizes.update({"limit": (limit, 1)} if limit is not None else {})
  for name, (value, least) in sizes.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
  if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens >= 0):
    raise ValueError(f"max_tokens must be >= 0 tokens per domain (0 or None: all), got {max_tokens!r}")


# What each saved section of a model's row depends on: a rerun reuses a section whose settings are
# unchanged, whatever else changed (run_suite's per-model cache).
SECTION_SETTINGS = {
  "domains": ("max_tokens", "seq_len", "dtype", "seed", "tokenizer", "teacher", "domains", "checkpoint"),
  "tasks": ("tasks", "limit", "seq_len", "dtype", "tokenizer", "checkpoint"),
  "chat": ("chat_tokens", "dtype", "seed", "tokenizer", "checkpoint"),
}


def run_suite(
  students,
  teacher: str | None,
  out_dir: str,
  *,
  tokenizer: str | None = None,
  max_tokens: int | None = 60_000,
  seq_len: int = 2048,
  tasks: Sequence[str] | None = None,
  chat: bool = True,
  chat_tokens: int = 128,
  dtype: str = "float32",
  batch_size: int = 8,
  lm_eval_batch_size: int = 32,
  lm_eval_dtype: str | None = None,
  limit: int | None = None,
  run_config=None,
  cache_dir=None,
  mc: bool = True,
  seed: int = 0,
  chart: bool = True,
  log=print,
) -> dict:
  """Evaluates the teacher and every student (see the module docstring); returns suite.json's dict.

  students: a checkpoint, a list of checkpoints / (label, checkpoint) pairs / "label=checkpoint",
  or {label: checkpoint}. teacher: a checkpoint or "smollm2"; None: the first student's recorded
  teacher (<workdir>/teacher/model). tokenizer: a spec both this process and lm-eval load ("byte",
  a GGUF, an HF dir; default: the first student's own files, else from run_config, else the
  teacher). run_config: a run config whose
  data section gives the in-domain rows (default: the first student's recorded one). tasks: task
  names to run (default: every task build_tasks makes); mc=False skips the lm-eval part, chat=False
  the chat answers; limit: lm-eval --limit (items per task, smoke runs)."""
  check_settings(
    tasks=tasks,
    seq_len=seq_len,
    batch_size=batch_size,
    chat=chat,
    chat_tokens=chat_tokens,
    mc=mc,
    lm_eval_batch_size=lm_eval_batch_size,
    limit=limit,
    max_tokens=max_tokens,
  )
  students = _normalise_students(students)
  if teacher is None:
    teacher = next((recorded_teacher(c) for _, c in students if recorded_teacher(c)), None)
    if teacher is None:
      raise ValueError("no teacher given and none recorded next to the students; pass teacher=")
  if run_config is None and students:
    run_config = run_config_of(students[0][1])
  tok_spec = tokenizer or tokenizer_spec(run_config, teacher, students[0][1] if students else None)
  tok = _load_tokenizer(tok_spec)
  out_dir = os.path.abspath(out_dir)
  os.makedirs(os.path.join(out_dir, "models"), exist_ok=True)
  t_start = time.time()

  doms = domains(tok, max_tokens=max_tokens, cache_dir=cache_dir, run_config=run_config, seed=seed, log=log)
  task_names: list[str] = []
  task_dir = os.path.join(out_dir, "tasks")
  if mc:
    have = ensure_tasks(task_dir, tasks, cache_dir=cache_dir, log=log)
    task_names = [t for t in (tasks or list(have)) if t in have]
    missing = set(tasks or ()) - set(task_names)
    if missing:
      log(f"[suite] tasks {sorted(missing)} could not be built; left out")
  settings = {
    "max_tokens": max_tokens,
    "seq_len": seq_len,
    "tasks": task_names,
    "chat": chat,
    "chat_tokens": chat_tokens,
    "dtype": dtype,
    "limit": limit,
    "seed": seed,
    "tokenizer": tok_spec,
    "teacher": os.path.abspath(resolve_checkpoint(teacher))
    if os.path.exists(resolve_checkpoint(teacher))
    else teacher,
    "domains": [[_domain_key(d), sum(map(len, d["sequences"]))] for d in doms],
  }

  teacher_model = None

  def evaluate(label: str, ckpt: str) -> dict:
    """One model's sections (domains, tasks, chat), each saved to models/<label>.json as soon as it
    is done, so a run cut short keeps what it measured and a rerun computes only what is missing."""
    nonlocal teacher_model
    path = os.path.join(out_dir, "models", f"{label}.json")
    want = {**settings, "checkpoint": os.path.abspath(ckpt) if os.path.exists(ckpt) else ckpt}
    sections = ["domains"] + (["tasks"] if task_names else []) + (["chat"] if chat else [])
    row = {"label": label, "settings": want}
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      old, new = saved.get("settings") or {}, json.loads(json.dumps(want))
      # a section is reused when the settings it depends on are unchanged, so a rerun that adds
      # the tasks or the chat answers to a domains-only suite keeps its domain rows
      kept = [
        s
        for s in SECTION_SETTINGS
        if s in saved and all(old.get(k) == new.get(k) for k in SECTION_SETTINGS[s])
      ]
      row.update({s: saved[s] for s in kept})
      row["seconds"] = saved.get("seconds", 0.0) if kept else 0.0
      if all(k in row for k in sections):
        log(f"[suite] {label}: reusing {path}")
        if old != new:
          write_json(path, row)
        return row
      if kept:
        log(f"[suite] {label}: reusing {[k for k in sections if k in row]} from {path}")
    t0 = time.time()
    model = None

    def models_loaded():
      nonlocal teacher_model, model
      if teacher_model is None:
        teacher_model = _load_model(teacher, dtype)
      if model is None:
        model = teacher_model if label == "teacher" else _load_model(ckpt, dtype)
      return model

    if "domains" not in row:
      log(f"[suite] {label}: domains")
      row["domains"] = score_domains(
        models_loaded(), teacher_model, doms, seq_len=seq_len, batch_size=batch_size
      )
      write_json(path, row)
    if task_names and "tasks" not in row:
      log(f"[suite] {label}: {len(task_names)} lm-eval tasks")
      row["tasks"] = run_lm_eval(
        ckpt,
        task_names,
        task_dir,
        os.path.join(out_dir, "lm_eval", label),
        tokenizer=tok_spec,
        dtype=lm_eval_dtype or dtype,
        batch_size=lm_eval_batch_size,
        max_length=seq_len,
        limit=limit,
        log=log,
      )
      write_json(path, row)
    if chat and "chat" not in row:
      log(f"[suite] {label}: chat answers")
      row["chat"] = chat_answers(models_loaded(), tok, max_new_tokens=chat_tokens)
    row["seconds"] = round(row.get("seconds", 0.0) + time.time() - t0, 1)
    write_json(path, row)
    return row

  models = {"teacher": evaluate("teacher", teacher)}
  for label, ckpt in students:
    models[label] = evaluate(label, ckpt)
  result = {
    "meta": {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "teacher": teacher,
      "students": {label: c for label, c in students},
      "tokenizer": tok_spec,
      "max_tokens": max_tokens,
      "seq_len": seq_len,
      "dtype": dtype,
      "limit": limit,
      "chat_prompts": list(CHAT_PROMPTS) if chat else [],
      "sampling": SAMPLING,
      "seconds": round(time.time() - t_start, 1),
    },
    "domains": [
      {
        "key": _domain_key(d),
        "source": d["source"],
        "kind": d["kind"],
        "split": d["split"],
        "licence": d["licence"],
        "tokens": models["teacher"]["domains"][_domain_key(d)]["tokens"],
      }
      for d in doms
    ],
    "tasks": task_names,
    "models": models,
    "retained": {
      label: {
        "acc": retained(models[label].get("tasks", {}), models["teacher"].get("tasks", {}), "acc"),
        "acc_norm": retained(models[label].get("tasks", {}), models["teacher"].get("tasks", {}), "acc_norm"),
      }
      for label, _ in students
    },
  }
  write_json(os.path.join(out_dir, "suite.json"), result)
  png = os.path.join(out_dir, "suite.png")
  if chart and students:
    suite_chart(result, png)
  with open(os.path.join(out_dir, "suite.md"), "w", encoding="utf-8") as f:
    f.write(suite_markdown(result, chart="suite.png" if chart and students else None) + "\n")
  return result


# -- markdown and chart ----------------------------------------------------------------------------
def _f(x, spec=".2f"):
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _printable(text: str) -> str:
  """One markdown line: newlines as " / ", other control characters and U+FFFD dropped."""
  text = text.strip().replace("\r", "").replace("\n", " / ").replace("\t", " ")
  return "".join(c for c in text if c.isprintable() and c != "\ufffd").strip()


def _acc(r: dict | None, metric: str) -> str:
  if not r or r.get(metric) is None:
    return "-"
  se = r.get(f"{metric}_stderr")
  return f"{100 * r[metric]:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def domain_rows(suite: dict) -> list[dict]:
  """One row per (domain, student): source, kind, split, tokens, teacher ppl, student ppl, ratio
  (student / teacher ppl), kept (teacher / student ppl, %), top-1, KL."""
  rows = []
  models = suite["models"]
  for d in suite["domains"]:
    tppl = models["teacher"]["domains"][d["key"]]["perplexity"]
    for label, m in models.items():
      if label == "teacher":
        continue
      s = m["domains"].get(d["key"])
      if s is None:
        continue
      rows.append(
        {
          "source": d["source"],
          "kind": d["kind"],
          "split": d["split"],
          "tokens": d["tokens"],
          "teacher_ppl": tppl,
          "model": label,
          "student_ppl": s["perplexity"],
          "ratio": s["perplexity"] / tppl,
          "kept": 100.0 * tppl / s["perplexity"],
          "top1": s["top1"],
          "kl": s["kl"],
        }
      )
  return rows


def suite_markdown(suite: dict, chart: str | None = None, heading: str = "###") -> str:
  models, meta = suite["models"], suite["meta"]
  students = [m for m in models if m != "teacher"]
  cap = (
    f"at most {meta['max_tokens']:,} tokens per domain"
    if meta.get("max_tokens")
    else "every token of each domain"
  )
  lines = [
    f"{heading} Multi-domain evaluation",
    "",
    f"Teacher `{meta['teacher']}`; students: {', '.join(students) or '-'}; {cap} (windows "
    f"of {meta['seq_len']} tokens, {meta['dtype']}). Held-out sources are never trained on; "
    "in-domain rows are the validation split of the training sources. ratio = student ppl / "
    "teacher ppl; top-1 = argmax agreement with the teacher; KL = mean KL(teacher || "
    "student) in nats per token.",
    "",
  ]
  lines += [
    "| source | kind | split | tokens | teacher ppl | model | student ppl | ratio | top-1 | KL |",
    "|" + " --- |" * 10,
  ]
  last = None
  for r in domain_rows(suite):
    first = (r["split"], r["source"]) != last
    last = (r["split"], r["source"])
    lines.append(
      "| "
      + " | ".join(
        [
          r["source"] if first else "",
          r["kind"] if first else "",
          r["split"] if first else "",
          f"{r['tokens']:,}" if first else "",
          _f(r["teacher_ppl"]) if first else "",
          r["model"],
          _f(r["student_ppl"]),
          f"{r['ratio']:.3f}",
          f"{100 * r['top1']:.1f}%",
          f"{r['kl']:.3f}",
        ]
      )
      + " |"
    )
  tasks = suite.get("tasks") or []
  if tasks:
    lim = f" (first {meta['limit']} items each)" if meta.get("limit") else ""
    lines += [
      "",
      f"{heading}# Zero-shot multiple choice (lm-eval){lim}",
      "",
      "Accuracy in % (± standard error) through the lm-eval command line; retained = "
      "student / teacher accuracy. Chance is 25%.",
      "",
    ]
    head = ["task", "items", "teacher acc", "teacher acc_norm"]
    for s in students:
      head += [f"{s} acc (retained)", f"{s} acc_norm (retained)"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    t_tasks = models["teacher"].get("tasks", {})
    for t in tasks:
      tr = t_tasks.get(t, {})
      cells = [t, str(tr.get("n", "-")), _acc(tr, "acc"), _acc(tr, "acc_norm")]
      for s in students:
        sr = models[s].get("tasks", {}).get(t)
        for metric in ("acc", "acc_norm"):
          ret = suite["retained"][s][metric]["per_task"].get(t)
          cells.append(f"{_acc(sr, metric)} ({'-' if ret is None else f'{ret:.1f}%'})")
      lines.append("| " + " | ".join(cells) + " |")
    cells = [
      "**average**",
      "",
    ]
    for metric in ("acc", "acc_norm"):
      ta = None
      for s in students[:1]:
        ta = suite["retained"][s][metric]["teacher_average"]
      cells.append(_f(None if ta is None else 100 * ta, ".1f"))
    for s in students:
      for metric in ("acc", "acc_norm"):
        r = suite["retained"][s][metric]
        sa = r["student_average"]
        cells.append(f"{_f(None if sa is None else 100 * sa, '.1f')} (**{_f(r['of_average'], '.1f')}%**)")
    lines.append("| " + " | ".join(cells) + " |")
    lines += [
      "",
      "Retained on average is 100 × (the student's mean accuracy) / (the teacher's), "
      "the Zebra-Llama headline; the mean of the per-task ratios is in suite.json.",
    ]
  if chart:
    lines += ["", f"![what each student keeps of the teacher, per domain and per task]({chart})"]
  first = models["teacher"].get("chat")
  if first:
    for kind, title in (
      ("greedy", "greedy"),
      ("sampled", "sampled with " + ", ".join(f"{k} {v}" for k, v in (first.get("settings") or {}).items())),
    ):
      if kind not in first:
        continue
      lines += ["", f"{heading}# Chat answers ({title}, at most {first['max_new_tokens']} tokens)", ""]
      loops = [
        f"{label} {100 * sum(map(repeated_ngram_share, ans)) / len(ans):.0f}%"
        for label, m in models.items()
        if (ans := (m.get("chat") or {}).get(kind))
      ]
      lines += [
        "Repetition (the share of an answer's word 4-grams that already occurred in it, mean over "
        "the prompts; a loop scores high): " + ", ".join(loops) + ".",
        "",
      ]
      for i, p in enumerate(first["prompts"]):
        lines += [f"**{p}**", ""]
        for label, m in models.items():
          ans = (m.get("chat") or {}).get(kind)
          if ans:
            text = _printable(ans[i]) or "(empty)"
            lines.append(f"- *{label}*: {text}")
        lines.append("")
  return "\n".join(lines).rstrip()


def suite_chart(suite: dict, path: str) -> str:
  """PNG: per domain teacher ppl / student ppl (%) and per task student acc / teacher acc (%) for
  each student, teacher = 100%."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  students = [m for m in suite["models"] if m != "teacher"]
  rows = domain_rows(suite)
  doms = [d["key"] for d in suite["domains"]]
  dom_names = [f"{d['source']}\n({d['split']})" for d in suite["domains"]]
  tasks = suite.get("tasks") or []
  ncols = 2 if tasks else 1
  fig, axes = plt.subplots(
    1,
    ncols,
    figsize=(max(6, 1.1 * len(doms) + 3) + (max(6, 1.1 * len(tasks) + 3) if tasks else 0), 4.8),
    squeeze=False,
  )
  width = 0.8 / max(1, len(students))

  def bars(ax, names, values, title):
    x = np.arange(len(names))
    for i, s in enumerate(students):
      v = [values[s].get(n) for n in range(len(names))]
      ax.bar(
        x + (i - (len(students) - 1) / 2) * width, [np.nan if y is None else y for y in v], width, label=s
      )
    ax.axhline(100, color="black", lw=1, ls="--", label="teacher = 100%")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% of the teacher")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)

  dv = {s: {} for s in students}
  for r in rows:
    dv[r["model"]][doms.index(f"{r['split']}:{r['source']}")] = r["kept"]
  bars(axes[0][0], dom_names, dv, "perplexity kept (teacher ppl / student ppl)")
  if tasks:
    tv = {
      s: {i: suite["retained"][s]["acc"]["per_task"].get(t) for i, t in enumerate(tasks)} for s in students
    }
    bars(axes[0][1], tasks, tv, "accuracy kept (student acc / teacher acc)")
  axes[0][-1].legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


__all__ = [
  "run_suite",
  "check_settings",
  "CHAT_PROMPTS",
  "SAMPLING",
  "domains",
  "capped_sequences",
  "score_domains",
  "run_lm_eval",
  "lm_eval_command",
  "parse_lm_eval_output",
  "retained",
  "chat_answers",
  "suite_markdown",
  "suite_chart",
  "domain_rows",
  "recorded_teacher",
  "run_config_of",
  "read_run_config",
  "tokenizer_spec",
  "resolve_checkpoint",
]
