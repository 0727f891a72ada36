"""Hugging Face Llama checkpoints (safetensors or torch .bin, single or sharded) -> `CausalLM`.

safetensors files are read without torch by a small reader of the (stable, documented) format:
an 8-byte little-endian header size, a JSON header of {name: {dtype, shape, data_offsets}}, then the
raw little-endian buffer. Each tensor is a zero-copy `np.memmap` view, read one at a time, and bf16
works through `ml_dtypes` (safetensors' own numpy backend refuses bf16).

`build_model` is the shared back end of every source: it maps source names with `names.py`,
collects every missing / unexpected / mis-shaped tensor into one `CheckpointError`, then fills an
abstract model (`nnx.eval_shape`) tensor by tensor so no random initialisation is ever computed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from zebra_jax.config import ConfigError, LlamaConfig, llama_config_from_hf
from zebra_jax.convert import names
from zebra_jax.convert.errors import CheckpointError
from zebra_jax.models.hybrid import CausalLM


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """A source tensor known by shape before it is read; `load()` returns a numpy array."""

  shape: tuple[int, ...]
  load: Callable[[], np.ndarray]
  where: str = ""  # file it comes from, for error messages


# -- safetensors (torch-free) ----------------------------------------------------------------------
_ST_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
  "F8_E4M3": ml_dtypes.float8_e4m3fn,
  "F8_E5M2": ml_dtypes.float8_e5m2,
}


def read_safetensors_header(path: str) -> tuple[dict, int]:
  """(header dict without __metadata__, byte offset of the data buffer)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise CheckpointError(f"{path}: safetensors header size {n} exceeds the file size {size}")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
  header.pop("__metadata__", None)
  data_start = 8 + n
  for name, info in header.items():
    begin, end = info["data_offsets"]
    if info["dtype"] not in _ST_DTYPES:
      raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    if data_start + end > size:
      raise CheckpointError(f"{path}: tensor {name} extends past the end of the file (truncated?)")
    nbytes = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(_ST_DTYPES[info["dtype"]]).itemsize
    if end - begin != nbytes:
      raise CheckpointError(f"{path}: tensor {name} has {end - begin} bytes, expected {nbytes}")
  return header, data_start


def safetensors_tensors(path: str) -> dict[str, LazyTensor]:
  header, data_start = read_safetensors_header(path)

  def loader(info):
    def load():
      dt, shape = np.dtype(_ST_DTYPES[info["dtype"]]), tuple(info["shape"])
      begin = info["data_offsets"][0]
      if not shape or 0 in shape:
        return np.zeros(shape, dt)
      x = np.memmap(path, dtype=dt, mode="r", offset=data_start + begin, shape=shape)
      return x if sys.byteorder == "little" else x.byteswap()  # the format is little-endian

    return load

  return {name: LazyTensor(tuple(info["shape"]), loader(info), path) for name, info in header.items()}


# -- torch .bin ------------------------------------------------------------------------------------
def torch_bin_tensors(path: str) -> dict[str, LazyTensor]:
  try:
    import torch
  except ImportError:
    raise CheckpointError(
      f"{path} is a torch pickle (.bin); reading it needs PyTorch, which is not "
      "installed (pip install torch), or convert the checkpoint to safetensors"
    ) from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # torch raises many types for bad pickles / zip archives
    raise CheckpointError(f"{path}: cannot be read by torch.load(weights_only=True): {e}") from None
  if not isinstance(sd, Mapping):
    raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")

  def loader(t):
    def load():
      t32 = t.detach()
      if t32.dtype in (torch.bfloat16, torch.float16):  # numpy has no bf16; float32 holds both exactly
        t32 = t32.float()
      return t32.numpy()

    return load

  return {
    k: LazyTensor(tuple(v.shape), loader(v), path) for k, v in sd.items() if isinstance(v, torch.Tensor)
  }


# -- checkpoint directories ------------------------------------------------------------------------
def _sharded(directory: str, index_name: str, reader) -> dict[str, LazyTensor]:
  with open(os.path.join(directory, index_name)) as f:
    weight_map = json.load(f).get("weight_map")
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{directory}/{index_name} has no 'weight_map'")
  missing_files = sorted({f for f in weight_map.values() if not os.path.exists(os.path.join(directory, f))})
  if missing_files:
    raise CheckpointError(f"{directory}/{index_name} names shard file(s) that do not exist: {missing_files}")
  out: dict[str, LazyTensor] = {}
  problems = []
  for shard in sorted(set(weight_map.values())):
    tensors = reader(os.path.join(directory, shard))
    for k, v in tensors.items():
      if k in out:
        problems.append(f"tensor {k} appears in both {out[k].where} and {shard}")
      out[k] = v
  listed_not_found = sorted(k for k, f in weight_map.items() if k not in out)
  if listed_not_found:
    problems.append(f"index lists tensors that are absent from their shards: {listed_not_found}")
  if problems:
    raise CheckpointError(f"{directory}: inconsistent sharded checkpoint:\n  - " + "\n  - ".join(problems))
  return out


def hf_checkpoint_tensors(directory: str) -> dict[str, LazyTensor]:
  """All tensors of an HF checkpoint directory; safetensors preferred over .bin when both exist."""
  j = lambda *p: os.path.join(directory, *p)
  if os.path.exists(j("model.safetensors.index.json")):
    return _sharded(directory, "model.safetensors.index.json", safetensors_tensors)
  if os.path.exists(j("model.safetensors")):
    return safetensors_tensors(j("model.safetensors"))
  if os.path.exists(j("pytorch_model.bin.index.json")):
    return _sharded(directory, "pytorch_model.bin.index.json", torch_bin_tensors)
  if os.path.exists(j("pytorch_model.bin")):
    return torch_bin_tensors(j("pytorch_model.bin"))
  raise CheckpointError(
    f"{directory}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
    f"pytorch_model.bin, pytorch_model.bin.index.json); files present: {sorted(os.listdir(directory))}"
  )


def load_hf_config(directory: str, **overrides) -> LlamaConfig:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{directory}: missing config.json")
  with open(path) as f:
    try:
      hf = json.load(f)
    except ValueError as e:
      raise CheckpointError(f"{path}: not valid JSON ({e})") from None
  try:
    return llama_config_from_hf(hf, **overrides)  # ConfigError naming unsupported fields
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None  # which file, for a person reading one line


# -- the shared back end ---------------------------------------------------------------------------
def abstract_params(config: LlamaConfig) -> tuple:
  """(graphdef, abstract Param state, empty rest state, {dotted path: ShapeDtypeStruct}), traced
  with nnx.eval_shape so nothing is computed or allocated."""
  abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
  graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
  if nnx.to_flat_state(rest):
    raise NotImplementedError(
      "the model has non-Param variables "
      f"{[names.path_str(p) for p, _ in nnx.to_flat_state(rest)]}; "
      "conversion fills nnx.Param only"
    )
  flat = {names.path_str(p): v.get_value() for p, v in nnx.to_flat_state(state)}
  return graphdef, state, rest, flat


def materialise(config: LlamaConfig, values: Mapping[str, jax.Array], abstract=None) -> CausalLM:
  """A concrete CausalLM from {dotted path: array}; every parameter must be present and shaped.

  `abstract` is `abstract_params(config)` when the caller already has it (it costs a trace).
  """
  graphdef, state, rest, flat = abstract if abstract is not None else abstract_params(config)
  missing = sorted(set(flat) - set(values))
  extra = sorted(set(values) - set(flat))
  bad = [
    f"{k}: got {tuple(values[k].shape)}, expected {tuple(flat[k].shape)}"
    for k in flat
    if k in values and tuple(values[k].shape) != tuple(flat[k].shape)
  ]
  if missing or extra or bad:
    raise CheckpointError(
      "parameters do not match the model:\n  - "
      + "\n  - ".join([f"missing {k}" for k in missing] + [f"unexpected {k}" for k in extra] + bad)
    )
  for path, var in nnx.to_flat_state(state):
    var.set_value(jnp.asarray(values[names.path_str(path)], dtype=flat[names.path_str(path)].dtype))
  return nnx.merge(graphdef, state, rest)


def build_model(
  config: LlamaConfig,
  tensors: Mapping[str, LazyTensor],
  *,
  source: str,
  rules: Iterable[names.Rule] = names.HF_TO_NNX,
  pre: Mapping[str, tuple[str, str]] | None = None,
  ignore: Iterable[str] = (),
  progress: bool = False,
) -> CausalLM:
  """Fills a CausalLM of `config` from HF-named tensors, or raises ONE CheckpointError listing all.

  `pre` optionally renames a source tensor before the HF map: {source name: (HF name, transform)}
  (the GGUF path uses it); `ignore` lists source names consumed elsewhere.
  """
  rules = tuple(rules)
  abstract = abstract_params(config)
  expected = abstract[3]
  ctx = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads}
  ignore = set(ignore)

  plan: dict[str, tuple[str, list[str], LazyTensor]] = {}  # nnx path -> (source, transforms, tensor)
  unexpected, misshaped, duplicated = [], [], []
  tied_head: tuple[str, LazyTensor] | None = None
  seen_bad: set[str] = set()  # mis-shaped targets: reported once, not also as missing
  for src_name, t in tensors.items():
    if src_name in ignore:
      continue
    hf_name, chain = src_name, []
    if pre is not None:
      hit = pre.get(src_name)
      if hit is None:
        unexpected.append(f"{src_name} {tuple(t.shape)}")
        continue
      hf_name, first = hit
      chain.append(first)
    if names.is_harmless_extra(hf_name):
      continue
    if config.tie_word_embeddings and hf_name == names.HF_TIED_HEAD:
      tied_head = (src_name, t)  # checked against the embedding below
      continue
    hit = names.match(rules, hf_name)
    if hit is None or hit[0] not in expected:
      why = "" if hit is None else f" (maps to {hit[0]}, which this config does not have)"
      unexpected.append(f"{src_name} {tuple(t.shape)}{why}")
      continue
    path, transform = hit
    chain.append(transform)
    want = tuple(expected[path].shape)
    for name in reversed(chain):
      want = names.TRANSFORMS[name][1](want)
    if tuple(t.shape) != want:
      misshaped.append(f"{src_name}: shape {tuple(t.shape)}, expected {want} (for {path})")
      seen_bad.add(path)
      continue
    if path in plan:
      duplicated.append(f"{src_name} and {plan[path][0]} both map to {path}")
      continue
    plan[path] = (src_name, chain, t)

  missing = []
  for path in sorted(set(expected) - set(plan) - seen_bad, key=_natural_key):
    back = names.nnx_path_to_hf(path)
    missing.append(f"{back[0]} (for {path})" if back else path)
  if missing or unexpected or misshaped or duplicated:
    parts = []
    for title, items in (
      ("missing", missing),
      ("unexpected", unexpected),
      ("wrong shape", misshaped),
      ("duplicated", duplicated),
    ):
      if items:
        parts.append(f"{len(items)} {title} tensor(s):\n    " + "\n    ".join(items))
    raise CheckpointError(
      f"checkpoint {source} does not match the Llama config "
      f"({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
      f"heads {config.num_attention_heads}/{config.num_key_value_heads}, "
      f"vocab {config.vocab_size}):\n  " + "\n  ".join(parts)
    )

  values: dict[str, jax.Array] = {}
  nonfinite: list[str] = []
  order = sorted(plan, key=_natural_key)
  bar = _progress(
    len(order) + (tied_head is not None), f"reading {os.path.basename(os.path.normpath(source))}", progress
  )
  for path in order:
    src_name, chain, t = plan[path]
    x = t.load()
    for name in chain:
      x = names.TRANSFORMS[name][0](x, ctx)
    x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise CheckpointError(f"{src_name}: dtype {x.dtype} is not a floating point type")
    nonfinite += nonfinite_report({src_name: x})
    values[path] = jnp.asarray(x, dtype=expected[path].dtype)  # one tensor at a time, as param_dtype
    bar.update(1)
  if tied_head is not None:
    name, t = tied_head
    head = np.asarray(t.load(), np.float32)
    emb_src, emb_chain, emb_t = plan["embed_tokens.embedding"]
    emb = emb_t.load()
    for fn in emb_chain:
      emb = names.TRANSFORMS[fn][0](emb, ctx)
    emb = np.asarray(emb, np.float32)
    if head.shape != emb.shape or not np.array_equal(head, emb):
      bar.close()
      raise CheckpointError(
        f"checkpoint {source}: tie_word_embeddings is true but {name} differs from "
        f"{names.HF_EMBEDDING}; set tie_word_embeddings=false to keep both"
      )
    bar.update(1)
  bar.close()
  if nonfinite:
    raise CheckpointError(nonfinite_message(source, nonfinite))
  return materialise(config, values, abstract)


def nonfinite_report(arrays: Mapping[str, object]) -> list[str]:
  """ "name: k of n values are NaN / inf" for every array holding any (a corrupt or badly converted
  checkpoint would otherwise load and give NaN logits)."""
  out = []
  for name, x in arrays.items():
    if not jnp.issubdtype(x.dtype, jnp.floating):
      continue
    if isinstance(x, jax.Array):  # counted where it lives (no copy of the weights to the host)
      bad = int(jnp.size(x) - jnp.count_nonzero(jnp.isfinite(x)))
    else:
      bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
      out.append(f"{name}: {bad:,} of {x.size:,} values are NaN / inf")
  return out


def nonfinite_message(source: str, items: list[str]) -> str:
  shown = items[:10] + ([f"... and {len(items) - 10} more"] if len(items) > 10 else [])
  return (
    f"checkpoint {source} holds non-finite weights in {len(items)} tensor(s) (corrupted "
    "file or a broken conversion):\n  " + "\n  ".join(shown)
  )


def _natural_key(path: str):
  return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


class _NoBar:
  def update(self, n=1):
    pass

  def close(self):
    pass


def _progress(total: int, desc: str, enabled: bool):
  if not enabled:
    return _NoBar()
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit="tensor")


def from_hf_directory(
  directory: str,
  *,
  dtype: str = "float32",
  param_dtype: str | None = None,
  impl: str = "auto",
  progress: bool = False,
) -> CausalLM:
  config = load_hf_config(directory, dtype=dtype, param_dtype=param_dtype or dtype, impl=impl)
  return build_model(config, hf_checkpoint_tensors(directory), source=directory, progress=progress)


__all__ = [
  "LazyTensor",
  "build_model",
  "materialise",
  "abstract_params",
  "from_hf_directory",
  "hf_checkpoint_tensors",
  "safetensors_tensors",
  "torch_bin_tensors",
  "load_hf_config",
  "ConfigError",
]
