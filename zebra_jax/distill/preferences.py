"""Preference pairs for DPO from a local jsonl: {"prompt": str | messages, "chosen": str,
"rejected": str} per line. Each pair becomes two token rows (prompt + response) padded to max_len,
with masks selecting the response tokens; prompts are left-truncated to max_prompt_len (as TRL does)."""

from __future__ import annotations

import json

import numpy as np


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False))


def _records(path: str):
  """(line number, prompt, chosen, rejected) of each non-empty line; a line that is not a JSON
  object with a prompt (text or chat messages) and text chosen / rejected answers is an error
  naming the file and line."""
  try:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
          prompt, chosen, rejected = rec["prompt"], rec["chosen"], rec["rejected"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(
            f"{path}:{n}: expected JSON with 'prompt', 'chosen', 'rejected' ({type(e).__name__}: {e})"
          ) from None
        if not (isinstance(prompt, (str, list)) and isinstance(chosen, str) and isinstance(rejected, str)):
          raise ValueError(
            f"{path}:{n}: 'prompt' must be text or a list of chat messages and 'chosen' / 'rejected' text"
          )
        yield n, prompt, chosen, rejected
  except UnicodeDecodeError:
    raise ValueError(
      f"{path}: not UTF-8 text (expected JSON lines with 'prompt', 'chosen', 'rejected')"
    ) from None


def check_pairs_file(path: str, batch_size: int) -> int:
  """The number of preference pairs in `path`, after checking every line's form (no tokenizer
  needed: run before the first stage, so a bad file fails before hours of distillation)."""
  count = sum(1 for _ in _records(path))
  if not count:
    raise ValueError(f"{path}: no preference pairs")
  if count < batch_size:
    raise ValueError(f"dpo batch_size={batch_size} exceeds the {count} preference pairs in {path}")
  return count


def load_pairs(path: str, tokenizer, max_len: int, max_prompt_len: int):
  # lazy: pulls in grain, orbax, jax, which importing this module does not
  from zebra_jax.data.tokenize import eos_id, render_chat

  pairs = []
  for n, prompt, chosen, rejected in _records(path):
    if isinstance(prompt, list):
      prompt = render_chat(tokenizer, prompt, where=f"{path}:{n}")
    p = _encode(tokenizer, prompt)[-max_prompt_len:]
    eos = eos_id(tokenizer)
    rows = []
    for resp in (chosen, rejected):
      r = (_encode(tokenizer, resp) + [eos])[: max_len - len(p)]
      ids = np.zeros(max_len, np.int32)
      mask = np.zeros(max_len, np.int32)
      ids[: len(p) + len(r)] = p + r
      mask[len(p) : len(p) + len(r)] = 1
      rows.append((ids, mask))
    pairs.append(rows)
  if not pairs:
    raise ValueError(f"{path}: no preference pairs")
  return pairs


class PreferenceIterator:
  """Deterministic shuffled epochs over the pairs; state = (epoch, position). `batch_size` is the
  global batch: process p of P yields rows [p*B/P, (p+1)*B/P) of each global batch."""

  def __init__(self, pairs, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
    if batch_size > len(pairs):
      raise ValueError(f"dpo batch_size={batch_size} exceeds the {len(pairs)} preference pairs")
    if batch_size % process_count:
      raise ValueError(f"dpo batch_size={batch_size} is not divisible by {process_count} processes")
    self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
    self.process_index, self.process_count = process_index, process_count
    self.epoch, self.pos = 0, 0

  def _order(self):
    return np.random.default_rng(self.seed + self.epoch).permutation(len(self.pairs))

  def __next__(self):
    if self.pos + self.batch_size > len(self.pairs):
      self.epoch, self.pos = self.epoch + 1, 0
    idx = self._order()[self.pos : self.pos + self.batch_size]
    self.pos += self.batch_size
    local = self.batch_size // self.process_count
    idx = idx[self.process_index * local : (self.process_index + 1) * local]
    pick = [self.pairs[i] for i in idx]
    return {
      "chosen": np.stack([p[0][0] for p in pick]),
      "chosen_mask": np.stack([p[0][1] for p in pick]),
      "rejected": np.stack([p[1][0] for p in pick]),
      "rejected_mask": np.stack([p[1][1] for p in pick]),
    }

  def get_state(self):
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state):
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def preference_iterator(
  path,
  tokenizer,
  *,
  batch_size,
  max_len,
  max_prompt_len,
  seed,
  process_index: int = 0,
  process_count: int = 1,
):
  return PreferenceIterator(
    load_pairs(path, tokenizer, max_len, max_prompt_len), batch_size, seed, process_index, process_count
  )
