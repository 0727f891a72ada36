"""Decode throughput of one model: `decode_throughput(model, batch, context, steps)` times greedy
decode steps of the jitted loop of `generate` over a random cache filled up to `context` (prefill
skipped, as the reference's `benchmark_generation_speed.py --random_context`), after warm-up steps
that compile. Used by the report's decode rows (eval/report.py) and by the decode benchmark
(zebra_jax/bench/decode.py, `scripts/bench.py generate`).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax import accounting
from zebra_jax.infer.cache import (
  Cache,
  cache_bytes_per_token,
  cache_nbytes,
  cache_shardings,
  init_cache,
  state_bytes_per_sequence,
)
from zebra_jax.infer.decode import DecodeCarry, decode_loop, stop_array
from zebra_jax.infer.sampling import SamplingConfig


def random_cache(config, batch: int, max_len: int, context: int, seed: int = 1, mesh=None) -> Cache:
  """Cache of pseudo-random rows / states (the reference fills randn) with every length = context; with a
  mesh, made in its sharded layout (`cache_shardings`)."""
  shapes = jax.eval_shape(lambda: init_cache(config, batch, max_len))
  leaves, treedef = jax.tree.flatten(shapes)
  out_shardings = None if mesh is None else cache_shardings(shapes, mesh)

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def make(salt):
    out = [
      _pattern_fill(l.shape, l.dtype, salt + i)
      if jnp.issubdtype(l.dtype, jnp.floating)
      else jnp.full(l.shape, context, l.dtype)
      for i, l in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)

  return make(jnp.float32(seed))


def _pattern_fill(shape, dtype, salt):
  """Values in [-0.5, 0.5] varying with every index: an elementwise function of the position, so it
  compiles in milliseconds at any size (threefry over a 36 GB cache took minutes to compile on an
  H100) and never materialises more than the array itself."""
  flat = jnp.zeros(shape, jnp.float32)
  stride = 1
  for d in reversed(range(len(shape))):
    flat = flat + jax.lax.broadcasted_iota(jnp.float32, shape, d) * float(stride % 7919 + 1)
    stride *= shape[d]
  return (0.5 * jnp.sin(flat * 0.7548776 + salt * 1.618034)).astype(dtype)


def _device0_bytes(cache: Cache) -> int:
  """Bytes of the cache arrays held by the first device (the whole cache on one device)."""
  dev = jax.devices()[0]
  total = 0
  for arr in jax.tree.leaves(cache.layers):
    for shard in arr.addressable_shards:
      if shard.device == dev:
        total += shard.data.size * shard.data.dtype.itemsize
  return total


def _compiled_count():
  """How many compilations the jitted decode loop holds (None where jax does not say)."""
  size = getattr(decode_loop, "_cache_size", None)
  return size() if callable(size) else None


def decode_throughput(model, batch: int, context: int, steps: int, warmup: int = 4, mesh=None) -> dict:
  """Times `steps` greedy decode steps at `context` (after `warmup` steps that compile); with a
  mesh (the model sharded on it) the cache and the loop are sharded too."""
  config = model.config
  max_len = context + warmup + steps
  cache = random_cache(config, batch, max_len, context, mesh=mesh)
  per_token = cache_bytes_per_token(cache)
  nbytes = cache_nbytes(cache)
  device0 = _device0_bytes(cache)
  graphdef, state = nnx.split(model)
  logits = jax.random.normal(jax.random.PRNGKey(2), (batch, config.vocab_size), jnp.float32).astype(
    config.dtype
  )
  carry = DecodeCarry(
    jnp.int32(0), cache, logits, jnp.zeros((batch,), bool), jnp.zeros((batch, warmup + steps), jnp.int32)
  )
  kw = dict(graphdef=graphdef, sampling=SamplingConfig(), pad_id=0, mesh=mesh)
  stops, key = stop_array(()), jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  # Two warm-up calls: the first compiles for the carry as built here; its output carry can carry a
  # different (committed) sharding when the weights are committed to a device (models restored by
  # load_model are), which is a second compilation. The timed call then reuses the second one.
  half = max(1, warmup // 2)
  carry = decode_loop(state, carry, jnp.int32(half), key, stops, **kw)
  carry = decode_loop(state, carry, jnp.int32(warmup), key, stops, **kw)
  jax.block_until_ready(carry.out)
  compile_s = time.perf_counter() - t0
  compiled_before = _compiled_count()
  t0 = time.perf_counter()
  carry = decode_loop(state, carry, jnp.int32(warmup + steps), key, stops, **kw)
  jax.block_until_ready(carry.out)
  dt = time.perf_counter() - t0
  assert int(carry.i) == warmup + steps
  if _compiled_count() != compiled_before:
    raise RuntimeError(
      "decode_throughput: the timed decode loop recompiled, so its time would "
      "include compilation; the warm-up must match the timed call's inputs"
    )
  stats = jax.devices()[0].memory_stats() or {}
  return {
    "batch": batch,
    "context": context,
    "steps": steps,
    "seconds": dt,
    "tokens_per_s": batch * steps / dt,
    "ms_per_step": 1e3 * dt / steps,
    "cache_bytes": nbytes,
    "cache_bytes_per_token": per_token,
    "device0_cache_bytes": device0,
    "formula_bytes_per_token": accounting.kv_bytes_per_token(config, config.dtype),
    "state_bytes_per_seq": state_bytes_per_sequence(cache),
    "peak_bytes": stats.get("peak_bytes_in_use"),
    "warmup_compile_s": compile_s,
  }
