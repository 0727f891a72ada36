"""Prefill and decode over the compressed caches, and `stream` (generation.py holds `generate`).

One function, `forward_chunk(model, cache, tokens_BT, n_valid_B, mode=...)`, runs T new tokens per
sequence through the stack starting at each sequence's own cache length, and returns logits and the
new cache. The mixers own their cached forward (`mixer.cached`, models/attention.py, mla.py,
mamba2.py): each writes its layer's rows or state and attends / scans over it; this module holds
only the loops around them (the blocks, prefill chunks, the decode loop, sampling).

Ragged batches (design choice): prompts are RIGHT-padded to a common length and each sequence keeps
its own length. Attention/MLA rows of pad tokens land at positions >= the sequence's length, are never
read (masks use per-query positions) and are overwritten by the next real tokens; Mamba2 masks pad
steps out of its scan (models/mamba2.py). Left padding would instead shift every position and need
the same Mamba2 masking anyway.

Modes: "fresh" (empty cache, e.g. the first prefill chunk: attention only over the chunk itself,
through `ops.attention.causal_attention`, so prefill kernels apply), "extend" (a later prefill chunk:
attention over the whole cache with a per-query mask, MLA decompressing the cache), "decode"
(absorbed MLA through `ops.mla.mla_decode`; T = 1 uses the single-token Mamba2 step; T = K+1 is
speculative verification).

Sharded generation (design choice: placement decides). A model whose parameters are sharded over a
(data, fsdp, tensor) mesh (`shard_for_inference(model, mesh)`, or `generate(..., mesh=mesh)` which
calls it) gets its cache allocated on the same mesh by `cache.CACHE_RULES` (batch over data x fsdp,
heads and conv channels over tensor). Every jitted call (prefill chunk, decode step, the decode loop)
is traced under `parallel.activation_mesh(mesh)`, pins the activations' batch axis like the trainer
(`constrain_batch`) and constrains the cache it returns (and the loop's carried cache) to that same
layout, so the cache never moves between devices: each device reads and writes only its own batch
rows and heads. Kernels that GSPMD cannot partition run per shard through shard_map (the ops layer
does it for prefill attention, the SSD scan and the absorbed MLA decode, `ops.mla.mla_decode`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from zebra_jax.infer.cache import Cache, cache_mesh, cache_shardings, grow_cache, init_cache, shard_cache
from zebra_jax.infer.sampling import SamplingConfig, mark_seen, sample, seen_tokens
from zebra_jax.parallel import sharding as _sharding

MODES = ("fresh", "extend", "decode")


# ------------------------------------------------------------------------------------------------
# the cached forward
# ------------------------------------------------------------------------------------------------
def forward_chunk(
  model, cache: Cache, tokens_BT, n_valid_B=None, *, mode: str = "decode", logits: str = "all"
):
  """Runs tokens_BT (B, T) at positions cache.lengths[b] + t through `model` with the cache.

  n_valid_B (default T): how many of the T tokens are real per sequence (right padding); the new
  lengths are lengths + n_valid. `logits`: "all" -> (B, T, V); "last" -> (B, V) at each sequence's
  last valid token; "none" -> None.
  Returns (logits, new_cache, records): records[l] is what layer l's `mixer.cached` recorded for
  `mixer.replay` (Mamba2: pre-conv xBC (B,T,C), raw dt (B,T,H)), None for attention / MLA layers.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} must be one of {MODES}")
  B, T = tokens_BT.shape
  if len(cache.layers) != len(model.layers):
    raise ValueError(f"cache has {len(cache.layers)} layers, the model {len(model.layers)}")
  lengths = cache.lengths
  n_valid = jnp.full((B,), T, jnp.int32) if n_valid_B is None else n_valid_B.astype(jnp.int32)
  positions = lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
  h = model.embed(tokens_BT)
  layers, records = [], []
  for block, lc in zip(model.layers, cache.layers):
    y, lc, rec = block.mixer.cached(block.input_layernorm(h), positions, lc, n_valid_B=n_valid, mode=mode)
    layers.append(lc)
    records.append(rec)
    h = h + y
    h = h + block.mlp(block.post_attention_layernorm(h))
    h = _sharding.constrain_batch(h)
  new_cache = Cache(tuple(layers), lengths + n_valid)
  if logits == "all":
    out = model.logits(h)
  elif logits == "last":
    idx = jnp.clip(n_valid - 1, 0, T - 1)
    out = model.logits(jnp.take_along_axis(h, idx[:, None, None], axis=1))[:, 0]
  elif logits == "none":
    out = None
  else:
    raise ValueError(f"logits={logits!r} must be 'all', 'last' or 'none'")
  return out, new_cache, tuple(records)


# ------------------------------------------------------------------------------------------------
# sharding
# ------------------------------------------------------------------------------------------------
def shard_for_inference(model, mesh: Mesh, rules=None):
  """Places `model`'s parameters on `mesh` (a `parallel.make_mesh` (data, fsdp, tensor) mesh) by the
  logical-axis rules (default `parallel.DEFAULT_RULES`, the training layout), in place; returns it.
  prefill / decode_step / generate / stream then keep the cache on the same mesh."""
  if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != _sharding.MESH_AXES:
    raise ValueError(f"mesh must be a parallel.make_mesh mesh with axes {_sharding.MESH_AXES}, got {mesh!r}")
  return _sharding.shard_model(model, mesh, _sharding.DEFAULT_RULES if rules is None else rules)


def model_mesh(model) -> Mesh | None:
  """The mesh of `model`'s parameters when they are sharded over several devices, else None."""
  shardings = (getattr(x, "sharding", None) for x in jax.tree.leaves(nnx.state(model)))
  meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding) and s.mesh.devices.size > 1}
  if len(meshes) > 1:
    raise ValueError(
      f"the model's parameters are spread over {len(meshes)} different meshes; "
      "place them on one (shard_for_inference)"
    )
  return meshes.pop() if meshes else None


def _mesh_for(model, cache: Cache) -> tuple[Mesh | None, Cache]:
  """(mesh, cache): the cache's mesh, else the model's (the cache then placed on it)."""
  mesh = cache_mesh(cache)
  if mesh is None:
    mesh = model_mesh(model)
    if mesh is not None:
      cache = shard_cache(cache, mesh)
  return mesh, cache


def constrain_cache(cache: Cache, mesh: Mesh | None) -> Cache:
  """Pins a traced cache to its layout on `mesh` (a no-op without one): jit outputs and the decode
  loop's carry keep the layout instead of whatever sharding propagation would pick."""
  if mesh is None:
    return cache
  return jax.lax.with_sharding_constraint(cache, cache_shardings(cache, mesh))


@functools.partial(
  jax.jit, static_argnames=("graphdef", "mode", "logits", "mesh"), donate_argnames=("cache",)
)
def _chunk_jit(state, cache, tokens_BT, n_valid_B, *, graphdef, mode, logits, mesh=None):
  model = nnx.merge(graphdef, state)
  with _sharding.activation_mesh(mesh):
    out, cache, _ = forward_chunk(model, cache, tokens_BT, n_valid_B, mode=mode, logits=logits)
  return out, constrain_cache(cache, mesh)


def prefill(model, cache: Cache, tokens_BT, lengths_B, *, chunk: int | None = None, all_logits: bool = False):
  """Processes right-padded prompts (B, T) with true lengths, `chunk` tokens per call (None: one pass).

  Returns (logits, cache): logits (B, V) at each sequence's last prompt token, or (B, T, V) for every
  position when `all_logits` (pad positions hold garbage). The first chunk on an empty cache runs the
  plain causal attention ("fresh"); later chunks attend over the cache ("extend"). A sharded model
  or cache (see `shard_for_inference`) runs sharded, the cache staying in its layout.
  """
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  lengths_B = np.asarray(lengths_B, np.int64)
  B, T = tokens_BT.shape
  if lengths_B.shape != (B,) or lengths_B.min() < 1 or lengths_B.max() > T:
    raise ValueError(f"lengths must be ({B},) in [1, {T}], got {lengths_B.tolist()}")
  start = np.asarray(cache.lengths)
  if cache.max_len and start.max() + T > cache.max_len:
    raise ValueError(f"cache max_len={cache.max_len} cannot hold {start.max()} + {T} tokens")
  chunk = T if chunk is None else int(chunk)
  if chunk < 1:
    raise ValueError(f"prefill chunk must be >= 1, got {chunk}")
  if T > chunk and (not cache.max_len or start.max() + round_up(T, chunk) <= cache.max_len):
    # pad to whole chunks (pad tokens are masked anyway): one compiled shape for every chunk
    tokens_BT = jnp.pad(tokens_BT, ((0, 0), (0, round_up(T, chunk) - T)))
    T = tokens_BT.shape[1]
  mesh, cache = _mesh_for(model, cache)
  graphdef, state = nnx.split(model)
  fresh = not start.any()
  outs, last = [], None
  for c0 in range(0, T, chunk):
    tk = tokens_BT[:, c0 : c0 + chunk]
    n_valid = np.clip(lengths_B - c0, 0, tk.shape[1]).astype(np.int32)
    mode = "fresh" if (c0 == 0 and fresh) else "extend"
    out, cache = _chunk_jit(
      state,
      cache,
      tk,
      jnp.asarray(n_valid),
      graphdef=graphdef,
      mode=mode,
      logits="all" if all_logits else "last",
      mesh=mesh,
    )
    if all_logits:
      outs.append(out)
    else:
      last = out if last is None else jnp.where(jnp.asarray(n_valid > 0)[:, None], out, last)
  return (jnp.concatenate(outs, axis=1) if all_logits else last), cache


def decode_step(model, cache: Cache, tokens_B):
  """One token per sequence at position cache.lengths[b]: (logits (B, V), new cache)."""
  mesh, cache = _mesh_for(model, cache)
  graphdef, state = nnx.split(model)
  return _chunk_jit(
    state,
    cache,
    jnp.asarray(tokens_B, jnp.int32)[:, None],
    None,
    graphdef=graphdef,
    mode="decode",
    logits="last",
    mesh=mesh,
  )


# ------------------------------------------------------------------------------------------------
# the jitted decode loop
# ------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeCarry:
  i: jax.Array  # next step index
  cache: Cache
  logits: jax.Array  # (B, V) logits for step i
  done: jax.Array  # (B,) bool
  out: jax.Array  # (B, max_new) generated tokens (pad after a stop token)
  seen: jax.Array | None = None  # (B, V) bool: tokens in each sequence so far (repetition penalty only)


def stop_array(stop_tokens) -> jax.Array:
  """Stop tokens as a traced int32 array padded with -1 to a multiple of 8 (fewer recompiles)."""
  n = round_up(max(len(stop_tokens), 1), 8)
  return jnp.asarray(list(stop_tokens) + [-1] * (n - len(stop_tokens)), jnp.int32)


@functools.partial(
  jax.jit, static_argnames=("graphdef", "sampling", "pad_id", "mesh"), donate_argnames=("carry",)
)
def decode_loop(state, carry: DecodeCarry, i_end, key, stops, *, graphdef, sampling, pad_id, mesh=None):
  """Steps i .. i_end-1 (fewer if every sequence stopped): sample, record, feed the token back.
  With a mesh the carried cache is pinned to its layout in every iteration (never gathered)."""
  model = nnx.merge(graphdef, state)

  def cond(c):
    return (c.i < i_end) & ~jnp.all(c.done)

  def body(c):
    tok = sample(c.logits, jax.random.fold_in(key, c.i), sampling, c.seen)
    tok = jnp.where(c.done, pad_id, tok)
    out = jax.lax.dynamic_update_slice_in_dim(c.out, tok[:, None], c.i, axis=1)
    done = c.done | jnp.isin(tok, stops)
    with _sharding.activation_mesh(mesh):
      logits, cache, _ = forward_chunk(model, c.cache, tok[:, None], mode="decode", logits="last")
    return DecodeCarry(c.i + 1, constrain_cache(cache, mesh), logits, done, out, mark_seen(c.seen, tok))

  carry = dataclasses.replace(carry, cache=constrain_cache(carry.cache, mesh))
  return jax.lax.while_loop(cond, body, carry)


# ------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------
def resolve_stop_tokens(config, stop_tokens) -> tuple[int, ...]:
  """None -> the config's eos_token_id(s); an int or iterable -> those; () -> never stop early."""
  if stop_tokens is None:
    eos = config.eos_token_id
    stop_tokens = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
  elif isinstance(stop_tokens, (int, np.integer)):
    stop_tokens = (int(stop_tokens),)
  return tuple(sorted({int(t) for t in stop_tokens}))


def pad_prompts(
  prompts: Sequence[Sequence[int]],
  vocab_size: int,
  pad_id: int = 0,
  multiple: int = 1,
  *,
  new_tokens: int = 0,
  max_positions: int | None = None,
):
  """Right-pads token-id lists into (B, T) int32 (T rounded up to `multiple`) and their lengths.

  With `max_positions` (the model's max_position_embeddings), the longest prompt plus `new_tokens`
  must fit: positions past it are outside what the model (and its RoPE) was built for, so they are
  refused rather than silently extrapolated."""
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise ValueError("prompts must be a non-empty list of token-id lists")
  if all(np.ndim(p) == 0 for p in prompts):
    raise ValueError(
      f"prompts must be a list of token-id lists, got a flat list of "
      f"{len(prompts)} numbers; for one prompt pass [[...]]"
    )
  rows = []
  for i, p in enumerate(prompts):
    a = np.asarray(p)
    if a.size and not (
      np.issubdtype(a.dtype, np.integer) or (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)))
    ):
      raise ValueError(
        f"prompt {i} holds non-integer token ids (dtype {a.dtype}); token ids are whole numbers"
      )
    rows.append(a.astype(np.int64).reshape(-1))
  for i, r in enumerate(rows):
    if r.size == 0:
      raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    if r.min() < 0 or r.max() >= vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size})")
  lengths = np.asarray([r.size for r in rows], np.int32)
  if max_positions and int(lengths.max()) + int(new_tokens) > max_positions:
    raise ValueError(
      f"the longest prompt ({lengths.max()} tokens) + max_new_tokens ({new_tokens}) "
      f"exceeds max_position_embeddings={max_positions}; shorten the prompt or ask "
      "for fewer tokens"
    )
  T = -(-int(lengths.max()) // multiple) * multiple
  tokens = np.full((len(rows), T), pad_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, : r.size] = r
  return tokens, lengths


def truncate_at_stop(tokens, stop_tokens) -> list[int]:
  out = []
  for t in np.asarray(tokens).tolist():
    out.append(int(t))
    if t in stop_tokens:
      break
  return out


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def check_cache_window(cache_window) -> int:
  """`cache_window` of generate / stream as an int (0 = no windowing)."""
  if cache_window is None:
    return 0
  if isinstance(cache_window, bool) or not isinstance(cache_window, (int, np.integer)) or cache_window < 0:
    raise ValueError(f"cache_window must be None or an int >= 0, got {cache_window!r}")
  return int(cache_window)


def check_generate_args(model, max_new_tokens, pad_id):
  if not hasattr(model, "config") or not hasattr(model, "layers"):
    raise ValueError("model must be a zebra_jax CausalLM")
  if int(max_new_tokens) < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not 0 <= pad_id < model.config.vocab_size:
    raise ValueError(f"pad_id={pad_id} is outside the vocabulary")


def inference_mesh(model, mesh) -> Mesh | None:
  """`mesh=` of generate / stream: places every parameter there (a no-op for those already there);
  None -> the model's own mesh when its parameters are sharded (else single device)."""
  if mesh is None:
    return model_mesh(model)
  shard_for_inference(model, mesh)
  return mesh


def stream(
  model,
  prompts,
  max_new_tokens: int,
  *,
  temperature: float = 0.0,
  top_k=None,
  top_p=None,
  repetition_penalty: float = 1.0,
  seed: int = 0,
  stop_tokens=None,
  max_len: int | None = None,
  prefill_chunk: int | None = 512,
  every: int = 16,
  pad_id: int = 0,
  cache_dtype=None,
  mesh: Mesh | None = None,
  pad_multiple: int = 8,
  cache_window: int | None = None,
) -> Iterator[list[list[int]]]:
  """Yields, every `every` steps, the new tokens of each sequence (lists; empty once it stopped).

  Same arguments and the same token stream as `generate(..., use_cache=True)` (without a draft).
  `cache_window`: the decode loop's cache is only as long as the positions written so far need,
  grown (zero rows appended, `cache.grow_cache`) in multiples of this many rows up to `max_len`,
  because each decode step's attention reads the whole allocated cache; the loop runs one segment
  per cache length, so at most ceil(max_len / cache_window) compiled shapes. None or 0: the whole
  `max_len` from the start.
  """
  if int(pad_multiple) < 1:
    raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
  window = check_cache_window(cache_window)
  check_generate_args(model, max_new_tokens, pad_id)
  mesh = inference_mesh(model, mesh)
  config = model.config
  sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
  stops = resolve_stop_tokens(config, stop_tokens)
  tokens, lengths = pad_prompts(
    prompts,
    config.vocab_size,
    pad_id,
    multiple=int(pad_multiple),
    new_tokens=max_new_tokens,
    max_positions=config.max_position_embeddings,
  )
  B, T = tokens.shape
  need = int(lengths.max()) + int(max_new_tokens)
  if max_len is None:  # room for whole prefill chunks too (one compiled chunk shape)
    max_len = round_up(max(need, round_up(T, prefill_chunk or T)), 64)
  elif max_len < need:
    raise ValueError(f"max_len={max_len} < longest prompt {lengths.max()} + max_new_tokens {max_new_tokens}")
  if T > max_len:  # the 8-multiple padding must fit too
    tokens = tokens[:, :max_len]
    T = max_len

  def fit(n: int) -> int:  # the cache length that holds n positions: whole windows, at most max_len
    return min(round_up(n, window), max_len) if window else max_len

  # the prefill pads the prompt to whole chunks when the cache has room for them with max_len rows;
  # allocate that room too, so the prefill runs the same chunks as on a full-length cache
  prefill_len = T
  if prefill_chunk and T > prefill_chunk and round_up(T, prefill_chunk) <= max_len:
    prefill_len = round_up(T, prefill_chunk)
  cache = init_cache(config, B, fit(prefill_len), cache_dtype, mesh=mesh)
  logits, cache = prefill(model, cache, tokens, lengths, chunk=prefill_chunk)
  graphdef, state = nnx.split(model)
  key = jax.random.PRNGKey(seed)
  carry = DecodeCarry(
    jnp.int32(0),
    cache,
    logits,
    jnp.zeros((B,), bool),
    jnp.full((B, max_new_tokens), pad_id, jnp.int32),
    seen_tokens(tokens, lengths, logits.shape[-1], sampling),
  )
  longest = int(lengths.max())
  finished = [False] * B
  i0 = 0
  while i0 < max_new_tokens:
    i1 = min(i0 + max(1, int(every)), max_new_tokens)
    j = i0
    while True:
      # step j writes its fed-back token at position lengths[b] + j; a cache without a length axis
      # (pure Mamba2) never grows
      cache_len = carry.cache.max_len or max_len
      if longest + j >= cache_len:
        carry = dataclasses.replace(carry, cache=grow_cache(carry.cache, fit(longest + j + 1), mesh))
        cache_len = carry.cache.max_len
      end = min(i1, cache_len - longest)  # segments end where the cache is full: one shape each
      carry = decode_loop(
        state,
        carry,
        jnp.int32(end),
        key,
        stop_array(stops),
        graphdef=graphdef,
        sampling=sampling,
        pad_id=pad_id,
        mesh=mesh,
      )
      if end == i1 or bool(jnp.all(carry.done)):  # no growing for rows that all stopped
        break
      j = end
    out = np.asarray(carry.out[:, i0:i1])
    chunk = []
    for b in range(B):
      toks = [] if finished[b] else truncate_at_stop(out[b], stops)
      if any(t in stops for t in toks):
        finished[b] = True
      chunk.append(toks)
    yield chunk
    if all(finished):
      return
    i0 = i1


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _full_forward_at(state, buf_BS, idx_B, *, graphdef):
  logits = nnx.merge(graphdef, state)(buf_BS)
  return jnp.take_along_axis(logits, idx_B[:, None, None], axis=1)[:, 0]


_sample_jit = jax.jit(sample, static_argnames=("sampling",))


def generate_no_cache(model, prompts, max_new_tokens, sampling, seed, stops, pad_id):
  """The oracle: every step reruns the model over the whole (right-padded) sequence."""
  config = model.config
  tokens, lengths = pad_prompts(
    prompts,
    config.vocab_size,
    pad_id,
    new_tokens=max_new_tokens,
    max_positions=config.max_position_embeddings,
  )
  B = tokens.shape[0]
  S = int(lengths.max()) + int(max_new_tokens)
  buf = np.full((B, S), pad_id, np.int32)
  buf[:, : tokens.shape[1]] = tokens
  buf, lengths = jnp.asarray(buf), jnp.asarray(lengths)
  graphdef, state = nnx.split(model)
  key = jax.random.PRNGKey(seed)
  stops_arr = stop_array(stops)
  done = jnp.zeros((B,), bool)
  outs = []
  for i in range(max_new_tokens):
    logits = _full_forward_at(state, buf, lengths - 1, graphdef=graphdef)
    seen = seen_tokens(buf, lengths, logits.shape[-1], sampling)
    tok = jnp.where(done, pad_id, _sample_jit(logits, jax.random.fold_in(key, i), sampling, seen))
    outs.append(tok)
    done = done | jnp.isin(tok, stops_arr)
    buf = buf.at[jnp.arange(B), lengths].set(tok)
    lengths = lengths + 1
    if bool(jnp.all(done)):
      break
  out = np.stack([np.asarray(t) for t in outs], axis=1)
  return [truncate_at_stop(out[b], stops) for b in range(B)]
