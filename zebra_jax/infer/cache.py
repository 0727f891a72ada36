"""Decode caches: preallocated pytrees, one entry per layer, plus per-sequence lengths.

Each mixer owns its layer's container and the forward over it (`Attention.cached`, `MLA.cached`,
`Mamba2.cached`, in models/); this module assembles them into a `Cache` and places it on a mesh.
Per layer kind (B batch, S max_len):
  attention  KVCache(rows)           (B, n_kv, S, 2 d_h), compute dtype              [v | rope(k)] per kv head
  mla        LatentCache(rows)       (B, S, r_kv + d_r), compute dtype               [N_kv(c_kv) | rope(k_pe)]
  mamba2     MambaState(ssm, conv)   ssm (B, nheads, headdim, d_state) float32,
                                     conv (B, d_conv - 1, conv_dim) compute dtype     the last pre-conv inputs
`Cache.lengths[b]` counts the tokens of sequence b already in the cache; rows at positions >= length
are stale (never read: attention masks them, Mamba2 keeps no rows) and get overwritten, which is how a
sequence is rolled back (speculative decoding) or how right-padded prompts are handled.

Every array has logical axis names (`cache_logical_axes`), mapped to a mesh by `CACHE_RULES`
(`cache_shardings`): the parameters' table with two changes, see below. Batch over data x fsdp (else
whichever divides it), kv heads, Mamba2 heads and conv channels over tensor. `init_cache(...,
mesh=mesh)` allocates the cache directly in that layout (no device ever holds the whole cache).

`grow_cache(cache, new_len)` appends zero rows on the length axis (the decode loop of `stream` grows
its cache window by window, as the decode attention reads every allocated row).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from zebra_jax.config import LlamaConfig
from zebra_jax.models.attention import KVCache
from zebra_jax.models.layers import dtype_of
from zebra_jax.models.mamba2 import MambaState
from zebra_jax.models.mla import LatentCache
from zebra_jax.parallel.sharding import DEFAULT_RULES, logical_to_pspec

# The cache layout: the parameters' rules except
# * "kv_lora" (the latent channels) is never split: the absorbed decode reads every latent channel
#   for every head, and the decode kernels (run per shard through shard_map under a mesh) need whole
#   rows; a split would make every step all-gather the latent cache. The latent cache is therefore
#   split by batch only (replicated across tensor shards, as every head group reads all of it).
# * "mamba_heads" goes over tensor: the SSM state (B, heads, headdim, d_state) is the largest Mamba2
#   state, and splitting it by head keeps each head's recurrence local.
CACHE_RULES = {**DEFAULT_RULES, "kv_lora": (), "mamba_heads": ("tensor",)}

# The layer caches, by mixer type: each builds its zeros from the config (`zeros`).
LAYER_CACHES = {"attention": KVCache, "mla": LatentCache, "mamba2": MambaState}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cache:
  layers: tuple  # one KVCache / LatentCache / MambaState per decoder layer
  lengths: jax.Array  # (B,) int32

  @property
  def batch_size(self) -> int:
    return int(self.lengths.shape[0])

  @property
  def max_len(self) -> int:
    for arr, axes in _leaves_with_axes(self):
      if "length" in axes:
        return int(arr.shape[axes.index("length")])
    return 0  # a pure Mamba2 stack has no length axis


def init_cache(
  config: LlamaConfig, batch_size: int, max_len: int, dtype=None, *, mesh=None, rules=None
) -> Cache:
  """Zero cache for `batch_size` sequences of up to `max_len` tokens (lengths 0).

  `dtype` (default: the config's compute dtype) is the element type of the K/V / latent rows and of the
  conv state; the SSM state is always float32 as the scan accumulates in float32. With a `mesh` the
  zeros are created already sharded by `cache_shardings(cache, mesh, rules)`.
  """
  if mesh is not None:
    make = lambda: init_cache(config, batch_size, max_len, dtype)
    shardings = cache_shardings(jax.eval_shape(make), mesh, rules)
    return jax.jit(make, out_shardings=shardings)()
  if batch_size < 1 or max_len < 1:
    raise ValueError(f"need batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
  dt = dtype_of(config.dtype) if dtype is None else jnp.dtype(dtype)
  layers = []
  for i, kind in enumerate(config.layer_types()):
    if kind not in LAYER_CACHES:
      raise ValueError(f"unknown mixer type {kind!r} for layer {i}")
    layers.append(LAYER_CACHES[kind].zeros(config, i, batch_size, max_len, dt))
  return Cache(tuple(layers), jnp.zeros((batch_size,), jnp.int32))


def _leaves_with_axes(cache: Cache):
  for lc in cache.layers:
    for name, axes in type(lc).AXES.items():
      yield getattr(lc, name), axes


def cache_bytes_per_token(cache: Cache) -> int:
  """Bytes the cache holds per token per sequence, measured on its arrays: every array with a length
  axis contributes nbytes / (batch * max_len). Equals `accounting.kv_bytes_per_token(config, dtype)`."""
  total = 0
  for arr, axes in _leaves_with_axes(cache):
    if "length" in axes:
      B, S = arr.shape[0], arr.shape[axes.index("length")]
      per, rem = divmod(arr.size * arr.dtype.itemsize, B * S)
      assert rem == 0
      total += per
  return total


def state_bytes_per_sequence(cache: Cache) -> int:
  """Bytes per sequence of the arrays without a length axis (Mamba2 SSM and conv states)."""
  return sum(
    arr.size * arr.dtype.itemsize // arr.shape[0]
    for arr, axes in _leaves_with_axes(cache)
    if "length" not in axes
  )


def cache_nbytes(cache: Cache) -> int:
  """Total bytes of the cache arrays (lengths excluded)."""
  return sum(arr.size * arr.dtype.itemsize for arr, _ in _leaves_with_axes(cache))


def cache_logical_axes(cache: Cache) -> Cache:
  """A Cache-shaped pytree whose leaves are the logical axis tuples of the arrays."""
  layers = tuple(type(lc)(**type(lc).AXES) for lc in cache.layers)
  return Cache(layers, ("batch",))


def cache_shardings(cache: Cache, mesh, rules=None) -> Cache:
  """NamedShardings for every cache array (or ShapeDtypeStruct) from its logical axes and `rules`
  (default `CACHE_RULES`); a mesh axis that does not divide a dimension leaves it replicated."""
  rules = CACHE_RULES if rules is None else rules
  axes = cache_logical_axes(cache)
  is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
  return jax.tree.map(
    lambda a, arr: NamedSharding(mesh, logical_to_pspec(a, arr.shape, mesh, rules)),
    axes,
    cache,
    is_leaf=is_axes,
  )


def shard_cache(cache: Cache, mesh, rules=None) -> Cache:
  """Places an existing cache on `mesh` by `cache_shardings`."""
  return jax.device_put(cache, cache_shardings(cache, mesh, rules))


def cache_mesh(cache: Cache):
  """The mesh the cache is sharded over (its `lengths` array's NamedSharding), or None when it lives
  on one device."""
  s = getattr(cache.lengths, "sharding", None)
  if isinstance(s, NamedSharding) and s.mesh.devices.size > 1:
    return s.mesh
  return None


def grow_cache(cache: Cache, new_len: int, mesh=None) -> Cache:
  """`cache` with every array that has a "length" axis zero-padded to `new_len` rows (old rows kept).

  Mamba2 states and `lengths` are passed through as they are (no copy). A sharded cache (on its own
  mesh, or `mesh`) comes back in its `cache_shardings` layout, the one the decode loop pins its carry
  to. The old length-axis arrays are not donated: a buffer cannot alias a larger one (XLA would warn
  and keep it), so they are freed when the caller drops the old cache."""
  old = cache.max_len
  if not old or int(new_len) == old:  # nothing has a length axis / already that long
    return cache
  if int(new_len) < old:
    raise ValueError(f"grow_cache: new_len={new_len} < the cache's max_len={old}")
  mesh = cache_mesh(cache) if mesh is None else mesh
  shardings = None if mesh is None else cache_shardings(cache, mesh)
  where, arrs, axes, specs = [], [], [], []
  for i, lc in enumerate(cache.layers):
    for name, names in type(lc).AXES.items():
      if "length" in names:
        where.append((i, name))
        arrs.append(getattr(lc, name))
        axes.append(names.index("length"))
        specs.append(None if shardings is None else getattr(shardings.layers[i], name))
  grown = _pad_length(tuple(arrs), axes=tuple(axes), new_len=int(new_len), shardings=tuple(specs))
  layers = list(cache.layers)
  for (i, name), arr in zip(where, grown):
    layers[i] = dataclasses.replace(layers[i], **{name: arr})
  return Cache(tuple(layers), cache.lengths)


@functools.partial(jax.jit, static_argnames=("axes", "new_len", "shardings"))
def _pad_length(arrs, *, axes, new_len, shardings):
  out = []
  for arr, ax, sh in zip(arrs, axes, shardings):
    pad = [(0, 0)] * arr.ndim
    pad[ax] = (0, new_len - arr.shape[ax])
    arr = jnp.pad(arr, pad)
    out.append(arr if sh is None else jax.lax.with_sharding_constraint(arr, sh))
  return tuple(out)
