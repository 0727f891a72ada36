"""Generation: cached prefill/decode against the full-sequence forward, the no-cache oracle, the
accounting formula, sampling filters against numpy, and greedy generation against transformers.

The oracle for every cached logit is `model(whole sequence)` run on each sequence alone (no padding),
which tests/test_mla.py, test_mamba2.py and test_convert.py check against float64 numpy and
transformers. Weights are scaled up so attention is sharp and the logits are far from uniform.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zebra_jax import accounting, presets
from zebra_jax.config import HybridConfig, LlamaConfig
from zebra_jax.infer import (
  cache_bytes_per_token,
  cache_nbytes,
  decode_step,
  filter_logits,
  generate,
  grow_cache,
  init_cache,
  prefill,
  sample,
  state_bytes_per_sequence,
  stream,
)
from zebra_jax.infer.decode import pad_prompts
from zebra_jax.infer.sampling import SamplingConfig
from zebra_jax.models.hybrid import CausalLM

V = 64
LLAMA = dict(
  vocab_size=V,
  hidden_size=32,
  intermediate_size=48,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-5,
  impl="reference",
)
MLA = dict(q_lora_rank=16, kv_lora_rank=16)
CONFIGS = {
  "llama": lambda: LlamaConfig(num_hidden_layers=2, **LLAMA),
  "mla": lambda: HybridConfig(
    num_hidden_layers=2, mla_layers=(0, 1), use_lora_layer_norm=True, **MLA, **LLAMA
  ),
  "mamba2": lambda: HybridConfig(num_hidden_layers=2, chunk_size=4, **LLAMA),
  "mixed": lambda: HybridConfig(
    num_hidden_layers=3, mla_layers=(0,), attn_layers=(2,), chunk_size=4, **MLA, **LLAMA
  ),
}
PROMPT_LENS = (7, 13, 2)  # ragged


def make_model(config, seed=0, scale=2.0):
  """Random model with matrices scaled up (sharp attention, non-trivial logits)."""
  model = CausalLM(config, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p * scale if p.ndim >= 2 else p, state))
  return model


def prompts_for(lens, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, V, n).tolist() for n in lens]


@functools.lru_cache(maxsize=None)
def shared_model(kind):
  """One model per config kind for the whole file (nothing here mutates a model)."""
  return make_model(CONFIGS[kind]())


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(state, tokens, *, graphdef):
  return nnx.merge(graphdef, state)(tokens)


def full_logits(model, seq, pad_to=32):
  """model(seq) on the sequence alone; right-padded to one length so one compile serves all
  (the model is causal, so positions < len(seq) do not see the padding)."""
  graphdef, state = nnx.split(model)
  tokens = np.zeros((1, pad_to), np.int32)
  tokens[0, : len(seq)] = seq
  return np.asarray(_forward(state, jnp.asarray(tokens), graphdef=graphdef)[0, : len(seq)], np.float64)


def rel(a, ref):
  return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


# ------------------------------------------------------------------------------------------------
# incremental decoding == full forward
# ------------------------------------------------------------------------------------------------
# prefill chunk 4 < prompt lengths 7 and 13 (three chunks, the last one partial); None = one pass
@pytest.mark.parametrize("kind,chunk", [(k, 4) for k in CONFIGS] + [("mixed", None)])
def test_incremental_logits_match_full_forward(kind, chunk):
  model = shared_model(kind)
  config = model.config
  prompts = prompts_for(PROMPT_LENS)
  forced = np.random.default_rng(1).integers(0, V, (len(prompts), 5))
  tokens, lengths = pad_prompts(prompts, V)
  cache = init_cache(config, len(prompts), 24)
  pre, cache = prefill(model, cache, tokens, lengths, chunk=chunk, all_logits=True)
  np.testing.assert_array_equal(np.asarray(cache.lengths), lengths)
  steps = []
  for i in range(forced.shape[1]):
    logits, cache = decode_step(model, cache, forced[:, i])
    steps.append(np.asarray(logits))
  np.testing.assert_array_equal(np.asarray(cache.lengths), lengths + forced.shape[1])
  for b, p in enumerate(prompts):
    ref = full_logits(model, p + forced[b].tolist())
    n = len(p)
    assert rel(pre[b, :n], ref[:n]) < 1e-4, f"prefill logits of sequence {b}"
    inc = np.stack([s[b] for s in steps])
    assert rel(inc, ref[n:]) < 1e-4, f"decode logits of sequence {b}"


def test_decode_uses_absorbed_mla_kernel_dispatch(monkeypatch):
  """Single-token MLA decode goes through ops.mla.mla_decode (where Pallas kernels register)."""
  from zebra_jax.models import mla as mla_mod

  calls = []
  real = mla_mod.mla_decode

  def spy(*args, **kw):
    calls.append(args[2].shape)
    return real(*args, **kw)

  monkeypatch.setattr(mla_mod, "mla_decode", spy)
  config = CONFIGS["mla"]().replace(vocab_size=V + 8)  # fresh shapes: nothing cached by jit
  model = make_model(config)
  cache = init_cache(config, 2, 16)
  tokens, lengths = pad_prompts(prompts_for((3, 5)), V)
  _, cache = prefill(model, cache, tokens, lengths)
  decode_step(model, cache, np.array([1, 2]))
  assert calls and calls[0] == (2, 16, config.kv_lora_rank + config.qk_rope_head_dim)


# ------------------------------------------------------------------------------------------------
# generate: cached == uncached oracle, stop tokens, streaming
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "sampling",
  [
    dict(),
    dict(temperature=0.9, top_k=20, top_p=0.9, seed=3),
    dict(temperature=0.9, top_p=0.9, repetition_penalty=1.4, seed=3),
  ],
  ids=["greedy", "sampled", "sampled_penalty"],
)
def test_generate_cache_equals_no_cache(sampling):
  model = shared_model("mixed")
  prompts = prompts_for(PROMPT_LENS, seed=2)
  with_cache = generate(model, prompts, 10, stop_tokens=(), prefill_chunk=4, **sampling)
  without = generate(model, prompts, 10, stop_tokens=(), use_cache=False, **sampling)
  assert with_cache == without
  assert all(len(o) == 10 for o in with_cache)
  assert len({tuple(o) for o in with_cache}) == len(prompts)


def test_bucketed_prompts_share_one_compiled_decode_loop_and_match_the_oracle():
  """What the samples stage does: prompts padded to a multiple of 16 and a fixed cache length, so
  batches whose longest prompts differ (5 vs 13 tokens) reuse one compiled prefill and one decode
  loop; tokens equal the no-cache oracle's."""
  from zebra_jax.infer import decode as decode_lib

  model = shared_model("mixed")
  jitted = (decode_lib.decode_loop, decode_lib._chunk_jit)
  before = [f._cache_size() for f in jitted]
  for lens, seed in (((5, 3), 4), ((13, 5), 5)):
    prompts = prompts_for(lens, seed=seed)
    got = generate(model, prompts, 6, stop_tokens=(), pad_multiple=16, max_len=32)
    assert got == generate(model, prompts, 6, stop_tokens=(), use_cache=False)
  assert [f._cache_size() - b for f, b in zip(jitted, before)] == [1, 1]
  with pytest.raises(ValueError, match="pad_multiple"):
    generate(model, prompts, 6, pad_multiple=0)


def test_generation_in_rounds_equals_one_call_and_stopped_rows_leave():
  """distill/samples.generate_in_rounds: 3 rounds of 2 tokens, batches of 2 regrouped as rows stop,
  greedy (top_k=1): the tokens of one 6-token `generate` call, cut after the stop token."""
  from zebra_jax.distill.samples import generate_in_rounds

  model = shared_model("mixed")
  prompts = prompts_for((5, 3, 9), seed=6)
  free = generate(model, prompts, 6, stop_tokens=())
  stop = free[0][2]  # prompt 0 stops in round 2; the others may too, wherever `stop` comes
  expected = [o[: o.index(stop) + 1] if stop in o else o for o in free]
  got = generate_in_rounds(
    model,
    prompts,
    6,
    round_tokens=2,
    batch_size=2,
    temperature=1.0,
    top_p=None,
    top_k=1,
    seed=0,
    stop_tokens=[stop],
  )
  assert got == expected
  with pytest.raises(ValueError, match="must divide"):
    generate_in_rounds(
      model,
      prompts,
      6,
      round_tokens=4,
      batch_size=2,
      temperature=1.0,
      top_p=None,
      top_k=1,
      seed=0,
      stop_tokens=[stop],
    )


def test_stop_tokens_and_streaming():
  model = shared_model("mixed")
  prompts = prompts_for(PROMPT_LENS, seed=2)
  free = generate(model, prompts, 10, stop_tokens=())
  stop = free[0][3]
  expected = []
  for o in free:
    cut = o.index(stop) + 1 if stop in o else len(o)
    expected.append(o[:cut])
  assert generate(model, prompts, 10, stop_tokens=[stop]) == expected
  assert generate(model, prompts, 10, stop_tokens=[stop], use_cache=False) == expected
  pieces = list(stream(model, prompts, 10, stop_tokens=[stop], every=3))
  assert [sum((p[b] for p in pieces), []) for b in range(len(prompts))] == expected
  assert len(pieces[0][0]) == 3


# ------------------------------------------------------------------------------------------------
# the windowed decode cache (cache_window): grown in whole windows, same tokens
# ------------------------------------------------------------------------------------------------
# prompts 7, 13, 2 (padded to 16; prefill chunk 4 -> 4 whole chunks), window 8, 20 new tokens: the
# cache starts at 16 rows and grows to 24, 32, 40 (steps 3, 11, 19 write at 13 + j >= the length)
WIN, NEW = 8, 20


def record_decode_loops(monkeypatch):
  """Wraps decode.decode_loop: [(cache rows, first step, end step)] per call."""
  from zebra_jax.infer import decode as decode_lib

  calls, real = [], decode_lib.decode_loop

  def spy(state, carry, i_end, *args, **kw):
    calls.append((carry.cache.max_len, int(carry.i), int(i_end)))
    return real(state, carry, i_end, *args, **kw)

  monkeypatch.setattr(decode_lib, "decode_loop", spy)
  return calls


@pytest.mark.parametrize(
  "kind,sampling",
  [
    ("llama", dict()),
    ("mixed", dict()),
    ("mamba2", dict()),
    ("llama", dict(temperature=1.0, top_k=8, seed=5)),
    ("mixed", dict(temperature=1.0, top_k=8, seed=5)),
  ],
  ids=["llama-greedy", "mixed-greedy", "mamba2-greedy", "llama-sampled", "mixed-sampled"],
)
def test_windowed_cache_generates_the_tokens_of_the_oracle_and_the_full_cache(kind, sampling):
  model = shared_model(kind)
  prompts = prompts_for(PROMPT_LENS, seed=7)
  kw = dict(stop_tokens=(), prefill_chunk=4, **sampling)
  windowed = generate(model, prompts, NEW, cache_window=WIN, **kw)
  assert windowed == generate(model, prompts, NEW, use_cache=False, **kw)
  assert windowed == generate(model, prompts, NEW, cache_window=None, **kw)
  assert all(len(o) == NEW for o in windowed) and len({tuple(o) for o in windowed}) == len(prompts)


def test_windowed_cache_grows_in_whole_windows_up_to_max_len(monkeypatch):
  model = shared_model("mixed")
  prompts = prompts_for(PROMPT_LENS, seed=7)
  kw = dict(stop_tokens=(), prefill_chunk=4)
  calls = record_decode_loops(monkeypatch)
  full = generate(model, prompts, NEW, cache_window=None, **kw)
  assert calls == [(64, 0, NEW)]  # the default max_len: 13 + 20 rounded up to 64, from the start
  calls.clear()
  assert generate(model, prompts, NEW, cache_window=WIN, **kw) == full
  assert calls == [(16, 0, 3), (24, 3, 11), (32, 11, 19), (40, 19, 20)]
  # step j writes at 13 + j at most: each segment's last step fits, and no window is wasted
  assert all(13 + i1 <= n < 13 + i1 + WIN for n, _, i1 in calls)
  # max_len (36) not a multiple of the window: the last growth stops at it
  calls.clear()
  assert generate(model, prompts, NEW, cache_window=WIN, max_len=36, **kw) == full
  assert calls == [(16, 0, 3), (24, 3, 11), (32, 11, 19), (36, 19, 20)]
  # streaming: yields every 5 steps as before; segments end at yields and at full caches
  calls.clear()
  pieces = list(stream(model, prompts, NEW, every=5, cache_window=WIN, **kw))
  assert [len(p[0]) for p in pieces] == [5, 5, 5, 5]
  assert [sum((p[b] for p in pieces), []) for b in range(len(prompts))] == full
  segments = [(0, 3), (3, 5), (5, 10), (10, 11), (11, 15), (15, 19), (19, 20)]
  assert calls == [(rows, *s) for rows, s in zip((16, 24, 24, 24, 32, 32, 40), segments)]
  # a prefill that pads the prompt to whole chunks (16 -> 24 with chunks of 12) gets room for them
  calls.clear()
  assert generate(model, prompts, NEW, stop_tokens=(), prefill_chunk=12, cache_window=WIN) == full
  assert calls[0] == (24, 0, 11)


def test_windowed_cache_stop_tokens_end_rows_and_stop_the_growth(monkeypatch):
  model = shared_model("mixed")
  prompts = prompts_for(PROMPT_LENS, seed=7)
  free = generate(model, prompts, NEW, stop_tokens=(), prefill_chunk=4, cache_window=None)
  stops = {o[4] for o in free}  # every row stops by its 5th token (step 4)
  expected = [o[: min(i for i, t in enumerate(o) if t in stops) + 1] for o in free]
  calls = record_decode_loops(monkeypatch)
  assert generate(model, prompts, NEW, stop_tokens=stops, prefill_chunk=4, cache_window=WIN) == expected
  assert calls == [(16, 0, 3), (24, 3, 11)]  # all rows stopped in the second segment: no growth after
  calls.clear()
  one = {free[1][6]}  # only some rows stop; the rest run on through every window
  expected = [o[: o.index(free[1][6]) + 1] if free[1][6] in o else o for o in free]
  assert any(len(o) < NEW for o in expected) and any(len(o) == NEW for o in expected)
  assert generate(model, prompts, NEW, stop_tokens=one, prefill_chunk=4, cache_window=WIN) == expected
  assert generate(model, prompts, NEW, stop_tokens=one, prefill_chunk=4, use_cache=False) == expected


def test_grow_cache_appends_zero_rows_and_keeps_the_states():
  config = CONFIGS["mixed"]()  # layer 0 MLA, layer 1 Mamba2, layer 2 attention
  B, S, N = 3, 8, 20
  cache = init_cache(config, B, S)
  rng = np.random.default_rng(0)
  filled = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), cache)
  filled = dataclasses.replace(filled, lengths=jnp.asarray([3, 8, 1], jnp.int32))
  before = jax.tree.map(np.asarray, filled)
  grown = grow_cache(filled, N)
  (latent, mamba, kv), (latent0, mamba0, kv0) = grown.layers, before.layers
  r = config.kv_lora_rank + config.qk_rope_head_dim
  assert latent.rows.shape == (B, N, r) and kv.k.shape == kv.v.shape == (B, 2, N, config.head_dim)
  assert grown.max_len == N
  np.testing.assert_array_equal(np.asarray(latent.rows)[:, :S], latent0.rows)
  assert not np.asarray(latent.rows)[:, S:].any()
  for new, old in ((kv.k, kv0.k), (kv.v, kv0.v)):
    np.testing.assert_array_equal(np.asarray(new)[:, :, :S], old)
    assert not np.asarray(new)[:, :, S:].any()
  for new, old in ((mamba.ssm, mamba0.ssm), (mamba.conv, mamba0.conv)):
    assert new.shape == old.shape
    np.testing.assert_array_equal(np.asarray(new), old)
  np.testing.assert_array_equal(np.asarray(grown.lengths), [3, 8, 1])
  assert grow_cache(grown, N) is grown
  with pytest.raises(ValueError, match="new_len=8"):
    grow_cache(grown, S)
  # a pure Mamba2 stack has no length axis: nothing to grow
  pure = init_cache(CONFIGS["mamba2"](), B, S)
  assert pure.max_len == 0 and grow_cache(pure, N) is pure


@pytest.mark.parametrize("bad", [-1, 2.5, "8", True])
def test_bad_cache_window_is_refused(bad):
  model = shared_model("mixed")
  with pytest.raises(ValueError, match="cache_window"):
    generate(model, [[1, 2]], 2, cache_window=bad)
  with pytest.raises(ValueError, match="cache_window"):
    list(stream(model, [[1, 2]], 2, cache_window=bad))


# ------------------------------------------------------------------------------------------------
# cache memory == accounting formula
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "name",
  ["llama-3.2-1b", "zebra_1b_4mla12m2", "zebra_8b_8mla24m2", "x_ecomla_1b_r64", "mamba2_in_llama_8b_attn25"],
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cache_bytes_match_accounting(name, dtype):
  config = presets.get_preset(name)
  B, S = 3, 40
  cache = jax.eval_shape(lambda: init_cache(config, B, S, dtype))  # shapes only, nothing allocated
  per_token = cache_bytes_per_token(cache)
  assert per_token == accounting.kv_bytes_per_token(config, dtype)
  # the whole cache: B * S rows plus the Mamba2 states (conv keeps d_conv - 1 columns here)
  itemsize = jnp.dtype(dtype).itemsize
  state = 0
  if isinstance(config, HybridConfig):
    for _ in config.mamba_layers:
      state += config.mamba_nheads * config.headdim * config.d_state * 4
      state += (config.d_conv - 1) * config.mamba_conv_dim * itemsize
  assert state_bytes_per_sequence(cache) == state
  assert cache_nbytes(cache) == B * S * per_token + B * state


def test_cache_bytes_per_layer_ranks_real_arrays():
  config = HybridConfig(
    num_hidden_layers=3, mla_layers=(0, 2), attn_layers=(1,), mla_layer_ranks={2: (None, 8)}, **MLA, **LLAMA
  )
  cache = init_cache(config, 2, 8)
  assert cache.layers[0].rows.shape == (2, 8, 16 + 4) and cache.layers[2].rows.shape == (2, 8, 8 + 4)
  assert (
    cache_bytes_per_token(cache)
    == accounting.kv_bytes_per_token(config, "float32")
    == (20 + 2 * 2 * 8 + 12) * 4
  )


# ------------------------------------------------------------------------------------------------
# sampling filters against numpy
# ------------------------------------------------------------------------------------------------
def np_filter(logits, temperature, top_k, top_p):
  x = logits.astype(np.float64) / temperature
  out = np.full_like(x, -np.inf)
  for b in range(x.shape[0]):
    row = x[b].copy()
    if top_k:
      kth = np.sort(row)[::-1][top_k - 1]
      row[row < kth] = -np.inf
    if top_p is not None:
      p = np.exp(row - row.max())
      p /= p.sum()
      order = np.argsort(-p, kind="stable")
      keep, mass = [], 0.0
      for i in order:
        keep.append(i)
        mass += p[i]
        if mass >= top_p:
          break
      mask = np.full(row.shape, -np.inf)
      mask[keep] = 0.0
      row = row + mask
    out[b] = row
  return out


@pytest.mark.parametrize(
  "t,k,p", [(1.0, 5, None), (0.7, None, 0.8), (1.3, 12, 0.5), (1.0, 1, None), (2.0, None, 0.05)]
)
def test_filter_logits_matches_numpy(t, k, p):
  logits = np.random.default_rng(0).normal(size=(4, 30)).astype(np.float32) * 3
  ours = np.asarray(filter_logits(jnp.asarray(logits), t, k, p))
  ref = np_filter(logits, t, k, p)
  np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
  np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)
  if k and p is None:
    assert (np.isfinite(ours).sum(-1) == k).all()


def test_sampling_distribution_and_greedy():
  logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
  cfg = SamplingConfig(temperature=0.8, top_k=4, top_p=0.9)
  keys = jax.random.split(jax.random.PRNGKey(0), 20000)
  draws = np.asarray(jax.vmap(lambda k: sample(logits, k, cfg))(keys))[:, 0]
  ref = np_filter(np.asarray(logits), 0.8, 4, 0.9)[0]
  ref = np.exp(ref - ref.max())
  ref /= ref.sum()
  freq = np.bincount(draws, minlength=6) / len(draws)
  assert np.abs(freq - ref).max() < 0.015
  assert freq[ref == 0].sum() == 0
  assert int(sample(logits, keys[0], SamplingConfig())[0]) == 0
  with pytest.raises(ValueError):
    SamplingConfig(top_p=0.0)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers_processor(penalty):
  """The penalised logits equal transformers' RepetitionPenaltyLogitsProcessor on the same ids
  (repeated ids, negative and positive logits); padding after a row's length is not counted."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from zebra_jax.infer.sampling import penalize_repeats, seen_tokens

  rng = np.random.default_rng(0)
  ids = rng.integers(0, 30, size=(3, 9))
  logits = (rng.normal(size=(3, 30)) * 3).astype(np.float32)
  proc = transformers.RepetitionPenaltyLogitsProcessor(penalty)
  ref = proc(torch.tensor(ids), torch.tensor(logits)).numpy()
  cfg = SamplingConfig(repetition_penalty=penalty)
  seen = seen_tokens(ids, np.full(3, 9), 30, cfg)
  np.testing.assert_allclose(np.asarray(penalize_repeats(jnp.asarray(logits), seen, penalty)), ref, rtol=1e-6)
  assert not np.allclose(ref, logits)  # the case changes something
  # row 0 counts only its first 4 ids: the tokens after them (padding) keep their logits
  short = np.asarray(seen_tokens(ids, np.array([4, 9, 9]), 30, cfg))
  ref0 = proc(torch.tensor(ids[:1, :4]), torch.tensor(logits[:1])).numpy()
  np.testing.assert_allclose(
    np.asarray(penalize_repeats(jnp.asarray(logits[:1]), short[:1], penalty)), ref0, rtol=1e-6
  )
  assert seen_tokens(ids, np.full(3, 9), 30, SamplingConfig()) is None  # off: no history
  for bad in (0.0, -1.0, float("inf"), float("nan")):
    with pytest.raises(ValueError, match="repetition_penalty"):
      SamplingConfig(repetition_penalty=bad)


# ------------------------------------------------------------------------------------------------
# a converted Llama's greedy generation == transformers greedy generation
# ------------------------------------------------------------------------------------------------
def test_greedy_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from zebra_jax.convert import from_pretrained

  cfg = transformers.LlamaConfig(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    eos_token_id=5,
    bos_token_id=1,
    rope_theta=10000.0,
  )
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(cfg).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      p.copy_(
        (1.0 + 0.2 * torch.randn(p.shape, generator=g))
        if "norm" in name
        else 0.3 * torch.randn(p.shape, generator=g)
      )
  hf.save_pretrained(tmp_path)
  model = from_pretrained(str(tmp_path))
  prompts = prompts_for((6, 11, 3), seed=4)
  # the batch is ragged (padded rows); transformers runs each prompt alone
  for penalty in (1.0, 1.8):
    ours = generate(model, prompts, 12, repetition_penalty=penalty)  # stops at eos (5), as transformers
    oracle = generate(model, prompts, 12, repetition_penalty=penalty, use_cache=False)
    assert ours == oracle
    for b, p in enumerate(prompts):
      with torch.no_grad():
        out = hf.generate(
          torch.tensor([p]),
          max_new_tokens=12,
          do_sample=False,
          repetition_penalty=penalty,
          eos_token_id=5,
          pad_token_id=0,
          attention_mask=torch.ones(1, len(p), dtype=torch.long),
        )
      assert ours[b] == out[0, len(p) :].tolist(), f"penalty {penalty}, prompt {b}"
    if penalty == 1.0:
      plain = ours
  assert ours != plain  # the penalty changed the greedy text, so the comparison above can fail
  with pytest.raises(ValueError, match="speculative"):
    generate(model, prompts, 4, repetition_penalty=1.2, draft=model)


def test_decode_throughput_times_no_compilation_for_restored_models(tmp_path, monkeypatch):
  """A model restored by load_model has device-committed weights, so the decode loop's output carry
  is committed too and the next call compiles again. The timed call must reuse a warm compilation
  (observed here call by call through jax's cache of the jitted loop), else the throughput would
  include compile time (it did once: 137 ms 'per step' on an H100 in a docs/results.md run)."""
  from zebra_jax.convert.orbax_io import load_model, save_model
  from zebra_jax.bench import decode as bench
  from zebra_jax.eval import throughput
  from zebra_jax.infer.decode import decode_loop

  if not hasattr(decode_loop, "_cache_size"):
    pytest.skip("this jax does not expose the jit cache size")
  cfg = presets.zebra(bench.TINY, (0,), q_lora_rank=32, kv_lora_rank=16, yarn_factor=32)
  save_model(bench.random_model(cfg), str(tmp_path / "m"))
  model = load_model(str(tmp_path / "m"), dtype="bfloat16")
  calls = []

  def observed(*args, **kw):
    before = decode_loop._cache_size()
    out = decode_loop(*args, **kw)
    calls.append((int(args[2]), decode_loop._cache_size() - before))
    return out

  monkeypatch.setattr(throughput, "decode_loop", observed)
  r = throughput.decode_throughput(model, 2, 64, steps=4, warmup=4)
  assert r["steps"] == 4 and r["tokens_per_s"] > 0
  assert calls[-1][0] == 8, calls  # the timed call runs to warmup + steps
  assert calls[-1][1] == 0, f"the timed decode call compiled: {calls}"


def test_the_decode_bench_has_the_readme_main_jobs_shapes():
  """`bench.py generate --size smollm2`: the teacher the samples stage decodes with (SmolLM2-135M:
  30 layers, hidden 576, 3 KV heads of 64) and configs/smollm2_135m.py's 9 MLA + 21 Mamba2 student,
  with the KV-cache bytes per token those shapes imply (2 x 30 x 3 x 64 bf16 for the teacher)."""
  from zebra_jax.bench import decode as bench
  from zebra_jax.infer.cache import cache_nbytes, init_cache

  teacher, _, zebra = (make() for make in bench.SIZES["smollm2"])
  assert (teacher.num_hidden_layers, teacher.hidden_size, teacher.num_key_value_heads) == (30, 576, 3)
  assert zebra.mla_layers == (0, 3, 6, 9, 12, 16, 20, 24, 28) and zebra.num_hidden_layers == 30
  assert cache_nbytes(init_cache(teacher, 1, 1, jnp.bfloat16)) == 2 * 30 * 3 * 64 * 2


def test_bad_prompts_are_refused_with_a_message():
  """Issue 18 item 6: a flat list is not three prompts, float ids are not truncated, and positions
  past max_position_embeddings are not silently extrapolated."""
  model = shared_model("mixed")
  with pytest.raises(ValueError, match="flat list of 3 numbers"):
    generate(model, [1, 2, 3], 2)
  with pytest.raises(ValueError, match="prompt 1 holds non-integer token ids"):
    generate(model, [[1, 2], [3.5, 4.0]], 2)
  limit = model.config.max_position_embeddings
  with pytest.raises(ValueError, match=f"exceeds max_position_embeddings={limit}"):
    generate(model, [[1] * 4], limit - 3)
  with pytest.raises(ValueError, match=f"exceeds max_position_embeddings={limit}"):
    list(stream(model, [[1] * 4], limit - 3))
  assert generate(model, [[1.0, 2.0]], 2, stop_tokens=()) == generate(model, [[1, 2]], 2, stop_tokens=())
