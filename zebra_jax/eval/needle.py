"""Needle in a haystack, generated locally: retrieval accuracy by context length and needle depth.

A pass-key retrieval prompt (no downloaded essays): the FILLER sentences repeated in a cycle, one
needle sentence "The pass key is 48213. Remember it. 48213 is the pass key." inserted at a
fractional depth (0 = start of the haystack, 1 = end), then the question. The model greedily
continues; a trial is correct when the generated text contains the key. Keys are random 5-digit numbers from `seed`.

    res = needle_in_a_haystack(model, tokenizer, context_lengths=[1024, 4096, 16384],
                               depths=[0.0, 0.25, 0.5, 0.75, 1.0], trials=3)
    print(format_needle_grid(res))

Context lengths count prompt tokens (the tokenizer's own count, BOS included when it adds one); a
prompt is within one filler sentence of its target length. Lengths past the distillation length
show length extrapolation (MambaInLlama reports near-perfect retrieval at 20x its 2k training
length). `generate_fn(prompts, max_new_tokens) -> token lists` can replace `zebra_jax.generate`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

INTRO = (
  "There is an important piece of information hidden inside a lot of irrelevant text. "
  "Find it and memorize it. I will quiz you about it.\n"
)
FILLER = (
  "The grass is green. ",
  "The sky is blue. ",
  "The sun is yellow. ",
  "Here we go. ",
  "There and back again. ",
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text))


def make_needle_prompt(tokenizer, context_length: int, depth: float, key: str) -> dict:
  """{"ids", "text", "needle_char", "depth", "key"} for one trial.

  The haystack is FILLER repeated (split in sentences); the needle goes after
  round(depth * n_sentences) sentences. Grows the haystack until the prompt reaches
  `context_length` tokens (never more than one sentence over).
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must be in [0, 1], got {depth}")
  sentences = FILLER
  needle = NEEDLE.format(key=key)

  def build(n):
    hay = [sentences[i % len(sentences)] for i in range(n)]
    at = int(round(depth * n))
    before, after = "".join(hay[:at]), "".join(hay[at:])
    text = INTRO + before + needle + after + QUESTION
    return text, len(INTRO) + len(before)

  base = len(_encode(tokenizer, build(0)[0]))
  if base > context_length:
    raise ValueError(
      f"context_length={context_length} is shorter than the prompt without any "
      f"filler ({base} tokens: instructions, needle and question)"
    )
  per = max(1e-9, (len(_encode(tokenizer, build(50)[0])) - base) / 50)  # tokens per sentence
  n = max(0, int((context_length - base) / per))
  text, pos = build(n)
  ids = _encode(tokenizer, text)
  while len(ids) > context_length and n > 0:  # the estimate can overshoot by a little
    n -= 1
    text, pos = build(n)
    ids = _encode(tokenizer, text)
  while True:  # and undershoot: add sentences while the next one still fits
    t2, p2 = build(n + 1)
    ids2 = _encode(tokenizer, t2)
    if len(ids2) > context_length:
      break
    n, text, pos, ids = n + 1, t2, p2, ids2
  return {"ids": ids, "text": text, "needle_char": pos, "depth": depth, "key": key, "filler_sentences": n}


def needle_in_a_haystack(
  model,
  tokenizer,
  context_lengths: Sequence[int],
  depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
  *,
  trials: int = 1,
  max_new_tokens: int = 12,
  seed: int = 0,
  batch_size: int = 8,
  use_cache: bool = True,
  generate_fn: Callable | None = None,
) -> dict:
  """Runs every (length, depth, trial) cell; returns per-trial records and accuracy grids."""
  if generate_fn is None:
    # lazy: pulls in jax, flax, optax, which importing this module does not
    from zebra_jax.infer import generate

    def generate_fn(prompts, n):
      return generate(model, prompts, n, temperature=0.0, use_cache=use_cache)

  rng = np.random.default_rng(seed)
  cells = []
  for L in context_lengths:
    for d in depths:
      for t in range(trials):
        key = str(int(rng.integers(10000, 100000)))
        p = make_needle_prompt(tokenizer, int(L), float(d), key)
        cells.append(
          {
            "context_length": int(L),
            "depth": float(d),
            "trial": t,
            "key": key,
            "prompt_tokens": len(p["ids"]),
            "ids": p["ids"],
          }
        )
  for start in range(0, len(cells), batch_size):
    chunk = cells[start : start + batch_size]
    outs = generate_fn([c["ids"] for c in chunk], max_new_tokens)
    for c, o in zip(chunk, outs):
      c["output"] = tokenizer.decode(list(o), skip_special_tokens=True)
      c["correct"] = c["key"] in c["output"]
  for c in cells:
    del c["ids"]
  grid = {}
  for c in cells:
    grid.setdefault((c["context_length"], c["depth"]), []).append(c["correct"])
  acc = {k: float(np.mean(v)) for k, v in grid.items()}
  by_len = {
    L: float(np.mean([c["correct"] for c in cells if c["context_length"] == L]))
    for L in dict.fromkeys(int(x) for x in context_lengths)
  }
  by_depth = {
    float(d): float(np.mean([c["correct"] for c in cells if c["depth"] == float(d)]))
    for d in dict.fromkeys(float(x) for x in depths)
  }
  return {
    "trials": cells,
    "accuracy": acc,
    "by_length": by_len,
    "by_depth": by_depth,
    "overall": float(np.mean([c["correct"] for c in cells])),
  }


def format_needle_grid(res: dict) -> str:
  depths = list(res["by_depth"])
  lines = ["context \\ depth " + " ".join(f"{d:>6.2f}" for d in depths) + "    mean"]
  for L in res["by_length"]:
    row = " ".join(f"{res['accuracy'][(L, d)]:>6.2f}" for d in depths)
    lines.append(f"{L:>15} {row}  {res['by_length'][L]:>6.2f}")
  lines.append(f"overall accuracy {res['overall']:.3f} over {len(res['trials'])} trials")
  return "\n".join(lines)


__all__ = ["make_needle_prompt", "needle_in_a_haystack", "format_needle_grid", "FILLER", "NEEDLE", "QUESTION"]
