"""Batched, jitted next-token log-probabilities: the shared core of perplexity, agreement and lm-eval.

Sequences are right-padded to a length bucket (`length_multiple` times a power of two) and batches
to `batch_size` rows, so a handful of compiled shapes serve any request mix: at most six up to 2048
tokens. Each shape is one compilation of the whole model, which on a GPU costs far more than the
padded positions (a suite of 22 domains with buckets of every multiple of 64 spent most of its time
compiling). Right padding is exact:
every mixer is causal (attention, MLA, the Mamba2 scan), so positions before the padding never see it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def bucket_length(n: int, multiple: int) -> int:
  """The smallest `multiple * 2**k` >= n."""
  b = multiple
  while b < n:
    b *= 2
  return b


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _next_token_logprobs(state, tokens_BT, *, graphdef):
  """(log p(tokens[t+1] | tokens[:t+1]) (B, T-1) float32, is that token the argmax (B, T-1))."""
  logits = nnx.merge(graphdef, state)(tokens_BT).astype(jnp.float32)[:, :-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  target = tokens_BT[:, 1:]
  lp = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  greedy = jnp.argmax(logits, axis=-1) == target
  return lp, greedy


class TokenScorer:
  """`logprobs(seqs)` -> per sequence (logp (len-1,), greedy (len-1,)) of each next token."""

  def __init__(self, model, *, batch_size: int = 8, length_multiple: int = 64):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.model = model
    self.vocab_size = model.config.vocab_size
    self.graphdef, self.state = nnx.split(model)
    self.batch_size, self.length_multiple = batch_size, length_multiple

  def logprobs(self, seqs: Sequence[Sequence[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    out: list = [None] * len(seqs)
    for i, s in enumerate(seqs):
      if len(s) < 2:
        raise ValueError(f"sequence {i} has {len(s)} token(s); scoring needs at least 2")
      bad = [t for t in s if not 0 <= int(t) < self.vocab_size]
      if bad:
        raise ValueError(f"sequence {i} has token ids {bad[:5]} outside [0, {self.vocab_size})")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a bucket
    for start in range(0, len(order), self.batch_size):
      idx = order[start : start + self.batch_size]
      T = bucket_length(max(len(seqs[i]) for i in idx), self.length_multiple)
      tokens = np.zeros((self.batch_size, T), np.int32)
      for row, i in enumerate(idx):
        tokens[row, : len(seqs[i])] = seqs[i]
      lp, greedy = _next_token_logprobs(self.state, jnp.asarray(tokens), graphdef=self.graphdef)
      lp, greedy = np.asarray(lp, np.float64), np.asarray(greedy)
      for row, i in enumerate(idx):
        n = len(seqs[i]) - 1
        out[i] = (lp[row, :n], greedy[row, :n])
    return out


def rolling_windows(n_tokens: int, max_length: int, stride: int | None = None):
  """Windows that predict every token 1..n-1 exactly once, each with as much context as fits.

  Yields (start, end, n_score): feed tokens[start:end] and score its last `n_score` next-token
  predictions, i.e. targets tokens[end - n_score : end]. Targets come in chunks of `stride`
  (default max_length // 2), each predicted with up to max_length - 1 tokens of context.
  """
  if max_length < 2:
    raise ValueError(f"max_length must be >= 2, got {max_length}")
  stride = max(1, max_length // 2) if stride is None else stride
  if not 1 <= stride <= max_length - 1:
    raise ValueError(f"stride must be in [1, max_length - 1 = {max_length - 1}], got {stride}")
  a = 1
  while a < n_tokens:
    b = min(a + stride, n_tokens)
    start = max(0, b - max_length)
    yield start, b, b - a
    a = b


__all__ = ["TokenScorer", "rolling_windows"]
