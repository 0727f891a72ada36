"""NNX hybrid (MLA + Mamba2 + GQA attention) -> a transformers remote-code directory.

    export_hybrid(model, "out/")
    AutoModelForCausalLM.from_pretrained("out/", trust_remote_code=True)   # no zebra_jax needed

Directory:
  config.json              model_type "zebra_llama", auto_map -> the two files below; HF Llama field
                           names for the shared parts, our HybridConfig (= reference) names for the
                           mixers: mla_layers, attn_layers, q_lora_rank, kv_lora_rank, qk_rope_head_dim,
                           qk_nope_head_dim, v_head_dim, use_full_kv_head, use_lora_layer_norm,
                           mla_rope_theta, mla_rope_scaling, mla_layer_ranks, d_state, headdim,
                           ngroups, d_conv, chunk_size, d_inner, d_xb, conv_bias, gated_norm_eps.
  hybrid_config.json       the same hybrid fields in the Zebra-Llama reference's vocabulary
                           (rope_theta / rope_scaling of the MLA layers, ssm_cfg, layer_rank_list),
                           for the reference's own loaders.
  configuration_zebra.py,  self-contained PyTorch modeling code (package data copied verbatim).
  modeling_zebra.py
  model.safetensors[...]   tensors in the Zebra-Llama reference layout: model.layers.N.mla.* for MLA,
                           model.layers.N.mamba.* for Mamba2 (in_proj rows [z|x|B|C|dt], conv1d.weight
                           (C, 1, K)), model.layers.N.self_attn.* for attention, mlp.*, norms, embed,
                           lm_head (absent when tied).
"""

from __future__ import annotations

import os
import shutil

from flax import nnx

from zebra_jax.config import HYBRID_CONFIG_JSON_FIELDS, HybridConfig, LlamaConfig
from zebra_jax.export import io, params
from zebra_jax.export.torch_modeling import TEMPLATE_DIR, TEMPLATE_FILES
from zebra_jax.export.hf_llama import llama_config_json

MODEL_TYPE = "zebra_llama"
AUTO_MAP = {
  "AutoConfig": "configuration_zebra.ZebraLlamaConfig",
  "AutoModelForCausalLM": "modeling_zebra.ZebraLlamaForCausalLM",
}

# HybridConfig fields written to config.json (names unchanged); the import reads the same list.
HYBRID_FIELDS = HYBRID_CONFIG_JSON_FIELDS


def _as_hybrid(config: LlamaConfig) -> HybridConfig:
  if isinstance(config, HybridConfig):
    return config
  # A plain Llama: every layer attention.
  return HybridConfig.from_llama(config, attn_layers=tuple(range(config.num_hidden_layers)))


def hybrid_fields(config: HybridConfig) -> dict:
  out = {}
  for f in HYBRID_FIELDS:
    v = getattr(config, f)
    if f in ("mla_layers", "attn_layers"):
      v = list(v)
    elif f == "mla_layer_ranks":
      v = {str(k): list(r) for k, r in v.items()} if v else None
    elif f == "mla_rope_scaling":
      v = dict(v) if v else None
    out[f] = v
  return out


def hybrid_config_json(config: LlamaConfig, dtype: str) -> dict:
  h = _as_hybrid(config)
  return {
    "architectures": ["ZebraLlamaForCausalLM"],
    "model_type": MODEL_TYPE,
    "auto_map": dict(AUTO_MAP),
    **params.hf_llama_fields(h),
    **hybrid_fields(h),
    "torch_dtype": dtype,
  }


def reference_hybrid_config(config: LlamaConfig) -> dict:
  """hybrid_config.json in the Zebra-Llama reference's names (reference sections 1, 3, 9)."""
  h = _as_hybrid(config)
  ranks = {str(i): list(h.mla_ranks(i)) for i in h.mla_layers}
  return {
    "mla_layers": list(h.mla_layers),
    "attn_layers": list(h.attn_layers),
    "q_lora_rank": h.q_lora_rank,
    "kv_lora_rank": h.kv_lora_rank,
    "qk_rope_head_dim": h.qk_rope_head_dim,
    "qk_nope_head_dim": h.qk_nope_head_dim,
    "v_head_dim": h.v_head_dim,
    "use_full_kv_head": h.use_full_kv_head,
    "use_lora_layer_norm": h.use_lora_layer_norm,
    "qkv_rank_divisor": h.qkv_rank_divisor,
    "rope_theta": h.mla_rope_theta,
    "rope_scaling": dict(h.mla_rope_scaling) if h.mla_rope_scaling else None,
    "layer_rank_list": ranks if h.mla_layer_ranks else None,
    "d_model": h.hidden_size,
    "d_inner": h.d_inner,
    "d_xb": h.d_xb,
    "ssm_cfg": {
      "expand": 1,
      "ngroups": h.ngroups,
      "d_state": h.d_state,
      "headdim": h.headdim,
      "d_conv": h.d_conv,
      "chunk_size": h.chunk_size,
      "conv_bias": h.conv_bias,
      "repeat_kv_before_conv": False,
    },
    "rms_norm_eps": h.rms_norm_eps,
    "gated_norm_eps": h.gated_norm_eps,
    "intermediate_size": h.intermediate_size,
    "hidden_act": "silu",
    "n_layer": h.num_hidden_layers,
  }


def export_hybrid(
  model: nnx.Module,
  out_dir: str | os.PathLike,
  *,
  dtype: str | None = None,
  tokenizer=None,
  max_shard_size: int | str = "5GB",
  overwrite: bool = False,
) -> str:
  """Writes the remote-code directory; returns its absolute path."""
  config = getattr(model, "config", None)
  if not isinstance(config, LlamaConfig):
    raise ValueError("export_hybrid needs a CausalLM with a config in model.config")
  dt = params.resolve_dtype(model, dtype)
  plan = params.tensor_plan(model, dtype=dtype)
  out_dir = io.prepare_out_dir(out_dir, overwrite)
  io.write_json(os.path.join(out_dir, "config.json"), hybrid_config_json(config, dt))
  io.write_json(os.path.join(out_dir, "hybrid_config.json"), reference_hybrid_config(config))
  if params.generation_config(config):  # bos / eos / pad, when the config has any
    io.write_json(os.path.join(out_dir, "generation_config.json"), params.generation_config(config))
  for f in TEMPLATE_FILES:
    shutil.copyfile(os.path.join(TEMPLATE_DIR, f), os.path.join(out_dir, f))
  io.write_weights(out_dir, plan, max_shard_size=max_shard_size)
  io.save_tokenizer(tokenizer, out_dir)
  return out_dir


def export_zebra_reference(
  model: nnx.Module,
  out_dir: str | os.PathLike,
  *,
  dtype: str | None = None,
  tokenizer=None,
  base_model: str | None = None,
  max_shard_size: int | str = "5GB",
  overwrite: bool = False,
) -> str:
  """The Zebra-Llama reference's own layout: a plain HF Llama config.json (`_name_or_path` =
  `base_model` when given) + hybrid_config.json + the same tensors, no remote code."""
  config = getattr(model, "config", None)
  if not isinstance(config, LlamaConfig):
    raise ValueError("export_zebra_reference needs a CausalLM with a config in model.config")
  dt = params.resolve_dtype(model, dtype)
  plan = params.tensor_plan(model, dtype=dtype)
  out_dir = io.prepare_out_dir(out_dir, overwrite)
  cfg = llama_config_json(config, dt)
  if base_model:
    cfg["_name_or_path"] = base_model
  io.write_json(os.path.join(out_dir, "config.json"), cfg)
  io.write_json(os.path.join(out_dir, "hybrid_config.json"), reference_hybrid_config(config))
  if params.generation_config(config):
    io.write_json(os.path.join(out_dir, "generation_config.json"), params.generation_config(config))
  io.write_weights(out_dir, plan, max_shard_size=max_shard_size)
  io.save_tokenizer(tokenizer, out_dir)
  return out_dir


__all__ = [
  "export_hybrid",
  "export_zebra_reference",
  "hybrid_config_json",
  "reference_hybrid_config",
  "HYBRID_FIELDS",
  "MODEL_TYPE",
  "AUTO_MAP",
]
