"""NNX GQA + Mamba2 hybrid -> a MambaInLlama-layout directory (mamba_in_llama_reference.md section 7).

    export_mambainllama(model, "out/", base_model="meta-llama/Meta-Llama-3-8B-Instruct")

Directory:
  config.json        the plain HF Llama config (model_type "llama", LlamaForCausalLM); `_name_or_path`
                     = `base_model` when given (MambaInLlama's loaders instantiate that model first).
  mamba_config.json  MambaConfig.__dict__: d_model, ssm_cfg {expand 1, ngroups, d_state[, d_conv]},
                     rms_norm_eps, vocab_size null, d_inner, d_xb, intermediate_size, hidden_act,
                     n_layer, attn_layers (the only record of which layers are attention).
  weights            model.safetensors (the local loader merges every *.safetensors) or, with
                     weights="pytorch_model.bin", the single .bin the hub loader fetches. Names:
                     model.layers.N.self_attn.{q,k,v,o}_proj.weight for attention layers,
                     model.layers.N.mamba.{in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log,
                     D, norm.weight, out_proj.weight} for Mamba2 layers, mlp / norms / embed / lm_head.

The MambaInLlama Mamba2 constructor forces nheads = ngroups and headdim = d_state, gated-norm eps
1e-5 and a conv bias; models that differ cannot be represented and are refused by name.
"""

from __future__ import annotations

import os

from flax import nnx

from zebra_jax.config import HybridConfig, LlamaConfig
from zebra_jax.export import io, params
from zebra_jax.export.hf_llama import llama_config_json


def _check_representable(config: LlamaConfig) -> HybridConfig:
  if not isinstance(config, HybridConfig):
    config = HybridConfig.from_llama(config, attn_layers=tuple(range(config.num_hidden_layers)))
  problems = []
  if config.mla_layers:
    problems.append(
      f"it has MLA layers {list(config.mla_layers)} (MambaInLlama has attention and "
      "Mamba2 layers only; use format='hf')"
    )
  if config.mamba_layers:
    if config.headdim != config.d_state:
      problems.append(
        f"headdim={config.headdim} != d_state={config.d_state} (MambaInLlama forces headdim = d_state)"
      )
    if config.mamba_nheads != config.ngroups:
      problems.append(
        f"Mamba2 heads={config.mamba_nheads} != ngroups={config.ngroups} (MambaInLlama "
        "forces nheads = ngroups)"
      )
    if not config.conv_bias:
      problems.append("conv_bias=False (MambaInLlama's conv1d always has a bias)")
    if abs(config.gated_norm_eps - 1e-5) > 1e-12:
      problems.append(f"gated_norm_eps={config.gated_norm_eps} (MambaInLlama uses 1e-5)")
  if problems:
    raise ValueError(
      "the model cannot be exported in the MambaInLlama layout:\n  - " + "\n  - ".join(problems)
    )
  return config


def mamba_config_json(config: LlamaConfig) -> dict:
  h = _check_representable(config)
  ssm_cfg = {"expand": 1, "ngroups": h.ngroups, "d_state": h.d_state}
  if h.d_conv != 4:  # the constructor default; ssm_cfg entries are passed to it as keywords
    ssm_cfg["d_conv"] = h.d_conv
  return {
    "d_model": h.hidden_size,
    "ssm_cfg": ssm_cfg,
    "rms_norm_eps": h.rms_norm_eps,
    "vocab_size": None,
    "d_inner": h.d_inner,
    "d_xb": h.d_xb,
    "intermediate_size": h.intermediate_size,
    "hidden_act": "silu",
    "n_layer": h.num_hidden_layers,
    "attn_layers": list(h.attn_layers),
  }


def export_mambainllama(
  model: nnx.Module,
  out_dir: str | os.PathLike,
  *,
  dtype: str | None = None,
  tokenizer=None,
  base_model: str | None = None,
  weights: str = "safetensors",
  max_shard_size: int | str = "5GB",
  overwrite: bool = False,
) -> str:
  """Writes the MambaInLlama directory; returns its absolute path."""
  config = getattr(model, "config", None)
  if not isinstance(config, LlamaConfig):
    raise ValueError("export_mambainllama needs a CausalLM with a config in model.config")
  if weights not in ("safetensors", "pytorch_model.bin"):
    raise ValueError(f"weights={weights!r} must be 'safetensors' or 'pytorch_model.bin'")
  mamba_cfg = mamba_config_json(config)  # validates first
  dt = params.resolve_dtype(model, dtype)
  plan = params.tensor_plan(model, dtype=dtype)
  out_dir = io.prepare_out_dir(out_dir, overwrite)
  cfg = llama_config_json(config, dt)
  if base_model:
    cfg["_name_or_path"] = base_model
  io.write_json(os.path.join(out_dir, "config.json"), cfg)
  io.write_json(os.path.join(out_dir, "mamba_config.json"), mamba_cfg)
  if params.generation_config(config):  # bos / eos / pad, when the config has any
    io.write_json(os.path.join(out_dir, "generation_config.json"), params.generation_config(config))
  if weights == "safetensors":
    io.write_weights(out_dir, plan, max_shard_size=max_shard_size)
  else:
    io.write_pytorch_bin(out_dir, plan)
  io.save_tokenizer(tokenizer, out_dir)
  return out_dir


__all__ = ["export_mambainllama", "mamba_config_json"]
