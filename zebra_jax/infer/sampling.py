"""Token sampling: a repetition penalty, then greedy, temperature, top-k and top-p (nucleus), in the
order transformers applies them.

`filter_logits` returns logits with the excluded tokens at -inf; `probs` the normalised distribution
the sampler draws from (speculative decoding needs it explicitly for both models); `sample` draws one
token per row. Temperature 0 means greedy (argmax; top-k / top-p are then irrelevant).
All settings are static Python values, so each combination compiles once.

The repetition penalty (CTRL, Keskar et al. 2019; transformers' `repetition_penalty`) divides the
positive logits and multiplies the negative ones of every token already in the sequence (prompt or
generated) by the penalty, greedy or sampled; the decode loops carry a (batch, vocab) mask of the
tokens seen (`seen_tokens`, `mark_seen`). Prompt padding is never counted as seen.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 = greedy; top_k None/0 = off; top_p None/1.0 = off; repetition_penalty 1.0 = off
  (> 1 discourages tokens already in the sequence)."""

  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  repetition_penalty: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 0):
      raise ValueError(f"top_k must be a non-negative int or None, got {self.top_k}")
    if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
    if not (
      isinstance(self.repetition_penalty, (int, float)) and 0.0 < self.repetition_penalty < float("inf")
    ):
      raise ValueError(
        f"repetition_penalty must be a finite number > 0 (1.0 = off), got {self.repetition_penalty}"
      )

  @property
  def penalizes(self) -> bool:
    """Whether the sampler needs the tokens seen so far (a repetition penalty other than 1)."""
    return self.repetition_penalty != 1.0

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def filter_logits(
  logits_BV: jax.Array, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> jax.Array:
  """float32 logits / temperature with tokens outside top-k, then outside top-p, set to -inf.

  top-k keeps the k largest (ties at the k-th value are all kept, as transformers does); top-p keeps
  the smallest set of most likely tokens whose probability reaches top_p (always at least one).
  """
  if temperature <= 0:
    raise ValueError("filter_logits needs temperature > 0 (temperature 0 is greedy argmax)")
  x = logits_BV.astype(jnp.float32) / temperature
  neg = jnp.float32(-jnp.inf)
  V = x.shape[-1]
  if top_k is not None and 0 < top_k < V:
    kth = jax.lax.top_k(x, top_k)[0][..., -1:]
    x = jnp.where(x < kth, neg, x)
  if top_p is not None and top_p < 1.0:
    order = jnp.argsort(-x, axis=-1)  # most likely first
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    p_sorted = jax.nn.softmax(sorted_x, axis=-1)
    mass_before = jnp.cumsum(p_sorted, axis=-1) - p_sorted
    keep_sorted = mass_before < top_p  # the first token always has 0 before it
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)  # unsort
    x = jnp.where(keep, x, neg)
  return x


def seen_tokens(tokens_BT, lengths_B, vocab_size: int, sampling: SamplingConfig) -> jax.Array | None:
  """(B, V) bool: the tokens among each row's first lengths[b] entries (its prompt, not the padding);
  None when `sampling` needs no history, so the decode loops carry nothing for it."""
  if not sampling.penalizes:
    return None
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  B, T = tokens_BT.shape
  valid_BT = jnp.arange(T)[None, :] < jnp.asarray(lengths_B)[:, None]
  rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
  # padding goes to an extra column that is dropped
  cols = jnp.where(valid_BT, tokens_BT, vocab_size)
  return jnp.zeros((B, vocab_size + 1), bool).at[rows, cols].set(True)[:, :vocab_size]


def mark_seen(seen_BV: jax.Array | None, tokens_B: jax.Array) -> jax.Array | None:
  """`seen_BV` with each row's new token marked (None, no history, stays None)."""
  if seen_BV is None:
    return None
  return seen_BV.at[jnp.arange(seen_BV.shape[0]), tokens_B].set(True)


def penalize_repeats(logits_BV: jax.Array, seen_BV: jax.Array, penalty: float) -> jax.Array:
  """float32 logits with every seen token's logit divided by `penalty` when positive, multiplied by
  it when negative (transformers' RepetitionPenaltyLogitsProcessor)."""
  x = logits_BV.astype(jnp.float32)
  return jnp.where(seen_BV, jnp.where(x < 0, x * penalty, x / penalty), x)


def _penalized(logits_BV, sampling: SamplingConfig, seen_BV):
  if not sampling.penalizes:
    return logits_BV
  if seen_BV is None or seen_BV.shape[-1] != logits_BV.shape[-1]:
    raise ValueError("repetition_penalty needs the tokens seen so far (seen_BV of shape (batch, vocab))")
  return penalize_repeats(logits_BV, seen_BV, sampling.repetition_penalty)


def probs(logits_BV: jax.Array, sampling: SamplingConfig, seen_BV: jax.Array | None = None) -> jax.Array:
  """The float32 distribution a token is drawn from (one-hot of the argmax when greedy)."""
  logits_BV = _penalized(logits_BV, sampling, seen_BV)
  if sampling.greedy:
    return jax.nn.one_hot(jnp.argmax(logits_BV, axis=-1), logits_BV.shape[-1], dtype=jnp.float32)
  return jax.nn.softmax(
    filter_logits(logits_BV, sampling.temperature, sampling.top_k, sampling.top_p), axis=-1
  )


def sample(
  logits_BV: jax.Array, key: jax.Array, sampling: SamplingConfig, seen_BV: jax.Array | None = None
) -> jax.Array:
  """One int32 token per row; rows draw independently from one key. `seen_BV`: the tokens each row
  has seen (`seen_tokens` / `mark_seen`), needed only with a repetition penalty."""
  logits_BV = _penalized(logits_BV, sampling, seen_BV)
  if sampling.greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  x = filter_logits(logits_BV, sampling.temperature, sampling.top_k, sampling.top_p)
  return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)
