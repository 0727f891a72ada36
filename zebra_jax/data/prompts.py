"""Prompts and the text <-> ids helpers that the samples stage, the report, the suite and the
speculative benchmark share (with the held-out sequences the report and the suite score). Kept
here, below all of them, so none imports another for them."""

from __future__ import annotations

from zebra_jax.data import tokenize
from zebra_jax.data.specs import open_source
from zebra_jax.data.pipeline import split_indices
from zebra_jax.data.registry import SAMPLES_TOKEN
from zebra_jax.data.tokenize import render_chat

# the report's fixed prompts (greedy samples next to each model); never used as training prompts
REPORT_PROMPTS = (
  {"chat": "Write a short poem about the sea."},
  {"chat": "What are three tips for staying healthy?"},
  {"chat": "Explain in two sentences why the sky is blue."},
  {"text": "ROMEO. But soft, what light through yonder window breaks?"},
)

# the suite's fixed chat prompts (docs/evaluation.md); never used as training prompts
CHAT_PROMPTS = (
  "How do I create a Python virtual environment?",
  "What is RAID in computer storage?",
  "Write a short poem about the sea.",
  "Summarise this paragraph in one sentence: The city council met on Tuesday to discuss the new "
  "bicycle lanes. Several residents spoke in favour, saying the lanes would make their commutes "
  "safer, while shop owners worried about losing parking spaces. The council agreed to test the "
  "lanes on two streets for six months before deciding.",
  "Explain photosynthesis in simple terms.",
  "Give three tips for a job interview.",
  "Translate into French: The weather is beautiful today and we are going to the beach.",
  "What causes the seasons on Earth?",
)


def prompt_ids(tokenizer, prompt: dict) -> list[int]:
  """{"chat": message} -> the chat template with a generation prompt; {"text": t} -> BOS + t."""
  if "chat" in prompt:
    text = render_chat(
      tokenizer, [{"role": "user", "content": prompt["chat"]}], where="prompt", add_generation_prompt=True
    )
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
  ids = list(tokenizer.encode(prompt["text"], add_special_tokens=False))
  bos = getattr(tokenizer, "bos_token_id", None)
  return ([bos] if bos is not None else []) + ids


def decode_text(tokenizer, ids, keep_special: bool = False) -> str:
  """Text of `ids`, special tokens dropped unless `keep_special` (chat samples keep the template's
  turn markers, which the packer's tokenizer encodes back to the same special tokens)."""
  ids = [int(i) for i in ids]
  try:
    return tokenizer.decode(ids, skip_special_tokens=not keep_special)
  except TypeError:  # ByteTokenizer and other minimal tokenizers
    return tokenizer.decode(ids)


def source_specs(cfg) -> list:
  """data.source as a list (one source or several)."""
  spec = cfg.data.source
  return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def real_sources(cfg):
  """data.source without the teacher-samples token (what prompts are cut from, what the held-out
  split of the report reads)."""
  specs = [s for s in source_specs(cfg) if s != SAMPLES_TOKEN]
  if not specs:
    raise ValueError(
      f"data.source={cfg.data.source!r} has no real source to take prompts from (only {SAMPLES_TOKEN!r})"
    )
  return specs[0] if len(specs) == 1 else specs


def heldout_sequences(cfg, tokenizer, limit_tokens: int | None = None) -> list[list[int]]:
  """Token ids (BOS first when the tokenizer has one) of the held-out documents of data.source's
  real sources, in index order; `limit_tokens` stops after that many tokens (smoke runs)."""

  src = open_source(real_sources(cfg))
  bos = getattr(tokenizer, "bos_token_id", None)
  eos = tokenize.eos_id(tokenizer)
  seqs, n = [], 0
  for i in split_indices(len(src), "heldout", cfg.data.heldout_fraction):
    ids = [int(t) for t in tokenize.encode_document(tokenizer, src[int(i)]) if int(t) != eos]
    if bos is not None and (not ids or ids[0] != bos):
      ids = [bos] + ids  # the first word is scored too
    seqs.append(ids)
    n += len(ids)
    if limit_tokens and n >= limit_tokens:
      break
  return seqs


def chat_stop_tokens(config, tokenizer) -> tuple[int, ...]:
  """Where a chat answer ends: the model config's EOS id(s) and the tokenizer's EOS (a GGUF or HF
  chat model may name its end-of-turn token in only one of them)."""
  eos = config.eos_token_id
  stops = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
  if getattr(tokenizer, "eos_token_id", None) is not None:
    stops.add(int(tokenizer.eos_token_id))
  return tuple(sorted(int(s) for s in stops))


def repeated_ngram_share(text: str, n: int = 4) -> float:
  """The share of a text's word n-grams (lower case, split on whitespace) that already occurred
  earlier in it: 0 for a text that never repeats itself, near 1 for one caught in a loop. The
  suite scores chat answers with it; the samples stage leaves out looping teacher samples
  (`samples.max_repetition`)."""
  words = text.lower().split()
  grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
  return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


__all__ = [
  "REPORT_PROMPTS",
  "CHAT_PROMPTS",
  "prompt_ids",
  "decode_text",
  "source_specs",
  "real_sources",
  "heldout_sequences",
  "repeated_ngram_share",
  "chat_stop_tokens",
]
