"""llama.cpp GGUF Llama checkpoints -> `CausalLM`.

Every tensor is dequantised to float32 with `gguf.quants.dequantize` (the same routine transformers'
GGUF loader uses), renamed to its HF name (`names.GGUF_TO_HF`) with the Q/K row permutation of
llama.cpp's converter undone, then goes through the shared HF map and checks of `hf.build_model`.

The config comes from the `llama.*` metadata, written as an HF config dict and validated by
`llama_config_from_hf`; metadata keys that would change the model and that we do not implement are
refused by name. Llama-3 style rope scaling, which llama.cpp stores as a `rope_freqs.weight` tensor
of per-frequency divisors instead of metadata, is recognised by matching it against the llama3
formula for the usual parameter values.
"""

from __future__ import annotations

import os

import numpy as np

from zebra_jax.config import ConfigError, LlamaConfig, llama_config_from_hf
from zebra_jax.convert import names
from zebra_jax.convert.errors import CheckpointError
from zebra_jax.convert.hf import LazyTensor, build_model
from zebra_jax.models import rope

# `{arch}.` metadata keys this converter understands (the rest of `{arch}.*` is refused by name).
_USED_KEYS = {
  "block_count",
  "embedding_length",
  "feed_forward_length",
  "attention.head_count",
  "attention.head_count_kv",
  "attention.key_length",
  "attention.value_length",
  "attention.layer_norm_rms_epsilon",
  "rope.dimension_count",
  "rope.freq_base",
  "context_length",
  "vocab_size",
  "rope.scaling.type",
  "rope.scaling.factor",
  "rope.scaling.original_context_length",
  "rope.scaling.yarn_beta_fast",
  "rope.scaling.yarn_beta_slow",
  "rope.scaling.finetuned",  # bookkeeping: whether the model was fine-tuned at the scaled length
}
# Keys that are harmless at their neutral value.
_NEUTRAL = {"expert_count": 0, "expert_used_count": 0}
_IGNORED_PREFIXES = ("general.", "tokenizer.", "GGUF.", "quantize.", "split.")


def gguf_reader(path: str):
  """A `gguf.GGUFReader` over `path` (metadata parsed, tensors read on use); CheckpointError when
  the `gguf` package is missing or the file is not a readable GGUF."""
  try:
    from gguf import GGUFReader
  except ImportError:
    raise CheckpointError("reading GGUF files needs the `gguf` package (pip install gguf)") from None
  try:
    return GGUFReader(path)
  except Exception as e:  # the reader raises ValueError/struct/numpy errors on bad files
    raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _value(field):
  return field.contents()


def gguf_tensors(reader) -> dict[str, LazyTensor]:
  from gguf.quants import dequantize

  def loader(t, shape):
    def load():
      return np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shape)

    return load

  out = {}
  for t in reader.tensors:
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims fastest-first
    out[t.name] = LazyTensor(shape, loader(t, shape), t.name)
  return out


def _fit_llama3(divisors: np.ndarray, head_dim: int, theta: float) -> dict | None:
  """The llama3 rope_scaling whose frequencies equal inv_freq / divisors, from common values."""
  if np.allclose(divisors, 1.0):
    return None
  inv_freq = rope.rope_frequencies(head_dim, theta)[0]
  target = inv_freq / divisors.astype(np.float64)
  factor = float(np.round(divisors.max(), 4))
  for orig in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
    for low in (1.0, 2.0, 0.5):
      for high in (4.0, 8.0, 2.0, 16.0):
        if high <= low:
          continue
        scaling = {
          "rope_type": "llama3",
          "factor": factor,
          "low_freq_factor": low,
          "high_freq_factor": high,
          "original_max_position_embeddings": orig,
        }
        got = rope.rope_frequencies(head_dim, theta, scaling)[0]
        if np.allclose(got, target, rtol=1e-5, atol=0):
          return scaling
  return {}


def gguf_config(reader, path: str, **overrides) -> tuple[LlamaConfig, set[str]]:
  """LlamaConfig from GGUF metadata (+ the tensor names consumed by it)."""
  fields = reader.fields
  arch_field = fields.get("general.architecture")
  if arch_field is None:
    raise CheckpointError(f"{path}: GGUF metadata has no general.architecture")
  arch = _value(arch_field)
  if arch != "llama":
    raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
  split_count = fields.get("split.count")
  if split_count is not None and int(_value(split_count)) > 1:
    raise CheckpointError(
      f"{path}: split GGUF files are not supported; merge them first (llama-gguf-split --merge)"
    )

  meta, problems = {}, []
  prefix = f"{arch}."
  for key, field in fields.items():
    if key.startswith(_IGNORED_PREFIXES):
      continue
    if not key.startswith(prefix):
      problems.append(f"metadata key {key!r} is not understood")
      continue
    short = key[len(prefix) :]
    if short in _USED_KEYS:
      meta[short] = _value(field)
    elif short in _NEUTRAL and _value(field) == _NEUTRAL[short]:
      continue
    else:
      problems.append(f"metadata {key}={_value(field)!r} is not implemented")

  def need(k):
    if k not in meta:
      problems.append(f"metadata {prefix}{k} is missing")
      return None
    return meta[k]

  n_layers, d, ffn, heads = (
    need("block_count"),
    need("embedding_length"),
    need("feed_forward_length"),
    need("attention.head_count"),
  )
  if problems:
    raise CheckpointError(
      f"{path}: GGUF metadata cannot be converted faithfully:\n  - " + "\n  - ".join(problems)
    )
  kv_heads = meta.get("attention.head_count_kv", heads)
  if isinstance(kv_heads, list):
    if len(set(kv_heads)) != 1:
      problems.append(f"per-layer head_count_kv {kv_heads} is not supported")
    kv_heads = kv_heads[0]
  head_dim = int(meta.get("attention.key_length", d // heads))
  if int(meta.get("attention.value_length", head_dim)) != head_dim:
    problems.append(f"attention.value_length={meta['attention.value_length']} != key_length={head_dim}")
  if int(meta.get("rope.dimension_count", head_dim)) != head_dim:
    problems.append(
      f"rope.dimension_count={meta['rope.dimension_count']} != head_dim={head_dim} "
      "(partial RoPE is not implemented)"
    )
  theta = float(meta.get("rope.freq_base", 10000.0))

  tensor_names = {t.name for t in reader.tensors}
  if "vocab_size" in meta:
    vocab = int(meta["vocab_size"])
  elif "tokenizer.ggml.tokens" in fields:
    vocab = len(fields["tokenizer.ggml.tokens"].data)
  else:
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = int(emb.shape[-1]) if emb is not None else 0

  rope_scaling, consumed = None, set()
  scaling_type = meta.get("rope.scaling.type", "none")
  if scaling_type == "linear":
    rope_scaling = {"rope_type": "linear", "factor": float(meta.get("rope.scaling.factor", 1.0))}
  elif scaling_type == "yarn":
    rope_scaling = {"rope_type": "yarn", "factor": float(meta.get("rope.scaling.factor", 1.0))}
    if "rope.scaling.original_context_length" in meta:
      rope_scaling["original_max_position_embeddings"] = int(meta["rope.scaling.original_context_length"])
    for k, hf_k in (
      ("rope.scaling.yarn_beta_fast", "beta_fast"),
      ("rope.scaling.yarn_beta_slow", "beta_slow"),
    ):
      if k in meta:
        rope_scaling[hf_k] = float(meta[k])
  elif scaling_type != "none":
    problems.append(f"rope.scaling.type={scaling_type!r} is not implemented")
  if "rope_freqs.weight" in tensor_names:
    consumed.add("rope_freqs.weight")
    t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    from gguf.quants import dequantize

    divisors = np.asarray(dequantize(t.data, t.tensor_type), np.float64).reshape(-1)
    if divisors.shape != (head_dim // 2,):
      problems.append(f"rope_freqs.weight has shape {divisors.shape}, expected ({head_dim // 2},)")
    elif rope_scaling is not None and not np.allclose(divisors, 1.0):
      problems.append("rope_freqs.weight together with rope.scaling.type is not supported")
    else:
      fitted = _fit_llama3(divisors, head_dim, theta)
      if fitted == {}:
        problems.append(
          "rope_freqs.weight (per-frequency RoPE divisors) matches no llama3 rope "
          "scaling with common parameters; not supported"
        )
      elif fitted is not None:
        rope_scaling = fitted
  if problems:
    raise CheckpointError(
      f"{path}: GGUF metadata cannot be converted faithfully:\n  - " + "\n  - ".join(problems)
    )

  def tok(key):
    f = fields.get(f"tokenizer.ggml.{key}")
    return None if f is None else int(_value(f))

  hf = {
    "model_type": "llama",
    "vocab_size": vocab,
    "hidden_size": int(d),
    "intermediate_size": int(ffn),
    "num_hidden_layers": int(n_layers),
    "num_attention_heads": int(heads),
    "num_key_value_heads": int(kv_heads),
    "head_dim": head_dim,
    "rms_norm_eps": float(meta.get("attention.layer_norm_rms_epsilon", 1e-5)),
    "rope_theta": theta,
    "rope_scaling": rope_scaling,
    "max_position_embeddings": int(meta.get("context_length", 2048)),
    "tie_word_embeddings": "output.weight" not in tensor_names,
    "bos_token_id": tok("bos_token_id"),
    "eos_token_id": tok("eos_token_id"),
    "pad_token_id": tok("padding_token_id"),
  }
  try:
    return llama_config_from_hf(hf, **overrides), consumed
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None


def from_gguf(
  path: str,
  *,
  dtype: str = "float32",
  param_dtype: str | None = None,
  impl: str = "auto",
  progress: bool = False,
):
  reader = gguf_reader(path)
  config, consumed = gguf_config(reader, path, dtype=dtype, param_dtype=param_dtype or dtype, impl=impl)
  tensors = gguf_tensors(reader)
  pre = {}
  for name in tensors:
    hit = names.match(names.GGUF_TO_HF, name)
    if hit is not None:
      pre[name] = hit
  return build_model(
    config, tensors, source=os.path.basename(path), pre=pre, ignore=consumed, progress=progress
  )


__all__ = ["from_gguf", "gguf_config", "gguf_tensors"]
