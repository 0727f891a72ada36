"""Hybrid checkpoints (MLA / Mamba2 / attention layers) in PyTorch layouts -> `CausalLM`.

Three directory formats are recognised by `detect_format` (checked by `from_pretrained`):

* "zebra_hf": written by `export_pretrained(format="hf")`: config.json with model_type
  "zebra_llama" (HF Llama names + our HybridConfig names), tensors in the Zebra-Llama layout.
* "zebra_reference": a Zebra-Llama reference directory: config.json (plain HF Llama) plus
  hybrid_config.json (reference names: mla_layers, kv_lora_rank, q_lora_rank, qk_rope_head_dim,
  qk_nope_head_dim, v_head_dim, use_full_kv_head, use_lora_layer_norm, rope_theta / rope_scaling of
  the MLA layers, layer_rank_list, d_inner, d_xb, ssm_cfg {ngroups, d_state, ...}).
* "mambainllama": config.json (plain HF Llama) plus mamba_config.json (Mamba2 variant; ssm_cfg with
  ngroups and d_state; headdim = d_state and nheads = ngroups as its constructor forces).

Tensors: model.layers.N.{mla|mamba|self_attn}.* per `names.HYBRID_MIXER_NAMES`. Every problem
(a config field we do not implement, a mixer whose tensors disagree with the config's layer type,
missing / unexpected / mis-shaped tensors) is collected into one CheckpointError.
"""

from __future__ import annotations

import json
import os
import re

from zebra_jax.config import HYBRID_CONFIG_JSON_FIELDS, ConfigError, HybridConfig, llama_config_from_hf
from zebra_jax.convert import names
from zebra_jax.convert.errors import CheckpointError
from zebra_jax.convert.hf import abstract_params, build_model, hf_checkpoint_tensors

FORMATS = ("zebra_hf", "zebra_reference", "mambainllama")

_OUR_BOOKKEEPING = ("auto_map", "model_type", "architectures")

_LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.(mla|mamba|self_attn)\.")
_PREFIX_KIND = {prefix: kind for kind, (prefix, _) in names.HYBRID_MIXER_NAMES.items()}


def _read_json(directory: str, name: str) -> dict:
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise CheckpointError(f"{directory}: missing {name}")
  try:
    with open(path) as f:
      out = json.load(f)
  except ValueError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(out, dict):
    raise CheckpointError(f"{path}: expected a JSON object, got {type(out).__name__}")
  return out


def detect_format(directory: str) -> str | None:
  """Which hybrid format `directory` holds, or None (a plain HF Llama or something else)."""
  cfg_path = os.path.join(directory, "config.json")
  if os.path.isfile(cfg_path):
    try:
      with open(cfg_path) as f:
        cfg = json.load(f)
    except ValueError:
      cfg = {}
    if isinstance(cfg, dict) and cfg.get("model_type") == "zebra_llama":
      return "zebra_hf"
  if os.path.isfile(os.path.join(directory, "mamba_config.json")):
    return "mambainllama"
  if os.path.isfile(os.path.join(directory, "hybrid_config.json")):
    return "zebra_reference"
  return None


# -- configs -------------------------------------------------------------------------------------
def _tupled(kw: dict) -> dict:
  for k in ("mla_layers", "attn_layers"):
    if k in kw and kw[k] is not None:
      kw[k] = tuple(int(i) for i in kw[k])
  if kw.get("mla_layer_ranks"):
    kw["mla_layer_ranks"] = {int(k): tuple(v) for k, v in kw["mla_layer_ranks"].items()}
  return kw


def _llama(hf: dict, where: str, **overrides):
  try:
    return llama_config_from_hf(hf, **overrides)
  except ConfigError as e:
    raise CheckpointError(f"{where}: {e}") from None


def _hybrid(base, fields: dict, where: str) -> HybridConfig:
  try:
    return HybridConfig.from_llama(base, **_tupled(fields))
  except (ConfigError, TypeError) as e:
    raise CheckpointError(f"{where}: the hybrid fields do not form a valid config: {e}") from None


def config_zebra_hf(directory: str, **overrides) -> HybridConfig:
  where = os.path.join(directory, "config.json")
  cfg = _read_json(directory, "config.json")
  hybrid = {k: cfg.pop(k) for k in HYBRID_CONFIG_JSON_FIELDS if k in cfg}
  if "attn_rope_scaling" in cfg:  # a config re-saved by transformers (our class stores it so)
    cfg.setdefault("rope_scaling", cfg.pop("attn_rope_scaling"))
  for k in _OUR_BOOKKEEPING:
    cfg.pop(k, None)
  base = _llama(cfg, where, **overrides)
  return _hybrid(base, hybrid, where)


# hybrid_config.json (reference names) -> HybridConfig fields; entries checked against config.json.
_REF_DIRECT = (
  "mla_layers",
  "attn_layers",
  "q_lora_rank",
  "kv_lora_rank",
  "qk_rope_head_dim",
  "qk_nope_head_dim",
  "v_head_dim",
  "use_full_kv_head",
  "use_lora_layer_norm",
  "qkv_rank_divisor",
  "d_inner",
  "d_xb",
  "gated_norm_eps",
)
_REF_RENAMED = {
  "rope_theta": "mla_rope_theta",
  "rope_scaling": "mla_rope_scaling",
  "layer_rank_list": "mla_layer_ranks",
}
_REF_CHECKED = {
  "d_model": "hidden_size",
  "n_layer": "num_hidden_layers",
  "intermediate_size": "intermediate_size",
  "rms_norm_eps": "rms_norm_eps",
  "vocab_size": "vocab_size",
}
_SSM_KEYS = {
  "expand",
  "ngroups",
  "d_state",
  "headdim",
  "d_conv",
  "chunk_size",
  "conv_bias",
  "repeat_kv_before_conv",
}


def _ssm_fields(ssm: dict, where: str, problems: list[str], *, d_inner) -> dict:
  if not isinstance(ssm, dict):
    problems.append(f"{where}: ssm_cfg must be an object, got {ssm!r}")
    return {}
  unknown = sorted(set(ssm) - _SSM_KEYS)
  if unknown:
    problems.append(f"{where}: ssm_cfg field(s) {unknown} are not implemented")
  if ssm.get("repeat_kv_before_conv"):
    problems.append(
      f"{where}: ssm_cfg.repeat_kv_before_conv=true is not implemented (the conv "
      "runs on the un-repeated x|B|C)"
    )
  if "ngroups" not in ssm or "d_state" not in ssm:
    problems.append(
      f"{where}: ssm_cfg has no ngroups / d_state: a Mamba1 (MambaInLlama v1) "
      "checkpoint, which is not implemented (only Mamba2 hybrids)"
    )
    return {}
  out = {
    "ngroups": int(ssm["ngroups"]),
    "d_state": int(ssm["d_state"]),
    # the reference constructors force headdim = d_state
    "headdim": int(ssm.get("headdim", ssm["d_state"])),
  }
  for k in ("d_conv", "chunk_size", "conv_bias"):
    if k in ssm:
      out[k] = ssm[k]
  return out


def config_zebra_reference(directory: str, **overrides) -> HybridConfig:
  where = os.path.join(directory, "hybrid_config.json")
  base = _llama(_read_json(directory, "config.json"), os.path.join(directory, "config.json"), **overrides)
  ref = _read_json(directory, "hybrid_config.json")
  problems: list[str] = []
  fields = {k: ref[k] for k in _REF_DIRECT if ref.get(k) is not None}
  fields.update({new: ref[old] for old, new in _REF_RENAMED.items() if ref.get(old) is not None})
  for k, ours in _REF_CHECKED.items():
    if ref.get(k) is not None and ref[k] != getattr(base, ours):
      problems.append(f"{where}: {k}={ref[k]} disagrees with config.json {ours}={getattr(base, ours)}")
  if ref.get("hidden_act") not in (None, "silu"):
    problems.append(f"{where}: hidden_act={ref['hidden_act']!r} (only silu is implemented)")
  if "ssm_cfg" in ref:
    fields.update(_ssm_fields(ref["ssm_cfg"], where, problems, d_inner=ref.get("d_inner")))
  known = set(_REF_DIRECT) | set(_REF_RENAMED) | set(_REF_CHECKED) | {"ssm_cfg", "hidden_act"}
  unknown = sorted(set(ref) - known)
  if unknown:
    problems.append(f"{where}: field(s) {unknown} are not implemented")
  if problems:
    raise CheckpointError("hybrid config cannot be read faithfully:\n  - " + "\n  - ".join(problems))
  return _hybrid(base, fields, where)


def config_mambainllama(directory: str, **overrides) -> HybridConfig:
  where = os.path.join(directory, "mamba_config.json")
  base = _llama(_read_json(directory, "config.json"), os.path.join(directory, "config.json"), **overrides)
  mc = _read_json(directory, "mamba_config.json")
  problems: list[str] = []
  for k, ours in _REF_CHECKED.items():
    if mc.get(k) is not None and mc[k] != getattr(base, ours):
      problems.append(f"{where}: {k}={mc[k]} disagrees with config.json {ours}={getattr(base, ours)}")
  if mc.get("hidden_act") not in (None, "silu"):
    problems.append(f"{where}: hidden_act={mc['hidden_act']!r} (only silu is implemented)")
  unknown = sorted(set(mc) - set(_REF_CHECKED) - {"ssm_cfg", "hidden_act", "d_inner", "d_xb", "attn_layers"})
  if unknown:
    problems.append(f"{where}: field(s) {unknown} are not implemented")
  if "attn_layers" not in mc:
    problems.append(f"{where}: no attn_layers (the only record of which layers are attention)")
  ssm = mc.get("ssm_cfg") or {}
  fields = _ssm_fields(ssm, where, problems, d_inner=mc.get("d_inner"))
  expand = ssm.get("expand", 1) if isinstance(ssm, dict) else 1
  fields["d_inner"] = mc.get("d_inner") or expand * base.hidden_size  # null means expand * d_model
  if mc.get("d_xb") is not None:
    fields["d_xb"] = mc["d_xb"]
  fields["attn_layers"] = mc.get("attn_layers") or ()
  if problems:
    raise CheckpointError("MambaInLlama config cannot be read faithfully:\n  - " + "\n  - ".join(problems))
  return _hybrid(base, fields, where)


_CONFIG_READERS = {
  "zebra_hf": config_zebra_hf,
  "zebra_reference": config_zebra_reference,
  "mambainllama": config_mambainllama,
}


def load_hybrid_config(directory: str, fmt: str | None = None, **overrides) -> HybridConfig:
  fmt = fmt or detect_format(directory)
  if fmt not in _CONFIG_READERS:
    raise CheckpointError(f"{directory}: not a hybrid checkpoint directory (format {fmt!r})")
  return _CONFIG_READERS[fmt](directory, **overrides)


# -- tensors -------------------------------------------------------------------------------------
def check_tensors(config: HybridConfig, tensors, source: str) -> None:
  """One CheckpointError naming every tensor problem, with layer-type-aware torch names."""

  kinds = config.layer_types()
  expected = {}
  for path, sds in abstract_params(config)[3].items():
    name, tf = names.torch_name(path, kinds)
    expected[name] = names.INVERSE[tf][1](tuple(sds.shape))
  wrong_kind: dict[int, str] = {}
  unexpected, misshaped = [], []
  for name, t in tensors.items():
    if names.is_harmless_extra(name):
      continue
    if name == names.HF_TIED_HEAD and config.tie_word_embeddings:
      continue  # build_model checks that it equals the embedding
    m = _LAYER_TENSOR.match(name)
    if m:
      i, kind = int(m.group(1)), _PREFIX_KIND[m.group(2)]
      if i < len(kinds) and kinds[i] != kind:
        wrong_kind[i] = (
          f"layer {i} holds {m.group(2)}.* ({kind}) tensors but the config makes it "
          f"{kinds[i]!r} (mla_layers={list(config.mla_layers)}, "
          f"attn_layers={list(config.attn_layers)})"
        )
        continue
    if name not in expected:
      unexpected.append(f"{name} {tuple(t.shape)}")
    elif tuple(t.shape) != expected[name]:
      misshaped.append(f"{name}: shape {tuple(t.shape)}, config needs {expected[name]}")
  missing = []
  for n in expected:
    m = _LAYER_TENSOR.match(n)
    if n not in tensors and not (m and int(m.group(1)) in wrong_kind):  # else reported above
      missing.append(n)
  parts = []
  for title, items in (
    ("layer type mismatch", [wrong_kind[i] for i in sorted(wrong_kind)]),
    ("missing tensor(s)", missing),
    ("unexpected tensor(s)", unexpected),
    ("wrong shape", misshaped),
  ):
    if items:
      parts.append(f"{len(items)} {title}:\n    " + "\n    ".join(items))
  if parts:
    raise CheckpointError(
      f"checkpoint {source} does not match its hybrid config ({config.num_hidden_layers} layers: "
      f"{_pattern(kinds)}, hidden {config.hidden_size}, vocab {config.vocab_size}):\n  " + "\n  ".join(parts)
    )


def _pattern(kinds) -> str:
  short = {"attention": "A", "mla": "L", "mamba2": "M"}
  return "".join(short[k] for k in kinds) + " (A attention, L MLA, M Mamba2)"


def from_hybrid_directory(
  directory: str,
  fmt: str | None = None,
  *,
  dtype: str = "float32",
  param_dtype: str | None = None,
  impl: str = "auto",
  progress: bool = False,
):
  """Loads a hybrid checkpoint directory (any of FORMATS) as a CausalLM."""

  config = load_hybrid_config(directory, fmt, dtype=dtype, param_dtype=param_dtype or dtype, impl=impl)
  tensors = hf_checkpoint_tensors(directory)
  check_tensors(config, tensors, directory)
  return build_model(config, tensors, source=directory, rules=names.HYBRID_TO_NNX, progress=progress)


__all__ = [
  "FORMATS",
  "detect_format",
  "load_hybrid_config",
  "from_hybrid_directory",
  "check_tensors",
  "config_zebra_hf",
  "config_zebra_reference",
  "config_mambainllama",
]
