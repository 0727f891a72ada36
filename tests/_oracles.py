"""Independent references shared by several test files (written once here, not in the code under test)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def greedy_by_full_forward(model, prompt, n_new: int, width: int = 512) -> list[int]:
  """Greedy new tokens of `model` after `prompt` by its full forward (no cache, no decode loop)
  over a fixed-width buffer, so one compile serves every step (positions after the sequence are
  padding a causal model never reads); argmax in float64; stops after the config's EOS."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda st, ids: nnx.merge(graphdef, st)(ids))
  eos = model.config.eos_token_id
  ids = list(prompt)
  for _ in range(n_new):
    if len(ids) > width:
      raise ValueError(f"greedy_by_full_forward: {len(ids)} tokens exceed width={width}")
    buf = np.zeros((1, width), np.int32)
    buf[0, : len(ids)] = ids
    logits = forward(state, jnp.asarray(buf))
    nxt = int(np.argmax(np.asarray(logits[0, len(ids) - 1], np.float64)))
    ids.append(nxt)
    if nxt == eos:
      break
  return ids[len(prompt) :]
