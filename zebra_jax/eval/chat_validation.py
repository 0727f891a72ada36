"""Chat answers to prompts about VALIDATION passages: a chat signal to choose a recipe on that is not
the suite's report.

The suite's chat prompts (CHAT_PROMPTS) are part of what the suite reports, so a recipe chosen by
how its students answer them is tuned on the evaluation. These prompts are built as the samples and
pairs stages build theirs (the passage tasks of distill/instructions.py: summarise, explain,
continue, questions), but around passages of the VALIDATION split of the run's training sources,
which training never reads, and with their own seed. Every model (teacher included) answers
greedily; per model: the mean repetition (the share of an answer's word 4-grams that already
occurred in it, as the suite scores chat), the share of answers that loop (repetition above
LOOP_SHARE), the share that end by themselves (a stop token within `max_new_tokens`) and the mean
answer length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zebra_jax.data.pipeline import validation_documents
from zebra_jax.data.prompts import chat_stop_tokens, decode_text, prompt_ids, repeated_ngram_share
from zebra_jax.distill.instructions import passage_prompts
from zebra_jax.distill.samples import PROMPT_BUCKET, cache_len

SEED_OFFSET = 41  # prompts drawn with cfg.seed + 41: apart from the samples (+17 ...) and pairs (+29) seeds
LOOP_SHARE = 0.3  # an answer with more than this share of repeated word 4-grams counts as a loop


def validation_chat_prompts(
  cfg, tokenizer, num: int, seed: int | None = None, passage_chars: tuple[int, int] = (300, 1200)
) -> list[list[int]]:
  """`num` chat-template prompt ids, each a passage task around a passage of `passage_chars`
  (min, max) characters of a validation document of the run's training sources (cfg: the run
  config; seed: cfg.seed + SEED_OFFSET by default)."""
  by_source = validation_documents(cfg.data)
  documents = [d for name in sorted(by_source) for d in by_source[name]]
  if not documents:
    raise ValueError(
      "chat validation: the run's sources have no validation documents (data.heldout_fraction)"
    )
  seed = int(cfg.seed) + SEED_OFFSET if seed is None else seed
  messages = passage_prompts(documents, num, seed, *passage_chars)
  return [prompt_ids(tokenizer, {"chat": m}) for m in messages]


def greedy_answers(model, prompts, max_new_tokens: int, stops, batch_size: int = 64) -> list[list[int]]:
  """Greedy answers (token ids, a stop token last when one was produced), `batch_size` prompts per
  generate call, prompt and cache lengths bucketed so the batches share compiled loops."""
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.infer.generation import generate

  out = []
  for b in range(0, len(prompts), batch_size):
    batch = prompts[b : b + batch_size]
    out += generate(
      model,
      batch,
      max_new_tokens,
      temperature=0.0,
      stop_tokens=stops,
      pad_multiple=PROMPT_BUCKET,
      max_len=cache_len(prompts, max_new_tokens),
    )
  return out


def answer_stats(answers: Sequence[Sequence[int]], tokenizer, stops: Sequence[int]) -> dict:
  """Repetition, loop share, stop share and mean length of a model's answers (token ids)."""
  stop_set = {int(s) for s in stops}
  texts = [decode_text(tokenizer, [int(t) for t in a if int(t) not in stop_set]).strip() for a in answers]
  reps = np.array([repeated_ngram_share(t) for t in texts], dtype=np.float64)
  return {
    "repetition": float(reps.mean()),
    "loops": float((reps > LOOP_SHARE).mean()),
    "stopped": float(np.mean([bool(a) and int(a[-1]) in stop_set for a in answers])),
    "mean_tokens": float(np.mean([len(a) for a in answers])),
    "answers": texts,
  }


def chat_validation(
  models: dict, tokenizer, prompts, *, max_new_tokens: int = 256, batch_size: int = 64, log=print
) -> dict:
  """{label: answer_stats} for each model of `models` ({label: model}) answering `prompts`."""
  out = {}
  for label, model in models.items():
    stops = chat_stop_tokens(model.config, tokenizer)
    answers = greedy_answers(model, prompts, max_new_tokens, stops, batch_size)
    out[label] = answer_stats(answers, tokenizer, stops)
    r = out[label]
    log(
      f"[chat-validation] {label}: repetition {100 * r['repetition']:.1f}%, loops {100 * r['loops']:.1f}%, "
      f"stopped {100 * r['stopped']:.1f}%, {r['mean_tokens']:.0f} tokens on average"
    )
  return out


__all__ = ["validation_chat_prompts", "greedy_answers", "answer_stats", "chat_validation", "LOOP_SHARE"]
