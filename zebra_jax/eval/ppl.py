"""Perplexity of a model on token sequences and text files (sliding windows, every token once)."""

from __future__ import annotations

import math
import os
from typing import Sequence

from zebra_jax.data import sources
from zebra_jax.eval.scoring import TokenScorer, rolling_windows


def sequence_nll(
  scorer: TokenScorer, tokens: Sequence[int], *, max_length: int, stride: int | None = None
) -> tuple[float, int]:
  """(summed negative log-likelihood, number of predicted tokens) of tokens[1:] given the prefix."""
  tokens = [int(t) for t in tokens]
  windows = list(rolling_windows(len(tokens), max_length, stride))
  if not windows:
    return 0.0, 0
  scored = scorer.logprobs([tokens[s:e] for s, e, _ in windows])
  nll = -sum(float(lp[-k:].sum()) for (lp, _), (_, _, k) in zip(scored, windows))
  return nll, sum(k for _, _, k in windows)


def perplexity(
  model,
  sequences: Sequence[Sequence[int]],
  *,
  max_length: int = 2048,
  stride: int | None = None,
  batch_size: int = 8,
) -> dict:
  """Token-level perplexity over several sequences: exp(total NLL / total predicted tokens).

  Each sequence's first token is context only (prepend a BOS to score it). Returns
  {"perplexity", "nll", "tokens", "per_sequence": [{"perplexity", "nll", "tokens"}]}.
  """
  scorer = TokenScorer(model, batch_size=batch_size)
  per, total_nll, total_n = [], 0.0, 0
  for seq in sequences:
    nll, n = sequence_nll(scorer, seq, max_length=max_length, stride=stride)
    per.append({"nll": nll, "tokens": n, "perplexity": math.exp(nll / n) if n else float("nan")})
    total_nll += nll
    total_n += n
  if total_n == 0:
    raise ValueError("nothing to score: every sequence has fewer than 2 tokens")
  return {
    "perplexity": math.exp(total_nll / total_n),
    "nll": total_nll,
    "tokens": total_n,
    "per_sequence": per,
  }


def encode_text(tokenizer, text: str, add_bos: bool = True) -> list[int]:
  """Tokens of a document; a BOS (when the tokenizer has one) makes the first word scored too."""
  ids = list(tokenizer.encode(text, add_special_tokens=False))
  bos = getattr(tokenizer, "bos_token_id", None)
  if add_bos and bos is not None:
    ids = [bos] + ids
  return ids


def file_documents(path: str | os.PathLike) -> list[str]:
  """The documents of one file, as the training data reads them: each {"text": ...} row of a
  *.jsonl / *.json file (`data.sources.JsonlSource`: a bad row is a DataError naming its line), the
  whole text of anything else. A chat "messages" row is refused, so a JSON file is never scored as
  one document of JSON syntax."""
  path = os.fspath(path)
  if not path.endswith(sources.JSONL_SUFFIXES):
    with open(path, encoding="utf-8") as f:
      return [f.read()]
  docs = list(sources.JsonlSource(path))
  for i, d in enumerate(docs):
    if not isinstance(d, str):
      raise sources.DataError(
        f"{path}: row {i + 1} is a chat 'messages' row; perplexity scores {{\"text\": ...}} rows"
      )
  if not docs:
    raise sources.DataError(f"{path}: no rows to score")
  return docs


def perplexity_of_files(
  model,
  tokenizer,
  paths: Sequence[str | os.PathLike],
  *,
  max_length: int = 2048,
  stride: int | None = None,
  batch_size: int = 8,
  add_bos: bool = True,
) -> dict:
  """Perplexity of each UTF-8 file and of all of them together. A text file is one document; each
  row of a *.jsonl / *.json file ({"text": ...}) is one (`file_documents`), scored on its own.

  Also reports bits per byte (NLL in bits / UTF-8 bytes), which does not depend on the tokenizer.
  "per_sequence" has one entry per file (its documents summed).
  """
  docs_per_file = [file_documents(p) for p in paths]
  seqs = [encode_text(tokenizer, d, add_bos) for docs in docs_per_file for d in docs]
  res = perplexity(model, seqs, max_length=max_length, stride=stride, batch_size=batch_size)
  per_doc, per_file, total_bytes = iter(res["per_sequence"]), [], 0
  for p, docs in zip(paths, docs_per_file):
    scored = [next(per_doc) for _ in docs]
    nll, n = sum(e["nll"] for e in scored), sum(e["tokens"] for e in scored)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    per_file.append(
      {
        "file": os.fspath(p),
        "documents": len(docs),
        "nll": nll,
        "tokens": n,
        "perplexity": math.exp(nll / n) if n else float("nan"),
        "bytes": n_bytes,
        "bits_per_byte": nll / math.log(2) / max(1, n_bytes),
      }
    )
    total_bytes += n_bytes
  res["per_sequence"] = per_file
  res["bits_per_byte"] = res["nll"] / math.log(2) / max(1, total_bytes)
  res["max_length"], res["stride"] = max_length, stride
  return res


__all__ = ["perplexity", "perplexity_of_files", "file_documents", "sequence_nll", "encode_text"]
