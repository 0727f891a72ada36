"""Speculative decoding (Leviathan et al.; MambaInLlama's recompute scheme for Mamba2 rollback).

Both models have processed every emitted token except the last one, `pending`. One round:
1. draft: K+1 single-token decode steps on [pending, d_1, .., d_K] give the proposals d_1..d_K
   (sampled from the draft's filtered distribution q; the last step only advances its cache);
2. verify: ONE target call on the same K+1 tokens returns the target distributions p_1..p_{K+1};
3. accept: d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)) (greedy: while
   argmax p_i == d_i); at the first rejection j the token is drawn from normalise(max(0, p_j - q_j)),
   and after K acceptances a bonus token from p_{K+1}. a accepted drafts emit a + 1 tokens;
4. commit: a + 1 of the K+1 processed tokens are kept, per sequence. Attention / MLA caches roll
   back by length alone (stale rows are masked, then overwritten). Mamba2 layers keep NO per-step
   states: the round starts from one checkpoint (the committed state before the round) and the
   forward passes record only the per-step inputs (pre-conv [x|B|C] and raw dt, O(K * (conv_dim +
   nheads)) per layer); the accepted prefix is then replayed from the checkpoint with the masked
   scan (`Mamba2.replay`), which also yields the conv state as a window of [checkpoint | inputs].

Batches keep per-sequence acceptance lengths; a finished sequence commits 0 tokens per round.
The whole loop (all rounds) is one jitted `lax.while_loop`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zebra_jax.infer.cache import Cache, init_cache
from zebra_jax.infer.decode import (
  constrain_cache,
  forward_chunk,
  pad_prompts,
  prefill,
  round_up,
  shard_for_inference,
  stop_array,
  truncate_at_stop,
)
from zebra_jax.infer.sampling import SamplingConfig, probs, sample
from zebra_jax.parallel.sharding import activation_mesh


# ------------------------------------------------------------------------------------------------
# acceptance rule
# ------------------------------------------------------------------------------------------------
def accept_drafts(p_BKV, q_BKV, drafts_BK, key):
  """Standard speculative rejection sampling on explicit distributions.

  p_BKV (B, K+1, V): target distributions at the K+1 verified positions; q_BKV (B, K, V): the draft
  distributions the drafts were drawn from; drafts_BK (B, K). Returns (n_accepted (B,) in [0, K],
  next_token (B,)): the token after the accepted drafts (residual sample or bonus token).
  """
  B, K = drafts_BK.shape
  k_u, k_s = jax.random.split(key)
  pd = jnp.take_along_axis(p_BKV[:, :K], drafts_BK[..., None], axis=-1)[..., 0]
  qd = jnp.take_along_axis(q_BKV, drafts_BK[..., None], axis=-1)[..., 0]
  u = jax.random.uniform(k_u, (B, K), jnp.float32)  # [0, 1)
  ok = u * qd < pd  # P(accept) = min(1, pd / qd)
  n_acc = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
  q_ext = jnp.concatenate([q_BKV, jnp.zeros_like(q_BKV[:, :1])], axis=1)  # q_{K+1} = 0 -> p itself
  take = lambda a: jnp.take_along_axis(a, n_acc[:, None, None], axis=1)[:, 0]
  p_a, q_a = take(p_BKV), take(q_ext)
  resid = jnp.maximum(p_a - q_a, 0.0)
  total = jnp.sum(resid, axis=-1, keepdims=True)
  dist = jnp.where(total > 0, resid / jnp.where(total > 0, total, 1.0), p_a)
  nxt = jax.random.categorical(k_s, jnp.log(dist), axis=-1)
  return n_acc.astype(jnp.int32), nxt.astype(jnp.int32)


def accept_greedy(p_logits_BKV, drafts_BK):
  """Greedy special case: accept while the target's argmax equals the draft; then its argmax."""
  K = drafts_BK.shape[1]
  tgt = jnp.argmax(p_logits_BKV, axis=-1).astype(jnp.int32)  # (B, K+1)
  n_acc = jnp.sum(jnp.cumprod((tgt[:, :K] == drafts_BK).astype(jnp.int32), axis=1), axis=1)
  return n_acc.astype(jnp.int32), jnp.take_along_axis(tgt, n_acc[:, None], axis=1)[:, 0]


# ------------------------------------------------------------------------------------------------
# rollback
# ------------------------------------------------------------------------------------------------
def commit(model, checkpoint: Cache, advanced: Cache, records, n_commit_B) -> Cache:
  """The cache after keeping the first n_commit[b] of the tokens run from `checkpoint` to `advanced`.

  Attention / MLA (no record): the advanced rows with the length set back. Mamba2: its mixer replays
  the recorded inputs of the first n_commit steps from the checkpoint state (`Mamba2.replay`).
  """
  layers = tuple(
    lc1 if rec is None else block.mixer.replay(rec, lc0, n_commit_B)
    for block, lc0, lc1, rec in zip(model.layers, checkpoint.layers, advanced.layers, records)
  )
  return Cache(layers, checkpoint.lengths + n_commit_B)


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _SpecCarry:
  round: jax.Array
  t_cache: Cache
  d_cache: Cache
  pending: jax.Array  # (B,) last emitted token, not yet processed by either model
  n_out: jax.Array  # (B,) tokens emitted so far
  out: jax.Array  # (B, max_new + K + 1)
  done: jax.Array  # (B,)
  accepted: jax.Array  # (B,) accepted drafts
  drafted: jax.Array  # (B,) proposed drafts
  rounds: jax.Array  # (B,) rounds in which the sequence was active
  hist: jax.Array  # (K+1,) how many (sequence, round) pairs accepted 0..K drafts


def _spec_round(target, draft, c: _SpecCarry, key, stops_arr, max_new, *, sampling, K, pad_id):
  rkey = jax.random.fold_in(key, c.round + 1)
  k_draft, k_acc = jax.random.split(rkey)
  active = ~c.done

  # 1. draft K+1 tokens one at a time, recording the Mamba2 inputs of each step
  def dstep(carry, i):
    cache, tok = carry
    logits, cache, recs = forward_chunk(draft, cache, tok[:, None], mode="decode", logits="last")
    nxt = sample(logits, jax.random.fold_in(k_draft, i), sampling)
    q = None if sampling.greedy else probs(logits, sampling)
    recs = tuple(None if r is None else (r[0][:, 0], r[1][:, 0]) for r in recs)
    return (cache, nxt), (nxt, q, recs)

  (d_adv, _), (d_toks, q, d_recs) = jax.lax.scan(dstep, (c.d_cache, c.pending), jnp.arange(K + 1))
  drafts = d_toks[:K].T  # (B, K)
  d_recs = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), d_recs)  # (B, K+1, ...)

  # 2. verify all K+1 in one target call
  verify = jnp.concatenate([c.pending[:, None], drafts], axis=1)
  p_logits, t_adv, t_recs = forward_chunk(target, c.t_cache, verify, mode="decode", logits="all")

  # 3. accept
  if sampling.greedy:
    n_acc, nxt = accept_greedy(p_logits, drafts)
  else:
    n_acc, nxt = accept_drafts(probs(p_logits, sampling), jnp.swapaxes(q[:K], 0, 1), drafts, k_acc)

  # 4. emit a + 1 tokens (cut at a stop token)
  idx = jnp.arange(K + 1)[None, :]
  cand = jnp.where(
    idx < n_acc[:, None],
    jnp.pad(drafts, ((0, 0), (0, 1))),
    jnp.where(idx == n_acc[:, None], nxt[:, None], pad_id),
  )
  is_stop = jnp.isin(cand, stops_arr) & (idx <= n_acc[:, None])
  has_stop = jnp.any(is_stop, axis=1)
  n_emit = jnp.where(has_stop, jnp.argmax(is_stop, axis=1) + 1, n_acc + 1)
  n_emit = jnp.where(active, n_emit, 0)
  out = jax.vmap(lambda o, t, s: jax.lax.dynamic_update_slice_in_dim(o, t, s, 0))(
    c.out, jnp.where(active[:, None], cand, pad_id), c.n_out
  )
  n_out = c.n_out + n_emit
  done = c.done | (active & has_stop) | (n_out >= max_new)

  # 5. commit a + 1 processed tokens (0 for finished sequences) in both models
  n_commit = jnp.where(active, n_acc + 1, 0).astype(jnp.int32)
  t_cache = commit(target, c.t_cache, t_adv, t_recs, n_commit)
  d_cache = commit(draft, c.d_cache, d_adv, d_recs, n_commit)
  a_act = jnp.where(active, n_acc, 0)
  return _SpecCarry(
    c.round + 1,
    t_cache,
    d_cache,
    jnp.where(active, nxt, c.pending),
    n_out,
    out,
    done,
    c.accepted + a_act,
    c.drafted + jnp.where(active, K, 0),
    c.rounds + active.astype(jnp.int32),
    c.hist
    + jnp.sum(jax.nn.one_hot(n_acc, K + 1, dtype=jnp.int32) * active[:, None].astype(jnp.int32), axis=0),
  )


@functools.partial(
  jax.jit,
  static_argnames=("t_graph", "d_graph", "sampling", "K", "pad_id", "mesh"),
  donate_argnames=("carry",),
)
def _spec_loop(
  t_state, d_state, carry, key, stops_arr, max_new, *, t_graph, d_graph, sampling, K, pad_id, mesh=None
):
  target, draft = nnx.merge(t_graph, t_state), nnx.merge(d_graph, d_state)
  round_ = functools.partial(
    _spec_round,
    target,
    draft,
    key=key,
    stops_arr=stops_arr,
    max_new=max_new,
    sampling=sampling,
    K=K,
    pad_id=pad_id,
  )

  def body(c):  # with a mesh, both caches stay in their layout (constrain_cache)
    with activation_mesh(mesh):
      c = round_(c)
    return dataclasses.replace(
      c, t_cache=constrain_cache(c.t_cache, mesh), d_cache=constrain_cache(c.d_cache, mesh)
    )

  cond = lambda c: ~jnp.all(c.done) & (c.round < max_new)
  return jax.lax.while_loop(cond, body, carry)


_sample_jit = jax.jit(sample, static_argnames=("sampling",))


def speculative_generate(
  target,
  draft,
  prompts,
  max_new_tokens: int,
  *,
  sampling: SamplingConfig,
  seed: int = 0,
  num_draft_tokens: int = 4,
  stops=(),
  max_len=None,
  prefill_chunk=512,
  pad_id: int = 0,
  cache_dtype=None,
  mesh=None,
):
  """Returns (generated token lists, stats). Called by `generate(..., draft=...)`, which resolves
  `mesh` (the target's mesh, or None); the draft is placed on the same mesh."""
  K = int(num_draft_tokens)
  if K < 1:
    raise ValueError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
  tc, dc = target.config, draft.config
  if tc.vocab_size != dc.vocab_size:
    raise ValueError(f"draft vocab_size={dc.vocab_size} differs from the target's {tc.vocab_size}")
  tokens, lengths = pad_prompts(
    prompts,
    tc.vocab_size,
    pad_id,
    multiple=8,
    new_tokens=max_new_tokens,
    max_positions=tc.max_position_embeddings,
  )
  B, T = tokens.shape
  need = int(lengths.max()) + int(max_new_tokens) + K + 1
  if max_len is None:
    max_len = round_up(max(need, round_up(T, prefill_chunk or T)), 64)
  elif max_len < need:
    raise ValueError(f"max_len={max_len} < longest prompt + max_new_tokens + num_draft_tokens + 1 = {need}")
  tokens = tokens[:, :max_len]
  if mesh is not None:  # the draft joins the target's mesh (a no-op when it is there already)
    shard_for_inference(draft, mesh)
  t_cache = init_cache(tc, B, max_len, cache_dtype, mesh=mesh)
  d_cache = init_cache(dc, B, max_len, cache_dtype, mesh=mesh)
  t_logits, t_cache = prefill(target, t_cache, tokens, lengths, chunk=prefill_chunk)
  _, d_cache = prefill(draft, d_cache, tokens, lengths, chunk=prefill_chunk)
  key = jax.random.PRNGKey(seed)
  first = _sample_jit(t_logits, jax.random.fold_in(key, 0), sampling)
  stops_arr = stop_array(stops)
  out = jnp.full((B, max_new_tokens + K + 1), pad_id, jnp.int32).at[:, 0].set(first)
  zeros = lambda: jnp.zeros((B,), jnp.int32)  # distinct buffers: the carry is donated
  carry = _SpecCarry(
    jnp.int32(0),
    t_cache,
    d_cache,
    first,
    zeros() + 1,
    out,
    jnp.isin(first, stops_arr) | (max_new_tokens <= 1),
    zeros(),
    zeros(),
    zeros(),
    jnp.zeros((K + 1,), jnp.int32),
  )
  t_graph, t_state = nnx.split(target)
  d_graph, d_state = nnx.split(draft)
  carry = _spec_loop(
    t_state,
    d_state,
    carry,
    key,
    stops_arr,
    jnp.int32(max_new_tokens),
    t_graph=t_graph,
    d_graph=d_graph,
    sampling=sampling,
    K=K,
    pad_id=pad_id,
    mesh=mesh,
  )
  out, n_out = np.asarray(carry.out), np.asarray(carry.n_out)
  result = [truncate_at_stop(out[b, : min(int(n_out[b]), max_new_tokens)], stops) for b in range(B)]
  accepted, drafted, rounds = (
    np.asarray(carry.accepted),
    np.asarray(carry.drafted),
    np.asarray(carry.rounds),
  )
  stats = {
    "num_draft_tokens": K,
    "target_calls": int(carry.round),  # verification calls (batched rounds)
    "accepted": accepted.tolist(),
    "drafted": drafted.tolist(),
    "rounds": rounds.tolist(),
    "accept_hist": np.asarray(carry.hist).tolist(),  # [#rounds accepting 0, 1, .., K drafts]
    "acceptance_rate": float(accepted.sum() / max(drafted.sum(), 1)),
    "mean_accepted_per_round": float(accepted.sum() / max(rounds.sum(), 1)),
    # tokens emitted per verification call and sequence (first token comes from the prefill)
    "tokens_per_round": float((accepted.sum() + rounds.sum()) / max(rounds.sum(), 1)),
  }
  return result, stats
