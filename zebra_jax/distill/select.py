"""SMART layer placement: where the N MLA layers go in a Zebra hybrid.

Sensitivity: start from the pure-Mamba2 ILD student, swap one layer at a time for its MLA ILD version
and measure how much the KL to the teacher drops on a calibration set; the drop is that layer's score.
Placement: among layouts with terminal preservation (MLA at layer 0 and at L-2, as every released
Zebra model has) and near-uniform spacing (every gap between consecutive MLA layers is floor or ceil
of (L-2)/(N-1)), pick the one with the largest total score. Only the positions of the larger gaps are
free, so a small dynamic programme finds the best layout exactly.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zebra_jax.models.hybrid import CausalLM
from zebra_jax.train.losses import forward_kl


def _check_budget(n_layers: int, n_mla: int) -> None:
  if not 2 <= n_mla <= n_layers - 1:
    raise ValueError(
      f"the MLA budget n_mla={n_mla} must be in [2, {n_layers - 1}] for {n_layers} "
      "layers (terminal preservation puts MLA at layers 0 and L-2)"
    )


def uniform_placement(n_layers: int, n_mla: int) -> tuple[int, ...]:
  """Layers 0 and L-2 plus near-uniform gaps, larger gaps spread evenly (no scores needed)."""
  _check_budget(n_layers, n_mla)
  span = n_layers - 2
  return tuple(int(round(i * span / (n_mla - 1))) for i in range(n_mla))


def smart_placement(scores: Sequence[float], n_mla: int) -> tuple[int, ...]:
  """The terminal-preserving, near-uniform layout maximising the summed sensitivity scores."""
  n_layers = len(scores)
  _check_budget(n_layers, n_mla)
  span, gaps = n_layers - 2, n_mla - 1
  small = span // gaps
  n_big = span - small * gaps  # gaps of size small+1
  # best[i][k]: best score with MLA #i placed after i gaps of which k were big (position i*small+k).
  neg = -np.inf
  best = np.full((n_mla, n_big + 1), neg)
  choice = np.zeros((n_mla, n_big + 1), dtype=np.int64)
  best[0][0] = scores[0]
  for i in range(1, n_mla):
    for k in range(0, min(i, n_big) + 1):
      pos = i * small + k
      cands = [(best[i - 1][k], k)]  # this gap small
      if k > 0:
        cands.append((best[i - 1][k - 1], k - 1))  # this gap big
      val, prev = max(cands, key=lambda c: c[0])
      if val > neg:
        best[i][k] = val + scores[pos]
        choice[i][k] = prev
  layers, k = [], n_big
  for i in range(n_mla - 1, -1, -1):
    layers.append(i * small + k)
    k = choice[i][k]
  return tuple(sorted(int(i) for i in layers))


@functools.partial(jax.jit, static_argnums=0)
def _apply_block(graphdef, state, h_BTD, positions_BT):
  return nnx.merge(graphdef, state)(h_BTD, positions_BT)[0]


def _split_blocks(layers) -> list[tuple]:
  """(graphdef, state) per block. Blocks of one type and one parameter layout share the first such
  block's graphdef (they differ only in the layer index, which is used at construction), so the
  L(L+1)/2 block applications below compile once per layout and dispatch without NNX's per-call
  graph traversal."""
  canonical, out = {}, []
  for layer in layers:
    graphdef, state = nnx.split(layer)
    leaves, treedef = jax.tree.flatten(state)
    key = (type(layer.mixer).__name__, treedef, tuple((x.shape, str(x.dtype)) for x in leaves))
    out.append((canonical.setdefault(key, graphdef), state))
  return out


def sensitivity_scores(teacher, mla_model, mamba_model, batches: Sequence[dict]) -> np.ndarray:
  """score[l] = KL(all-Mamba2) - KL(all-Mamba2 with block l taken from the MLA student).

  Blocks are applied one jitted call at a time and the all-Mamba2 prefix hidden states are reused,
  so the L swapped models cost L(L+1)/2 block applications per batch and a handful of compilations
  (not L whole-model compilations).
  """

  embed = nnx.jit(lambda m, tokens: m.embed(tokens))
  kl_from_hidden = nnx.jit(lambda m, t_logits, h: forward_kl(t_logits, m.logits(h)))
  teacher_logits = nnx.jit(lambda m, tokens: m(tokens))
  mamba_blocks = _split_blocks(mamba_model.layers)
  mla_blocks = _split_blocks(mla_model.layers)
  L = len(mamba_blocks)
  base, swapped = 0.0, np.zeros(L)
  for b in batches:
    tokens = jnp.asarray(b["tokens"])
    pos = CausalLM.default_positions(tokens)
    t_logits = teacher_logits(teacher, tokens)
    hidden = [embed(mamba_model, tokens)]
    for g, st in mamba_blocks:
      hidden.append(_apply_block(g, st, hidden[-1], pos))
    base += float(kl_from_hidden(mamba_model, t_logits, hidden[-1]))
    kls = []
    for l in range(L):
      h = _apply_block(*mla_blocks[l], hidden[l], pos)
      for g, st in mamba_blocks[l + 1 :]:
        h = _apply_block(g, st, h, pos)
      kls.append(kl_from_hidden(mamba_model, t_logits, h))  # no host sync inside the loop
    swapped += np.array([float(k) for k in kls])
  n = len(batches)
  return base / n - swapped / n
