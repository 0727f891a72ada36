"""Agreement of a student with its teacher on the same text: top-1 match rate and mean KL.

For every predicted position (the same sliding windows as perplexity), with teacher distribution p
and student distribution q over the shared vocabulary:
  top1 = mean [argmax p == argmax q],   kl = mean KL(p || q) = sum_v p_v (log p_v - log q_v)
(KL(teacher || student) is the distillation objective of the reference's KD stage, in nats).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zebra_jax.eval.scoring import bucket_length, rolling_windows


@functools.partial(jax.jit, static_argnames=("s_graphdef", "t_graphdef"))
def _pair_stats(s_state, t_state, tokens_BT, *, s_graphdef, t_graphdef):
  """Per position (B, T): KL(teacher || student), top-1 match, student and teacher NLL."""
  ls = jax.nn.log_softmax(nnx.merge(s_graphdef, s_state)(tokens_BT).astype(jnp.float32), -1)
  lt = jax.nn.log_softmax(nnx.merge(t_graphdef, t_state)(tokens_BT).astype(jnp.float32), -1)
  kl = jnp.sum(jnp.exp(lt) * (lt - ls), axis=-1)
  top1 = jnp.argmax(ls, -1) == jnp.argmax(lt, -1)
  nxt = jnp.concatenate([tokens_BT[:, 1:], tokens_BT[:, :1]], axis=1)  # last column unused
  nll_s = -jnp.take_along_axis(ls, nxt[..., None], -1)[..., 0]
  nll_t = -jnp.take_along_axis(lt, nxt[..., None], -1)[..., 0]
  return kl, top1, nll_s, nll_t


def teacher_agreement(
  student,
  teacher,
  sequences: Sequence[Sequence[int]],
  *,
  max_length: int = 2048,
  stride: int | None = None,
  batch_size: int = 4,
  length_multiple: int = 64,
) -> dict:
  """{"top1", "kl", "tokens", "student_nll", "teacher_nll"} averaged over predicted positions."""
  if student.config.vocab_size != teacher.config.vocab_size:
    raise ValueError(
      f"student vocab {student.config.vocab_size} != teacher vocab "
      f"{teacher.config.vocab_size}: the distributions are not comparable"
    )
  s_graphdef, s_state = nnx.split(student)
  t_graphdef, t_state = nnx.split(teacher)
  # (tokens of the window, number of scored positions at its end)
  items = []
  for seq in sequences:
    seq = [int(t) for t in seq]
    for s, e, k in rolling_windows(len(seq), max_length, stride):
      items.append((seq[s:e], k))
  if not items:
    raise ValueError("nothing to score: every sequence has fewer than 2 tokens")
  sums = np.zeros(4)
  count = 0
  # One padded length for every batch: one compilation of the teacher + student pair (a compile
  # per length bucket costs far more than the padding on an accelerator).
  T = bucket_length(max(len(w) for w, _ in items), length_multiple)
  for start in range(0, len(items), batch_size):
    chunk = items[start : start + batch_size]
    tokens = np.zeros((batch_size, T), np.int32)
    mask = np.zeros((batch_size, T), bool)
    for row, (w, k) in enumerate(chunk):
      tokens[row, : len(w)] = w
      mask[row, len(w) - 1 - k : len(w) - 1] = True  # positions predicting the last k tokens
    stats = _pair_stats(s_state, t_state, jnp.asarray(tokens), s_graphdef=s_graphdef, t_graphdef=t_graphdef)
    for j, x in enumerate(stats):
      sums[j] += float(np.asarray(x, np.float64)[mask].sum())
    count += int(mask.sum())
  kl, top1, nll_s, nll_t = sums / count
  return {
    "top1": top1,
    "kl": kl,
    "tokens": count,
    "student_nll": nll_s,
    "teacher_nll": nll_t,
    "student_perplexity": float(np.exp(nll_s)),
    "teacher_perplexity": float(np.exp(nll_t)),
  }


__all__ = ["teacher_agreement"]
