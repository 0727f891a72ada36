"""NNX Llama -> a Hugging Face directory that `AutoModelForCausalLM` loads as LlamaForCausalLM.

    export_llama(model, "out/", dtype="bfloat16", tokenizer=tok, max_shard_size="5GB")

Writes `config.json` (HF Llama field names, legacy `rope_theta` + `rope_scaling`, which transformers
4.x reads as is and 5.x converts to `rope_parameters`), `generation_config.json`, the weights as
`model.safetensors` or shards + `model.safetensors.index.json`, and the tokenizer files when given.
Tied embeddings store no `lm_head.weight` (transformers ties it to the embedding).
"""

from __future__ import annotations

import os

from flax import nnx

from zebra_jax.config import LlamaConfig, is_hybrid
from zebra_jax.export import io, params


def llama_config_json(config: LlamaConfig, dtype: str) -> dict:
  out = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    **params.hf_llama_fields(config),
    "torch_dtype": dtype,
  }
  return out


def export_llama(
  model: nnx.Module,
  out_dir: str | os.PathLike,
  *,
  dtype: str | None = None,
  tokenizer=None,
  max_shard_size: int | str = "5GB",
  overwrite: bool = False,
) -> str:
  """Writes the HF directory; returns its absolute path."""
  config = getattr(model, "config", None)
  if not isinstance(config, LlamaConfig):
    raise ValueError("export_llama needs a CausalLM with a LlamaConfig in model.config")
  if is_hybrid(config) and set(config.layer_types()) != {"attention"}:
    raise ValueError(
      "export_llama exports plain Llamas; this model has MLA / Mamba2 layers "
      "(use format='hf' through export_pretrained, or format='mambainllama')"
    )
  dt = params.resolve_dtype(model, dtype)
  plan = params.tensor_plan(model, dtype=dtype)
  out_dir = io.prepare_out_dir(out_dir, overwrite)
  io.write_json(os.path.join(out_dir, "config.json"), llama_config_json(config, dt))
  if params.generation_config(config):  # bos / eos / pad, when the config has any
    io.write_json(os.path.join(out_dir, "generation_config.json"), params.generation_config(config))
  io.write_weights(out_dir, plan, max_shard_size=max_shard_size)
  io.save_tokenizer(tokenizer, out_dir)
  return out_dir


__all__ = ["export_llama", "llama_config_json"]
