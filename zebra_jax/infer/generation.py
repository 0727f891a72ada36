"""`generate`: the one entry point of generation, above the cached decode loop (decode.py) and
speculative decoding (speculative.py), so that neither imports the other."""

from __future__ import annotations

from jax.sharding import Mesh

from zebra_jax.infer.decode import (
  check_cache_window,
  check_generate_args,
  generate_no_cache,
  inference_mesh,
  resolve_stop_tokens,
  stream,
)
from zebra_jax.infer.sampling import SamplingConfig
from zebra_jax.infer.speculative import speculative_generate


def generate(
  model,
  prompts,
  max_new_tokens: int,
  *,
  temperature: float = 0.0,
  top_k=None,
  top_p=None,
  repetition_penalty: float = 1.0,
  seed: int = 0,
  use_cache: bool = True,
  draft=None,
  num_draft_tokens: int = 4,
  stop_tokens=None,
  max_len: int | None = None,
  prefill_chunk: int | None = 512,
  pad_id: int = 0,
  return_stats: bool = False,
  cache_dtype=None,
  mesh: Mesh | None = None,
  pad_multiple: int = 8,
  cache_window: int | None = None,
):
  """Generates up to `max_new_tokens` tokens after each prompt (a list of token-id lists).

  Returns a list of generated token-id lists (a stop token, when produced, is the last element), or
  (tokens, stats) when `return_stats`. temperature 0 is greedy; top_k / top_p filter sampling;
  `repetition_penalty` > 1 discourages every token already in the sequence, prompt included (as
  transformers' `repetition_penalty`; 1.0 = off; not with a draft); `seed` fixes the random stream.
  `stop_tokens` None means the config's eos_token_id, () never stops early.
  use_cache=False recomputes the full sequence every step (oracle; same sampling stream).
  `draft` (a smaller CausalLM with the same vocabulary) turns on speculative decoding with
  `num_draft_tokens` proposals per round; stats then hold the acceptance statistics.
  `max_len` is the cache length (default: longest prompt + max_new_tokens, rounded up);
  `prefill_chunk` the prompt tokens per prefill call (None: the whole prompt at once).
  `pad_multiple`: prompts are right-padded to a multiple of it; with a fixed `max_len`, a larger
  multiple means fewer distinct shapes, so fewer compilations over many batches (teacher samples).
  `mesh` (a `parallel.make_mesh` mesh): shards the model's parameters over it (in place, by
  `shard_for_inference`) and the cache with them; None keeps the model where it is (sharded
  parameters -> sharded generation on their mesh).
  `cache_window` (cached decoding without a draft): the cache starts at the prefill's length and
  grows by whole windows of this many rows up to `max_len` as tokens are written, since every decode
  step's attention reads the whole allocated cache (see `stream`); None or 0 allocates `max_len`
  from the start. Speculative decoding keeps the full `max_len` cache.
  """
  check_generate_args(model, max_new_tokens, pad_id)
  check_cache_window(cache_window)
  mesh = inference_mesh(model, mesh)
  sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
  stops = resolve_stop_tokens(model.config, stop_tokens)
  if draft is not None:
    if sampling.penalizes:
      raise ValueError("speculative decoding (draft=...) has no repetition_penalty: leave it at 1.0")
    if not use_cache:
      raise ValueError("speculative decoding (draft=...) needs use_cache=True")
    out, stats = speculative_generate(
      model,
      draft,
      prompts,
      max_new_tokens,
      sampling=sampling,
      seed=seed,
      num_draft_tokens=num_draft_tokens,
      stops=stops,
      max_len=max_len,
      prefill_chunk=prefill_chunk,
      pad_id=pad_id,
      cache_dtype=cache_dtype,
      mesh=mesh,
    )
    return (out, stats) if return_stats else out
  if use_cache:
    pieces = list(
      stream(
        model,
        prompts,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop_tokens=stops,
        max_len=max_len,
        prefill_chunk=prefill_chunk,
        every=max_new_tokens,
        pad_id=pad_id,
        cache_dtype=cache_dtype,
        mesh=mesh,
        pad_multiple=pad_multiple,
        cache_window=cache_window,
      )
    )
    out = [sum((p[b] for p in pieces), []) for b in range(len(prompts))]
  else:
    out = generate_no_cache(model, prompts, max_new_tokens, sampling, seed, stops, pad_id)
  if return_stats:
    return out, {"new_tokens": sum(len(o) for o in out)}
  return out
