"""SMART layer placement: the dynamic programme against brute force over every valid layout, the
released Zebra layouts, and the sensitivity scores against a KL computed here in float64."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zebra_jax.config import HybridConfig, LlamaConfig
from zebra_jax.distill import select
from zebra_jax.models.hybrid import CausalLM

# Released Zebra mla_layers (reference section 6): (L, layout).
RELEASED = [
  (16, (0, 2, 4, 6, 8, 10, 12, 14)),
  (16, (0, 2, 5, 8, 11, 14)),
  (16, (0, 5, 10, 14)),
  (28, tuple(range(0, 27, 2))),
  (28, (0, 3, 7, 10, 14, 18, 22, 26)),
  (28, (0, 5, 10, 16, 21, 26)),
  (32, tuple(range(0, 31, 2))),
  (32, (0, 4, 8, 12, 16, 20, 25, 30)),
]


def valid(layout, L, N) -> bool:
  """Terminal preservation (MLA at 0 and L-2), near-uniform gaps (floor/ceil of (L-2)/(N-1))."""
  layout = tuple(layout)
  if len(layout) != N or layout[0] != 0 or layout[-1] != L - 2:
    return False
  lo, hi = (L - 2) // (N - 1), -(-(L - 2) // (N - 1))
  return all(b - a in (lo, hi) for a, b in zip(layout, layout[1:]))


def brute_force(scores, N):
  L = len(scores)
  best, best_layouts = -np.inf, []
  for layout in itertools.combinations(range(L), N):
    if not valid(layout, L, N):
      continue
    s = sum(scores[i] for i in layout)
    if s > best + 1e-12:
      best, best_layouts = s, [layout]
    elif abs(s - best) <= 1e-12:
      best_layouts.append(layout)
  return best, best_layouts


def test_released_layouts_follow_the_rule():
  for L, layout in RELEASED:
    assert valid(layout, L, len(layout)), (L, layout)


@pytest.mark.parametrize(
  "L,N",
  [
    (4, 2),
    (5, 3),
    (8, 3),
    (9, 4),
    (10, 4),
    (11, 5),
    (12, 4),
    (12, 6),
    (13, 5),
    (14, 4),
    (16, 6),
    (16, 4),
    (7, 6),
  ],
)
def test_smart_placement_maximises_score_over_all_valid_layouts(L, N):
  rng = np.random.default_rng(L * 100 + N)
  for trial in range(5):
    scores = rng.normal(size=L)
    got = select.smart_placement(scores, N)
    assert valid(got, L, N), got
    best, best_layouts = brute_force(scores, N)
    assert best_layouts, "brute force found no valid layout"
    assert tuple(got) in best_layouts, (scores, got, best_layouts)
    np.testing.assert_allclose(sum(scores[i] for i in got), best, rtol=1e-12)


@pytest.mark.parametrize("L,layout", RELEASED)
def test_smart_placement_recovers_released_layout_from_scores_that_favour_it(L, layout):
  scores = np.full(L, -1.0)
  scores[list(layout)] = 1.0
  assert select.smart_placement(scores, len(layout)) == tuple(layout)


@pytest.mark.parametrize("L,layout", RELEASED)
def test_uniform_placement_follows_the_released_rule(L, layout):
  got = select.uniform_placement(L, len(layout))
  assert valid(got, L, len(layout)), got
  gaps = np.diff(layout)
  if gaps.min() == gaps.max():  # nothing left to choose: the layout is determined by the rule
    assert got == tuple(layout)


def test_uniform_placement_is_valid_for_every_budget():
  for L in range(3, 40):
    for N in range(2, L):
      assert valid(select.uniform_placement(L, N), L, N), (L, N)


@pytest.mark.parametrize("L,N", [(8, 1), (8, 8), (8, 0)])
def test_budget_out_of_range_is_rejected(L, N):
  with pytest.raises(ValueError, match="n_mla"):
    select.smart_placement(np.zeros(L), N)
  with pytest.raises(ValueError, match="n_mla"):
    select.uniform_placement(L, N)


# -- sensitivity ---------------------------------------------------------------------------------
BASE = dict(
  vocab_size=48,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
)
HYB = dict(kv_lora_rank=16, q_lora_rank=16, chunk_size=8)


def _kl64(t_logits, s_logits):
  def ls(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

  lp, lq = ls(t_logits), ls(s_logits)
  return float(np.mean((np.exp(lp) * (lp - lq)).sum(-1)))


def _forward_swapped(mla_model, mamba_model, layer, tokens):
  """Logits of the all-Mamba2 student whose block `layer` is the MLA student's, run by hand."""
  pos = CausalLM.default_positions(tokens)
  h = mamba_model.embed(tokens)
  for i in range(len(mamba_model.layers)):
    h, _ = (mla_model if i == layer else mamba_model).layers[i](h, pos)
  return mamba_model.logits(h)


def test_sensitivity_scores_equal_direct_kl_differences():
  teacher = CausalLM(LlamaConfig(**BASE), rngs=nnx.Rngs(0))
  mla_model = CausalLM(HybridConfig(**BASE, **HYB, mla_layers=(0, 1)), rngs=nnx.Rngs(1))
  mamba_model = CausalLM(HybridConfig(**BASE, **HYB), rngs=nnx.Rngs(2))
  # Share embeddings/head with the teacher as the ILD students do, so KLs are of a useful size.
  for m in (mla_model, mamba_model):
    for name in ("embed_tokens", "lm_head"):
      nnx.update(getattr(m, name), nnx.state(getattr(teacher, name)))
  rng = np.random.default_rng(0)
  batches = [{"tokens": rng.integers(0, 48, size=(2, 16)).astype(np.int32)} for _ in range(2)]

  scores = select.sensitivity_scores(teacher, mla_model, mamba_model, batches)

  tokens = [jnp.asarray(b["tokens"]) for b in batches]
  t_logits = [np.asarray(teacher(t)) for t in tokens]

  def kl(forward):
    return np.mean([_kl64(tl, np.asarray(forward(t))) for tl, t in zip(t_logits, tokens)])

  base = kl(mamba_model)
  want = np.array([base - kl(lambda t: _forward_swapped(mla_model, mamba_model, l, t)) for l in range(2)])
  assert scores.shape == (2,)
  assert np.ptp(want) > 1e-4  # the layers really differ, so a permuted answer would fail
  np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)
