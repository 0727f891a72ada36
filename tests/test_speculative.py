"""Speculative decoding: greedy output == the target's own greedy output (hybrid and pure Mamba2
targets, smaller drafts, ragged batch of 3), the rejection rule's output distribution == the target
distribution on constructed probabilities, and the Mamba2 rollback-by-replay against running only
the accepted prefix.

The drafts are the target's first layers (same embeddings / head), so they agree with the target
often but not always, and every acceptance length shows up.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zebra_jax.config import HybridConfig
from zebra_jax.infer import forward_chunk, generate, init_cache, prefill
from zebra_jax.infer.decode import pad_prompts
from zebra_jax.infer.speculative import accept_drafts, accept_greedy, commit
from zebra_jax.models.hybrid import CausalLM

V = 64
BASE = dict(
  vocab_size=V,
  hidden_size=32,
  intermediate_size=48,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-5,
  tie_word_embeddings=True,
  chunk_size=4,
  q_lora_rank=16,
  kv_lora_rank=16,
  impl="reference",
  eos_token_id=None,
)
TARGETS = {  # kind: (config fields, draft layers)
  "hybrid": (dict(num_hidden_layers=4, mla_layers=(0,), attn_layers=(3,)), 2),  # MLA, M2, M2, GQA
  "mamba2": (dict(num_hidden_layers=4), 3),  # pure Mamba2
}
PROMPTS = [np.random.default_rng(0).integers(0, V, n).tolist() for n in (5, 11, 2)]


def make_target(kind):
  model = CausalLM(HybridConfig(**TARGETS[kind][0], **BASE), rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p * 2.0 if p.ndim >= 2 else p, state))
  model.embed_tokens.embedding[...] = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (V, 32))
  return model


def truncated(model, n_layers):
  """A smaller draft: the target's first `n_layers` blocks, embedding and final norm."""
  c = model.config
  dc = c.replace(
    num_hidden_layers=n_layers,
    mla_layers=tuple(i for i in c.mla_layers if i < n_layers),
    attn_layers=tuple(i for i in c.attn_layers if i < n_layers),
  )
  draft = CausalLM(dc, rngs=nnx.Rngs(1))
  for i in range(n_layers):
    nnx.update(draft.layers[i], nnx.state(model.layers[i]))
  nnx.update(draft.embed_tokens, nnx.state(model.embed_tokens))
  nnx.update(draft.norm, nnx.state(model.norm))
  return draft


@functools.lru_cache(maxsize=None)
def pair(kind):
  target = make_target(kind)
  return target, truncated(target, TARGETS[kind][1])


# ------------------------------------------------------------------------------------------------
# greedy: exactly the target's greedy output
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(TARGETS))
def test_speculative_greedy_equals_target_greedy(kind):
  target, draft = pair(kind)
  plain = generate(target, PROMPTS, 16)
  spec, stats = generate(target, PROMPTS, 16, draft=draft, num_draft_tokens=3, return_stats=True)
  assert spec == plain
  assert all(len(o) == 16 for o in plain) and len({tuple(o) for o in plain}) == 3
  # the test exercises rejections and acceptances of several lengths
  assert 0.1 < stats["acceptance_rate"] < 0.9, stats
  assert sum(h > 0 for h in stats["accept_hist"]) >= 3, stats
  # a stop token that some sequences emit mid-round: cut exactly where plain greedy cuts
  stop = plain[1][6]
  assert generate(target, PROMPTS, 16, draft=draft, num_draft_tokens=3, stop_tokens=[stop]) == generate(
    target, PROMPTS, 16, stop_tokens=[stop]
  )


def test_draft_identical_to_target_accepts_everything():
  target, _ = pair("hybrid")
  plain = generate(target, PROMPTS, 9)
  spec, stats = generate(target, PROMPTS, 9, draft=target, num_draft_tokens=4, return_stats=True)
  assert spec == plain and stats["acceptance_rate"] == 1.0
  assert stats["target_calls"] == 2  # 1 token from the prefill + 2 rounds of 4 + 1
  # sampling: p == q, so every draft is accepted (up to float noise between the two paths)
  out, stats = generate(
    target, PROMPTS, 9, draft=target, num_draft_tokens=4, temperature=1.0, top_k=30, seed=1, return_stats=True
  )
  assert stats["acceptance_rate"] > 0.95 and all(len(o) == 9 for o in out)


# ------------------------------------------------------------------------------------------------
# the rejection rule on constructed distributions
# ------------------------------------------------------------------------------------------------
def test_accept_drafts_output_distribution_is_the_target():
  """K = 2, V = 4, context-free p_1..p_3 and q_1, q_2: the emitted tokens must be distributed as
  p_1, then p_2 (given d_1 accepted), then p_3 (bonus, given both accepted); P(accept d_1) must be
  sum_x min(p_1, q_1)."""
  p = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.4, 0.4], [0.25, 0.25, 0.0, 0.5]])
  q = np.array([[0.1, 0.6, 0.1, 0.2], [0.7, 0.1, 0.1, 0.1]])
  N = 60000
  rng = np.random.default_rng(0)
  drafts = np.stack([rng.choice(4, N, p=q[0]), rng.choice(4, N, p=q[1])], axis=1)
  n_acc, nxt = jax.jit(accept_drafts)(
    jnp.asarray(np.broadcast_to(p, (N, 3, 4)), jnp.float32),
    jnp.asarray(np.broadcast_to(q, (N, 2, 4)), jnp.float32),
    jnp.asarray(drafts, jnp.int32),
    jax.random.PRNGKey(0),
  )
  n_acc, nxt = np.asarray(n_acc), np.asarray(nxt)
  emitted = np.where(np.arange(3)[None] < n_acc[:, None], np.pad(drafts, ((0, 0), (0, 1))), -1)
  emitted[np.arange(N), n_acc] = nxt
  freq = lambda x: np.bincount(x, minlength=4) / len(x)
  assert np.abs(freq(emitted[:, 0]) - p[0]).max() < 0.01
  assert np.abs(freq(emitted[n_acc >= 1, 1]) - p[1]).max() < 0.015
  assert np.abs(freq(emitted[n_acc >= 2, 2]) - p[2]).max() < 0.03
  assert abs((n_acc >= 1).mean() - np.minimum(p[0], q[0]).sum()) < 0.01
  assert freq(emitted[:, 0])[3] == 0.0  # p_1 gives token 3 no mass: never emitted


def test_accept_greedy():
  logits = jnp.asarray(np.eye(5)[[[2, 3, 4, 0], [1, 1, 1, 1], [2, 3, 4, 0]]] * 3.0)  # argmax rows
  drafts = jnp.asarray([[2, 3, 4], [0, 1, 1], [2, 3, 1]])
  n_acc, nxt = accept_greedy(logits, drafts)
  assert n_acc.tolist() == [3, 0, 2] and nxt.tolist() == [0, 1, 4]


# ------------------------------------------------------------------------------------------------
# Mamba2 rollback without per-step states
# ------------------------------------------------------------------------------------------------
def test_commit_replays_accepted_prefix():
  target, _ = pair("hybrid")
  K1 = 4
  tokens, lengths = pad_prompts(PROMPTS, V)
  cache = init_cache(target.config, 3, 32)
  _, cache = prefill(target, cache, tokens, lengths)
  chunk = jnp.asarray(np.random.default_rng(3).integers(0, V, (3, K1)), jnp.int32)
  keep = jnp.asarray([0, 2, 4], jnp.int32)

  @nnx.jit
  def verify_and_commit(model, cache, chunk, keep):
    _, advanced, records = forward_chunk(model, cache, chunk, mode="decode", logits="none")
    return commit(model, cache, advanced, records, keep)

  rolled = verify_and_commit(target, cache, chunk, keep)
  # oracle: run only the kept prefix (masked per sequence) from the same starting cache
  direct = nnx.jit(lambda m, c, t, n: forward_chunk(m, c, t, n, mode="extend", logits="none")[1])(
    target, cache, chunk, keep
  )
  np.testing.assert_array_equal(np.asarray(rolled.lengths), lengths + np.asarray(keep))
  for l, kind in enumerate(target.config.layer_types()):
    if kind == "mamba2":
      for name in ("ssm", "conv"):
        a, b = getattr(rolled.layers[l], name), getattr(direct.layers[l], name)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # MLA paths differ
      # nothing kept -> the checkpoint state itself
      np.testing.assert_array_equal(np.asarray(rolled.layers[l].ssm[0]), np.asarray(cache.layers[l].ssm[0]))
  # continuing from the rolled-back cache == the full forward over prompt + kept tokens
  nxt = jnp.asarray([7, 8, 9], jnp.int32)
  logits = nnx.jit(lambda m, c, t: forward_chunk(m, c, t, mode="decode", logits="last")[0])(
    target, rolled, nxt[:, None]
  )
  for b, p in enumerate(PROMPTS):
    seq = p + np.asarray(chunk[b, : int(keep[b])]).tolist() + [int(nxt[b])]
    ref = np.asarray(nnx.jit(lambda m, t: m(t))(target, jnp.asarray([seq]))[0, -1])
    np.testing.assert_allclose(np.asarray(logits[b]), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ------------------------------------------------------------------------------------------------
# the benchmark's draft: the target's first layers, distilled to the target
# ------------------------------------------------------------------------------------------------
def test_truncated_draft_is_the_targets_first_layers():
  from zebra_jax.bench.speculative import truncated_draft

  target = make_target("hybrid")
  tokens = jnp.asarray([PROMPTS[1]])
  got = truncated_draft(target, 2)(tokens)
  want = truncated(target, 2)(tokens)  # built block by block (the helper above)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  assert truncated_draft(target, 2).config.mla_layers == (0,)
  with pytest.raises(ValueError, match="draft layers must be in"):
    truncated_draft(target, 4)


def test_distill_draft_lowers_kl_and_keeps_speculative_greedy_exact():
  from zebra_jax.bench.speculative import distill_draft, draft_kl, pack_rows, truncated_draft

  target = make_target("hybrid")
  rng = np.random.default_rng(3)
  prompts = [rng.integers(0, V, 4).tolist() for _ in range(48)]
  seqs = [p + o for p, o in zip(prompts, generate(target, prompts, 28, temperature=1.0, seed=2))]
  tokens, mask = pack_rows(seqs + [[1, 2, 3]], 32)
  assert tokens.shape == (49, 32) and mask[-1].sum() == 3 and tokens[-1, 3:].sum() == 0
  train, held = (tokens[:40], mask[:40]), (tokens[40:48], mask[40:48])

  draft = truncated_draft(target, 1)
  # draft_kl against float64 numpy on the same logits
  t64 = np.asarray(target(jnp.asarray(held[0])), np.float64)
  d64 = np.asarray(draft(jnp.asarray(held[0])), np.float64)
  lp = (
    t64 - np.log(np.exp(t64 - t64.max(-1, keepdims=True)).sum(-1, keepdims=True)) - t64.max(-1, keepdims=True)
  )
  lq = (
    d64 - np.log(np.exp(d64 - d64.max(-1, keepdims=True)).sum(-1, keepdims=True)) - d64.max(-1, keepdims=True)
  )
  kl_np = ((np.exp(lp) * (lp - lq)).sum(-1) * held[1]).sum() / held[1].sum()
  kl0 = draft_kl(target, draft, *held, batch_size=3)
  np.testing.assert_allclose(kl0, kl_np, rtol=1e-4)

  target_logits = np.asarray(target(jnp.asarray(held[0])))
  plain = generate(target, PROMPTS, 16)
  _, stats0 = generate(target, PROMPTS, 16, draft=draft, num_draft_tokens=3, return_stats=True)
  losses = distill_draft(target, draft, *train, steps=80, lr=3e-3, batch_size=8, log=None)
  assert len(losses) == 80 and np.mean(losses[-10:]) < np.mean(losses[:10])
  kl1 = draft_kl(target, draft, *held)
  assert kl1 < 0.8 * kl0, (kl0, kl1)  # on rows it never saw (measured 1.47 -> 1.03)
  np.testing.assert_array_equal(np.asarray(target(jnp.asarray(held[0]))), target_logits)  # untouched
  spec, stats1 = generate(target, PROMPTS, 16, draft=draft, num_draft_tokens=3, return_stats=True)
  assert spec == plain
  assert stats1["acceptance_rate"] >= stats0["acceptance_rate"], (stats0, stats1)


def test_distill_draft_refuses_too_few_rows():
  from zebra_jax.bench.speculative import distill_draft, truncated_draft

  target = make_target("mamba2")
  with pytest.raises(ValueError, match="at least batch_size=8 rows"):
    distill_draft(
      target,
      truncated_draft(target, 1),
      np.zeros((4, 8), np.int32),
      np.ones((4, 8), np.float32),
      steps=2,
      batch_size=8,
    )


def test_agreeing_prefix():
  from zebra_jax.bench.speculative import agreeing_prefix

  assert agreeing_prefix([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]]) == 1.0
  assert agreeing_prefix([[1, 9, 3], [4, 5]], [[1, 2, 3], [4, 5]]) == 3 / 5  # 1 of 3, 2 of 2
  assert agreeing_prefix([[1, 2]], [[1, 2, 3, 4]]) == 0.5  # stopped early
