"""NNX parameters -> torch-named tensor plans (the export direction of `convert/names.py`).

Names and transforms come from `convert/names.py`, which holds both directions of the map:
`names.torch_name` (from `names.HF_TO_NNX` reversed for the embedding, norms, MLP and LM head, and
`names.HYBRID_MIXER_NAMES` for each layer's mixer, chosen by the layer's type: MLA and Mamba2 both
own an `out_proj`, so the type decides the torch prefix) and `names.INVERSE`.
"""

from __future__ import annotations

from typing import Callable

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from zebra_jax.config import LlamaConfig
from zebra_jax.convert import names
from zebra_jax.convert.names import INVERSE, torch_name
from zebra_jax.export.io import PlannedTensor, np_dtype

# Tiny precision-critical Mamba2 parameters stay float32 whatever the export dtype (our model keeps
# them float32 too, so a bf16 export still round-trips bit for bit).
KEEP_FLOAT32 = ("A_log", "D", "dt_bias")


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
  """{dotted NNX path: array} of every nnx.Param."""
  return {names.path_str(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _cast(x: np.ndarray, dt: np.dtype) -> np.ndarray:
  if x.dtype == dt:
    return x
  if x.dtype == np.dtype(ml_dtypes.bfloat16) or dt == np.dtype(ml_dtypes.bfloat16):
    return x.astype(np.float32).astype(dt) if x.dtype != np.float32 else x.astype(dt)
  return x.astype(dt)


def tensor_plan(
  model: nnx.Module, *, dtype: str | None = None, rename: Callable[[str], str] | None = None
) -> list[PlannedTensor]:
  """Every parameter as a PlannedTensor with its torch name, shape and dtype, in layer order.

  `dtype` None keeps each parameter's dtype; otherwise floating tensors are cast to it (except
  KEEP_FLOAT32). `rename` maps the canonical torch names to another layout's (e.g. MambaInLlama).
  """
  config: LlamaConfig = model.config
  layer_types = config.layer_types()
  plan = []
  for path, value in sorted(flat_params(model).items(), key=lambda kv: _natural_key(kv[0])):
    name, tf = torch_name(path, layer_types)
    if rename is not None:
      name = rename(name)
    fn, shape_fn = INVERSE[tf]
    src_dt = np.dtype(value.dtype)
    if dtype is None or path.rsplit(".", 1)[-1] in KEEP_FLOAT32:
      out_dt = src_dt
    else:
      out_dt = np_dtype(dtype)

    def get(value=value, fn=fn, out_dt=out_dt):
      x = np.asarray(jax.device_get(value))
      return np.ascontiguousarray(_cast(fn(x), out_dt))

    plan.append(PlannedTensor(name, shape_fn(tuple(value.shape)), out_dt, get))
  return plan


def _natural_key(path: str):
  return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def hf_llama_fields(config: LlamaConfig) -> dict:
  """The Llama part of a config.json, in Hugging Face field names."""
  eos = config.eos_token_id
  return {
    "vocab_size": config.vocab_size,
    "hidden_size": config.hidden_size,
    "intermediate_size": config.intermediate_size,
    "num_hidden_layers": config.num_hidden_layers,
    "num_attention_heads": config.num_attention_heads,
    "num_key_value_heads": config.num_key_value_heads,
    "head_dim": config.head_dim,
    "hidden_act": "silu",
    "max_position_embeddings": config.max_position_embeddings,
    "rms_norm_eps": config.rms_norm_eps,
    "rope_theta": config.rope_theta,
    "rope_scaling": dict(config.rope_scaling) if config.rope_scaling else None,
    "tie_word_embeddings": bool(config.tie_word_embeddings),
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "pretraining_tp": 1,
    "initializer_range": 0.02,
    "use_cache": True,
    "bos_token_id": config.bos_token_id,
    "eos_token_id": list(eos) if isinstance(eos, (tuple, list)) else eos,
    "pad_token_id": config.pad_token_id,
  }


def resolve_dtype(model: nnx.Module, dtype: str | None) -> str:
  """The dtype name written as `torch_dtype`: the requested one, else the model's param dtype."""
  if dtype is not None:
    np_dtype(dtype)  # validates
    return dtype
  return model.config.param_dtype


def generation_config(config: LlamaConfig) -> dict:
  eos = config.eos_token_id
  out = {
    "bos_token_id": config.bos_token_id,
    "eos_token_id": list(eos) if isinstance(eos, (tuple, list)) else eos,
  }
  if config.pad_token_id is not None:
    out["pad_token_id"] = config.pad_token_id
  return {k: v for k, v in out.items() if v is not None}


__all__ = [
  "flat_params",
  "torch_name",
  "tensor_plan",
  "hf_llama_fields",
  "resolve_dtype",
  "generation_config",
  "INVERSE",
  "KEEP_FLOAT32",
]
