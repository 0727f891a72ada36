"""Tensor name maps as data: Hugging Face Llama names <-> our NNX parameter paths, GGUF -> HF names.

Every source (safetensors, torch .bin, GGUF) is first expressed in HF names; `HF_TO_NNX` then maps
each HF tensor to a path in `CausalLM`'s parameter tree plus a per-tensor transform. The export
direction (NNX -> HF) uses the same tables: `nnx_path_to_hf`, `torch_name` (hybrid layers too) and
`INVERSE` (the transforms reversed); zebra_jax/export builds on them.

Patterns are full-match regexes; `{0}`, `{1}` in a target are the pattern's groups. NNX paths are
dot-joined (`layers.3.mixer.q_proj.kernel`); integer components index `nnx.List`s.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import numpy as np


class Rule(NamedTuple):
  pattern: str  # full-match regex over the source name
  target: str  # format string over the regex groups
  transform: str  # key of TRANSFORMS (applied source -> target)


# HF LlamaForCausalLM state-dict names -> CausalLM parameter paths. torch's nn.Linear stores
# (out, in); our Linear kernels are (in, out), hence "transpose".
HF_TO_NNX: tuple[Rule, ...] = (
  Rule(r"model\.embed_tokens\.weight", "embed_tokens.embedding", "identity"),
  Rule(
    r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight",
    "layers.{0}.mixer.{1}_proj.kernel",
    "transpose",
  ),
  Rule(
    r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.{1}_proj.kernel", "transpose"
  ),
  Rule(
    r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight",
    "layers.{0}.{1}.weight",
    "identity",
  ),
  Rule(r"model\.norm\.weight", "norm.weight", "identity"),
  Rule(r"lm_head\.weight", "lm_head.kernel", "transpose"),
)

# Tensors that checkpoints sometimes carry but that hold nothing we need (recomputed buffers).
HF_HARMLESS_EXTRAS: tuple[str, ...] = (
  r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
  r"model\.rotary_emb\.inv_freq",
)

# The separate LM head of a tied checkpoint (torch state_dicts list the shared tensor twice).
HF_TIED_HEAD = "lm_head.weight"
HF_EMBEDDING = "model.embed_tokens.weight"

# llama.cpp GGUF names (arch "llama") -> HF names. llama.cpp's converter permutes the rows of
# attn_q / attn_k from HF's rotate-half order to adjacent pairs; "unpermute_q"/"unpermute_k" undo it.
GGUF_TO_HF: tuple[Rule, ...] = (
  Rule(r"token_embd\.weight", "model.embed_tokens.weight", "identity"),
  Rule(r"output_norm\.weight", "model.norm.weight", "identity"),
  Rule(r"output\.weight", "lm_head.weight", "identity"),
  Rule(r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{0}.input_layernorm.weight", "identity"),
  Rule(r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{0}.post_attention_layernorm.weight", "identity"),
  Rule(r"blk\.(\d+)\.attn_q\.weight", "model.layers.{0}.self_attn.q_proj.weight", "unpermute_q"),
  Rule(r"blk\.(\d+)\.attn_k\.weight", "model.layers.{0}.self_attn.k_proj.weight", "unpermute_k"),
  Rule(r"blk\.(\d+)\.attn_v\.weight", "model.layers.{0}.self_attn.v_proj.weight", "identity"),
  Rule(r"blk\.(\d+)\.attn_output\.weight", "model.layers.{0}.self_attn.o_proj.weight", "identity"),
  Rule(r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{0}.mlp.gate_proj.weight", "identity"),
  Rule(r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{0}.mlp.up_proj.weight", "identity"),
  Rule(r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{0}.mlp.down_proj.weight", "identity"),
)

# GGUF tensors consumed by the config builder rather than mapped to a parameter.
GGUF_CONFIG_TENSORS: tuple[str, ...] = (r"rope_freqs\.weight",)


# Hybrid checkpoints (Zebra-Llama reference layout, also MambaInLlama's Mamba2 / attention names; see
# zebra_jax/export and docs/export.md). Per mixer type: the torch sub-module of the decoder layer and
# (torch tensor suffix, NNX path under `layers.N.mixer`, transform torch -> NNX). Optional entries
# (q_proj without q_lora, the LoRA layernorms, conv bias) only exist when the config has them.
HYBRID_MIXER_NAMES: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {
  "attention": (
    "self_attn",
    (
      ("q_proj.weight", "q_proj.kernel", "transpose"),
      ("k_proj.weight", "k_proj.kernel", "transpose"),
      ("v_proj.weight", "v_proj.kernel", "transpose"),
      ("o_proj.weight", "o_proj.kernel", "transpose"),
    ),
  ),
  "mla": (
    "mla",
    (
      ("q_proj.weight", "q_proj.kernel", "transpose"),
      ("q_a_proj.weight", "q_a_proj.kernel", "transpose"),
      ("q_a_layernorm.weight", "q_a_layernorm.weight", "identity"),
      ("q_b_proj.weight", "q_b_proj.kernel", "transpose"),
      ("kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa.kernel", "transpose"),
      ("kv_a_layernorm.weight", "kv_a_layernorm.weight", "identity"),
      ("kv_b_proj.weight", "kv_b_proj.kernel", "transpose"),
      ("out_proj.weight", "out_proj.kernel", "transpose"),
    ),
  ),
  "mamba2": (
    "mamba",
    (
      ("in_proj.weight", "in_proj.kernel", "transpose"),  # rows [z | x | B | C | dt]
      ("conv1d.weight", "conv1d.kernel", "conv_weight"),  # (C, 1, K) <-> (K, C)
      ("conv1d.bias", "conv1d.bias", "identity"),
      ("A_log", "A_log", "identity"),
      ("D", "D", "identity"),
      ("dt_bias", "dt_bias", "identity"),
      ("norm.weight", "norm.weight", "identity"),
      ("out_proj.weight", "out_proj.kernel", "transpose"),
    ),
  ),
}

# Torch name -> NNX path rules for hybrids: the Llama table plus the MLA / Mamba2 mixers.
HYBRID_TO_NNX: tuple[Rule, ...] = HF_TO_NNX + tuple(
  Rule(rf"model\.layers\.(\d+)\.{prefix}\.{re.escape(src)}", "layers.{0}.mixer." + dst, tf)
  for kind, (prefix, entries) in HYBRID_MIXER_NAMES.items()
  if kind != "attention"
  for src, dst, tf in entries
)


# -- transforms ----------------------------------------------------------------------------------
def unpermute_rope_rows(w_OI: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute`: per head, rows (pair j, member m) -> (member m, pair j).

  llama.cpp stores head rows in adjacent-pair order (j, m) so its interleaved RoPE matches HF's
  rotate-half one; HF order is (m, j): row m * K/2 + j.
  """
  out_dim = w_OI.shape[0]
  if out_dim % (2 * n_heads):
    raise ValueError(f"cannot un-permute {w_OI.shape} for {n_heads} heads (rows not a multiple of 2*heads)")
  half = out_dim // n_heads // 2
  w = w_OI.reshape(n_heads, half, 2, *w_OI.shape[1:])
  return w.swapaxes(1, 2).reshape(w_OI.shape)


# name -> (function(array, ctx) -> array, function(target shape) -> source shape). `ctx` carries
# the head counts the GGUF permutations need.
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
  "identity": (lambda x, ctx: x, lambda s: tuple(s)),
  "transpose": (lambda x, ctx: x.T, lambda s: tuple(reversed(s))),
  "unpermute_q": (lambda x, ctx: unpermute_rope_rows(x, ctx["num_attention_heads"]), lambda s: tuple(s)),
  "unpermute_k": (lambda x, ctx: unpermute_rope_rows(x, ctx["num_key_value_heads"]), lambda s: tuple(s)),
  # torch depthwise Conv1d weight (C, 1, K) -> our conv kernel (K, C).
  "conv_weight": (lambda x, ctx: x[:, 0, :].T, lambda s: (s[1], 1, s[0])),
}

# Inverse of TRANSFORMS (NNX -> torch): (array fn, NNX shape -> torch shape).
INVERSE: dict[str, tuple[Callable, Callable]] = {
  "identity": (lambda x: x, lambda s: tuple(s)),
  "transpose": (lambda x: x.T, lambda s: tuple(reversed(s))),
  "conv_weight": (lambda x: x.T[:, None, :], lambda s: (s[1], 1, s[0])),
}


# -- lookups -------------------------------------------------------------------------------------
def match(rules: tuple[Rule, ...], name: str) -> tuple[str, str] | None:
  """(target name, transform) of the first rule that full-matches `name`, else None."""
  for rule in rules:
    m = re.fullmatch(rule.pattern, name)
    if m:
      return rule.target.format(*m.groups()), rule.transform
  return None


def is_harmless_extra(name: str) -> bool:
  return any(re.fullmatch(p, name) for p in HF_HARMLESS_EXTRAS)


def path_str(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def nnx_path_to_hf(path: str) -> tuple[str, str] | None:
  """Inverse lookup: (HF name, transform) for an NNX path, from the same `HF_TO_NNX` table."""
  for rule in HF_TO_NNX:
    # Turn the target template into a regex and the source regex into a template.
    target_re = re.escape(rule.target).replace(r"\{0\}", "(.+?)").replace(r"\{1\}", "(.+?)")
    m = re.fullmatch(target_re, path)
    if not m:
      continue
    groups = iter(m.groups())
    source = re.sub(r"\((?:[^()]|\([^()]*\))*\)", lambda _: next(groups), rule.pattern)
    source = source.replace("\\.", ".")
    if re.fullmatch(rule.pattern, source):
      return source, rule.transform
  return None


def torch_name(path: str, layer_types) -> tuple[str, str]:
  """(torch name, transform) of an NNX parameter path; `layer_types[i]` picks the mixer names."""
  parts = path.split(".")
  if len(parts) > 3 and parts[0] == "layers" and parts[2] == "mixer":
    i = int(parts[1])
    kind = layer_types[i]
    prefix, entries = HYBRID_MIXER_NAMES[kind]
    sub = ".".join(parts[3:])
    for src, dst, tf in entries:
      if dst == sub:
        return f"model.layers.{i}.{prefix}.{src}", tf
    raise KeyError(f"no torch name for {path} ({kind} layer)")
  hit = nnx_path_to_hf(path)
  if hit is None:
    raise KeyError(f"no torch name for parameter {path}")
  return hit
