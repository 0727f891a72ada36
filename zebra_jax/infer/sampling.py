"""Token sampling: greedy, temperature, top-k and top-p (nucleus), in the order transformers applies them.

`filter_logits` returns logits with the excluded tokens at -inf; `probs` the normalised distribution
the sampler draws from (speculative decoding needs it explicitly for both models); `sample` draws one
token per row. Temperature 0 means greedy (argmax; top-k / top-p are then irrelevant).
All settings are static Python values, so each combination compiles once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 = greedy; top_k None/0 = off; top_p None/1.0 = off."""

  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 0):
      raise ValueError(f"top_k must be a non-negative int or None, got {self.top_k}")
    if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

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


def probs(logits_BV: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """The float32 distribution a token is drawn from (one-hot of the argmax when greedy)."""
  if sampling.greedy:
    return jax.nn.one_hot(jnp.argmax(logits_BV, axis=-1), logits_BV.shape[-1], dtype=jnp.float32)
  return jax.nn.softmax(
    filter_logits(logits_BV, sampling.temperature, sampling.top_k, sampling.top_p), axis=-1
  )


def sample(logits_BV: jax.Array, key: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """One int32 token per row; rows draw independently from one key."""
  if sampling.greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  x = filter_logits(logits_BV, sampling.temperature, sampling.top_k, sampling.top_p)
  return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)
