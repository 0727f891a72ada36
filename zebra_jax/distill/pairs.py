"""The `pairs` stage: DPO preference pairs made by the run itself, the teacher's answer chosen over the
distilled student's own answer to the same chat prompt (SPIN, Chen et al. 2024: DPO against the
model's own generations, with reference answers as the chosen side; here the teacher's).

Why: KD trains the student on text the teacher or the corpus wrote, never on the states its own
decoding reaches, and a small student's long answers loop (run 10: 32% of a greedy answer's word
4-grams repeat, the teacher's 1%). DPO on (teacher answer, student answer) pairs pushes the student
away from what it does on its own towards what the teacher does there.

Prompts: `pairs.num_pairs` user messages built as the samples stage's chat prompts are (tasks about
passages of TRAIN documents and instruction templates, distill/instructions.py; never the held-out
sources, never the suite's chat prompts), with their own seed. Both models answer at
`pairs.temperature` / `pairs.top_p` (0: greedy) up to `pairs.max_new_tokens`; the student is the kd
stage's model (the assembled one without kd). A pair whose two answers are the same text is left
out. Parts of `pairs.batch_size` prompts are written as they finish (`pairs/parts/`), so a killed
run resumes, then joined into `pairs/pairs.jsonl` ({"prompt", "chosen", "rejected"} per line, the
prompt rendered in the chat template, each answer with its end-of-turn marker when it stopped),
which `data.dpo_path = "pairs"` names for the dpo stage.
"""

from __future__ import annotations

import json
import os
import time

from zebra_jax._io import atomic_write, join_lines
from zebra_jax.data.prompts import decode_text
from zebra_jax.distill.samples import PROMPT_BUCKET, cache_len, make_chat_prompts, train_documents

ARTIFACT = os.path.join("pairs", "pairs.jsonl")
PAIRS_TOKEN = "pairs"  # data.dpo_path naming this stage's artifact


def dpo_path(cfg, workdir: str) -> str:
  """data.dpo_path with "pairs" resolved to this stage's artifact in `workdir`."""
  path = cfg.data.dpo_path
  return os.path.join(workdir, ARTIFACT) if path == PAIRS_TOKEN else path


def _answers(model, prompts, p, seed: int, stops) -> list[list[int]]:
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.infer.generation import generate

  return generate(
    model,
    prompts,
    p.max_new_tokens,
    temperature=p.temperature,
    top_p=p.top_p,
    seed=seed,
    stop_tokens=stops,
    pad_multiple=PROMPT_BUCKET,
    max_len=cache_len(prompts, p.max_new_tokens),
  )


def generate_pairs(
  teacher,
  student,
  tokenizer,
  prompts,
  workdir: str,
  p,
  *,
  seed: int,
  process_index=0,
  process_count=1,
  log=print,
) -> list[str]:
  """Writes this process's missing part files (one per `p.batch_size` prompts, parts dealt out to the
  processes in turn, as the samples stage does); returns every part's path."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.infer.decode import resolve_stop_tokens

  parts_dir = os.path.join(workdir, "pairs", "parts")
  os.makedirs(parts_dir, exist_ok=True)
  stops = resolve_stop_tokens(teacher.config, None)
  n_parts = -(-len(prompts) // p.batch_size)
  paths = [os.path.join(parts_dir, f"part-{b:05d}.jsonl") for b in range(n_parts)]
  for b in range(process_index, n_parts, process_count):
    path = paths[b]
    if os.path.exists(path):
      continue
    t0 = time.time()
    batch = prompts[b * p.batch_size : (b + 1) * p.batch_size]
    chosen = _answers(teacher, batch, p, seed + b, stops)
    rejected = _answers(student, batch, p, seed + b, stops)
    kept = 0
    with atomic_write(path) as f:
      for prompt, good, bad in zip(batch, chosen, rejected):
        good_text, bad_text = (decode_text(tokenizer, ids, keep_special=True) for ids in (good, bad))
        if good_text == bad_text:  # no preference to learn
          continue
        kept += 1
        row = {
          "prompt": decode_text(tokenizer, prompt, keep_special=True),
          "chosen": good_text,
          "rejected": bad_text,
        }
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    log(f"[pairs] part {b + 1}/{n_parts}: {kept} of {len(batch)} pairs kept in {time.time() - t0:.1f}s")
  return paths


def run_pairs(ctx) -> None:
  import jax

  p = ctx.cfg.pairs
  tokenizer = ctx.tokenizer()
  teacher = ctx.teacher()
  source = ctx.distilled_stage()
  student = ctx.load_artifact(source)
  ctx.log(
    f"[pairs] {p.num_pairs} chat prompts answered by the teacher (chosen) and the {source} model (rejected)"
  )
  prompts = make_chat_prompts(
    tokenizer, p.num_pairs, ctx.cfg.seed + 29, train_documents(ctx.cfg), p.passage_fraction
  )
  paths = generate_pairs(
    teacher,
    student,
    tokenizer,
    prompts,
    ctx.workdir,
    p,
    seed=ctx.cfg.seed + 31,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    log=ctx.log,
  )
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("zebra_jax pairs: all parts written")
  if jax.process_index() != 0:
    multihost_utils.sync_global_devices("zebra_jax pairs: artifact written")
    return
  n = join_lines(paths, os.path.join(ctx.workdir, ARTIFACT))
  if n == 0:
    raise ValueError(
      "pairs: the teacher and the student gave the same answer to every prompt; no preference pairs"
    )
  ctx.log(f"[pairs] {n} pairs -> {os.path.join(ctx.workdir, ARTIFACT)}")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("zebra_jax pairs: artifact written")


__all__ = ["ARTIFACT", "PAIRS_TOKEN", "dpo_path", "generate_pairs", "run_pairs"]
