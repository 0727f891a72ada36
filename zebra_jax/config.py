"""Model configurations: the Llama teacher and the MLA / Mamba2 hybrid built from it.

`LlamaConfig` mirrors the Hugging Face Llama config field names so that a `config.json` maps onto it
one to one; `HybridConfig` adds the Zebra-Llama / MambaInLlama fields with the reference code's names
(`mla_layers`, `kv_lora_rank`, `q_lora_rank`, `qk_rope_head_dim`, `d_state`, `headdim`, `ngroups`, ...).
Both validate eagerly and raise `ConfigError` naming the field, so an impossible config fails before
anything is allocated or compiled.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Sequence

MixerType = Literal["attention", "mla", "mamba2"]
_DTYPES = ("float32", "bfloat16", "float16")
_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
CLASS_KEY = "zebra_jax_class"  # which config class a saved config.json holds


class ConfigError(ValueError):
  """A configuration that cannot be built. The message names the offending field(s)."""


def _check(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


def _validate_rope_scaling(name: str, scaling: dict | None) -> None:
  """Rope scaling dicts use the HF keys; anything we would silently ignore is refused."""
  if scaling is None:
    return
  _check(isinstance(scaling, dict), f"{name} must be a dict or None, got {type(scaling).__name__}")
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  _check(
    rope_type in _ROPE_TYPES,
    f"{name}: rope_type={rope_type!r} is not implemented (supported: {', '.join(_ROPE_TYPES)})",
  )
  allowed = {
    "default": {"rope_type", "type", "rope_theta"},
    "linear": {"rope_type", "type", "factor", "rope_theta"},
    "llama3": {
      "rope_type",
      "type",
      "factor",
      "low_freq_factor",
      "high_freq_factor",
      "original_max_position_embeddings",
      "rope_theta",
    },
    "yarn": {
      "rope_type",
      "type",
      "factor",
      "original_max_position_embeddings",
      "beta_fast",
      "beta_slow",
      "mscale",
      "mscale_all_dim",
      "attention_factor",
      "truncate",
      "rope_theta",
    },
  }[rope_type]
  unknown = sorted(set(scaling) - allowed)
  _check(not unknown, f"{name}: field(s) {unknown} are not implemented for rope_type={rope_type!r}")
  if rope_type != "default":
    _check(
      float(scaling.get("factor", 0)) >= 1.0,
      f"{name}: factor must be >= 1 for rope_type={rope_type!r}, got {scaling.get('factor')}",
    )
  if rope_type == "llama3":
    for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
      _check(k in scaling, f"{name}: rope_type='llama3' needs {k!r}")


# What a rematerialised decoder block keeps from its forward pass for the backward pass
# (`train.remat_policy`; models/hybrid.py maps each name to a jax.checkpoint policy):
#   "full": only the block's input; everything inside is recomputed (least memory);
#   "dots": also the outputs of its matmuls without batch dimensions (the projections), so the
#           backward recomputes only the elementwise work and the attention / scan in between.
REMAT_POLICIES = ("full", "dots")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """A Llama decoder (HF field names). `head_dim=None` means hidden_size // num_attention_heads."""

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: dict | None = None
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | list[int] | None = 2
  pad_token_id: int | None = None
  # Compute dtype of activations and parameter storage dtype.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Implementation of the hot ops: "reference" (pure jnp), "pallas", or "auto" (see zebra_jax.ops).
  impl: str = "auto"

  def __post_init__(self):
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      _check(
        self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0,
        f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
        f"{self.num_attention_heads}; set head_dim explicitly",
      )
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    self._validate_llama()

  def _validate_llama(self):
    for f in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "num_key_value_heads",
      "head_dim",
    ):
      v = getattr(self, f)
      _check(isinstance(v, int) and v > 0, f"{f} must be a positive int, got {v!r}")
    _check(
      self.num_attention_heads % self.num_key_value_heads == 0,
      f"num_attention_heads={self.num_attention_heads} is not a multiple of "
      f"num_key_value_heads={self.num_key_value_heads}",
    )
    _check(self.head_dim % 2 == 0, f"head_dim={self.head_dim} must be even for RoPE")
    # a JSON string "false" is truthy: only a real boolean says what is tied
    _check(
      isinstance(self.tie_word_embeddings, bool),
      f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}",
    )
    _check(self.rms_norm_eps > 0, f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
    _check(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
    _validate_rope_scaling("rope_scaling", self.rope_scaling)
    _check(self.dtype in _DTYPES, f"dtype={self.dtype!r} must be one of {_DTYPES}")
    _check(self.param_dtype in _DTYPES, f"param_dtype={self.param_dtype!r} must be one of {_DTYPES}")
    _check(
      self.impl in ("auto", "reference", "pallas"),
      f"impl={self.impl!r} must be 'auto', 'reference' or 'pallas'",
    )

  def __hash__(self):  # rope_scaling is a dict: hash the canonical JSON so configs can be static
    return hash(self.to_json())

  # -- derived ----------------------------------------------------------------------------------
  @property
  def num_layers(self) -> int:
    return self.num_hidden_layers

  def layer_types(self) -> tuple[MixerType, ...]:
    return ("attention",) * self.num_hidden_layers

  def replace(self, **changes) -> "LlamaConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    # Not "__class__" (the key of older files, still read): transformers' AutoTokenizer reads a
    # saved model's config.json and cannot take that key.
    d[CLASS_KEY] = type(self).__name__
    return d

  @staticmethod
  def from_dict(d: dict) -> "LlamaConfig":
    _check(isinstance(d, dict), f"a config must be a JSON object of fields, got a {type(d).__name__}")
    missing = [k for k in _SHAPE_FIELDS if k not in d]  # every saved config has them
    _check(not missing, f"missing field(s) {missing}")
    d = dict(d)
    name = d.pop(CLASS_KEY, None) or d.pop("__class__", "LlamaConfig")
    d.pop("__class__", None)
    cls = {"LlamaConfig": LlamaConfig, "HybridConfig": HybridConfig}[name]
    for k in ("mla_layers", "attn_layers"):
      if k in d and d[k] is not None:
        d[k] = tuple(d[k])
    if d.get("mla_layer_ranks"):
      d["mla_layer_ranks"] = {int(k): tuple(v) for k, v in d["mla_layer_ranks"].items()}
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @staticmethod
  def from_json(text: str) -> "LlamaConfig":
    return LlamaConfig.from_dict(json.loads(text))


# The shape of a Llama: no default is right for a checkpoint that leaves one out.
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

# HF config.json keys that carry no modelling information (bookkeeping, generation defaults).
_HF_IGNORED_KEYS = frozenset(
  {
    "architectures",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "use_cache",
    "initializer_range",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "is_decoder",
    "is_encoder_decoder",
    "tokenizer_class",
    "bad_words_ids",
    "begin_suppress_tokens",
    "chunk_size_feed_forward",
    "decoder_start_token_id",
    "diversity_penalty",
    "do_sample",
    "early_stopping",
    "max_length",
    "min_length",
    "no_repeat_ngram_size",
    "num_beams",
    "num_return_sequences",
    "repetition_penalty",
    "temperature",
    "top_k",
    "top_p",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "prefix",
    "sep_token_id",
    "task_specific_params",
    "tf_legacy_loss",
    "torchscript",
    "use_bfloat16",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "pruned_heads",
    "tie_encoder_decoder",
    "typical_p",
    "length_penalty",
    "num_beam_groups",
    "exponential_decay_length_penalty",
    "remove_invalid_values",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "output_scores",
    "return_dict_in_generate",
    "suppress_tokens",
    "encoder_no_repeat_ngram_size",
    "quantization_config",
    "layer_types",
  }
)


def llama_config_from_hf(hf: dict, **overrides) -> LlamaConfig:
  """Builds a LlamaConfig from an HF `config.json` dict, refusing by name whatever it does not implement.

  Accepts both the transformers<5 layout (`rope_theta` + `rope_scaling`) and the 5.x one
  (`rope_parameters`).
  """
  _check(isinstance(hf, dict), f"a config must be a JSON object of fields, got a {type(hf).__name__}")
  hf = dict(hf)
  problems: list[str] = []
  missing = [k for k in _SHAPE_FIELDS if hf.get(k) is None and k not in overrides]
  if missing:
    problems.append(f"missing field(s) {missing} (a Llama config needs them)")
  model_type = hf.get("model_type", "llama")
  if model_type not in ("llama", "mistral") or (model_type == "mistral" and hf.get("sliding_window")):
    problems.append(f"model_type={model_type!r} (only 'llama' is implemented)")

  def refuse_unless(key, ok_values, why=""):
    if key in hf and hf[key] not in ok_values:
      problems.append(f"{key}={hf[key]!r}{why}")

  refuse_unless("hidden_act", ("silu",), " (only SwiGLU with silu is implemented)")
  refuse_unless("attention_bias", (False, None), " (attention biases are not implemented)")
  refuse_unless("mlp_bias", (False, None), " (MLP biases are not implemented)")
  refuse_unless("pretraining_tp", (1, None), " (tensor-parallel split matmuls are not implemented)")
  refuse_unless("attention_dropout", (0, 0.0, None), " (dropout is not implemented)")
  refuse_unless("sliding_window", (None,), " (sliding-window attention is not implemented)")
  refuse_unless("use_sliding_window", (False, None), " (sliding-window attention is not implemented)")

  rope_theta = hf.get("rope_theta")
  rope_scaling = hf.get("rope_scaling")
  if "rope_parameters" in hf and hf["rope_parameters"] is not None:
    params = dict(hf["rope_parameters"])
    rope_theta = params.pop("rope_theta", rope_theta)
    if params.get("rope_type", params.get("type", "default")) == "default":
      extra = sorted(set(params) - {"rope_type", "type"})
      if extra:
        problems.append(f"rope_parameters fields {extra} are not implemented for rope_type 'default'")
      rope_scaling = None
    else:
      rope_scaling = params
  if rope_scaling is not None:
    try:
      _validate_rope_scaling("rope_scaling", rope_scaling)
    except ConfigError as e:
      problems.append(str(e))

  handled = {
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "pretraining_tp",
    "attention_dropout",
    "sliding_window",
    "use_sliding_window",
  }
  unknown = sorted(k for k in hf if k not in handled and k not in _HF_IGNORED_KEYS)
  if unknown:
    problems.append(f"unsupported config field(s) {unknown}")
  if len(problems) == 1:
    raise ConfigError(f"HF config cannot be converted faithfully: {problems[0]}")
  if problems:
    raise ConfigError("HF config cannot be converted faithfully:\n  - " + "\n  - ".join(problems))

  kw: dict[str, Any] = dict(
    vocab_size=hf["vocab_size"],
    hidden_size=hf["hidden_size"],
    intermediate_size=hf["intermediate_size"],
    num_hidden_layers=hf["num_hidden_layers"],
    num_attention_heads=hf["num_attention_heads"],
    num_key_value_heads=hf.get("num_key_value_heads"),
    head_dim=hf.get("head_dim"),
    rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
    rope_theta=float(rope_theta or 10000.0),
    rope_scaling=rope_scaling,
    max_position_embeddings=hf.get("max_position_embeddings", 2048),
    tie_word_embeddings=hf.get("tie_word_embeddings", False),  # checked: a real boolean
    bos_token_id=hf.get("bos_token_id"),
    eos_token_id=hf.get("eos_token_id"),
    pad_token_id=hf.get("pad_token_id"),
  )
  kw.update(overrides)
  return LlamaConfig(**kw)


def _sorted_unique_layers(name: str, layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
  if layers is None:
    return ()
  if isinstance(layers, (str, bytes)):
    _check(False, f"{name} must be a sequence of layer indices, got the string {layers!r}")
  frac = [i for i in layers if isinstance(i, bool) or not float(i).is_integer()]
  _check(not frac, f"{name} has indices {frac} that are not whole layer numbers")
  layers = tuple(int(i) for i in layers)
  bad = [i for i in layers if not 0 <= i < n_layers]
  _check(not bad, f"{name} has layer indices {bad} out of range [0, {n_layers})")
  dup = sorted({i for i in layers if layers.count(i) > 1})
  _check(not dup, f"{name} lists layers {dup} more than once")
  return tuple(sorted(layers))


@dataclasses.dataclass(frozen=True)
class HybridConfig(LlamaConfig):
  """A Llama-shaped decoder whose mixers are MLA, Mamba2 or GQA attention per layer.

  Layer `i` is MLA if `i in mla_layers`, GQA attention if `i in attn_layers`, Mamba2 otherwise. So a
  Zebra model sets `mla_layers`; a MambaInLlama model sets `attn_layers`; X-EcoMLA sets every layer MLA.
  Unset dimensions default to the Zebra recipe: d_r = d_n = head_dim/2, d_v = head_dim,
  d_state = headdim = head_dim, ngroups = num_attention_heads, d_inner = H*head_dim,
  d_xb = n_kv*head_dim.
  """

  mla_layers: tuple[int, ...] = ()
  attn_layers: tuple[int, ...] = ()
  # --- MLA ---
  q_lora_rank: int | None = None
  kv_lora_rank: int | None = None
  qk_rope_head_dim: int | None = None
  qk_nope_head_dim: int | None = None
  v_head_dim: int | None = None
  use_full_kv_head: bool = False
  use_lora_layer_norm: bool = False
  lora_layer_norm_eps: float = 1e-6
  mla_rope_theta: float | None = None
  mla_rope_scaling: dict | None = None
  qkv_rank_divisor: int = 8
  # Per-layer (q_lora_rank, kv_lora_rank) overrides (X-EcoMLA dynamic rank).
  mla_layer_ranks: dict | None = None
  # --- Mamba2 ---
  d_state: int | None = None
  headdim: int | None = None
  ngroups: int | None = None
  d_conv: int = 4
  chunk_size: int = 256
  d_inner: int | None = None
  d_xb: int | None = None
  conv_bias: bool = True
  gated_norm_eps: float = 1e-5
  dt_min: float = 1e-3
  dt_max: float = 1e-1
  dt_init_floor: float = 1e-4
  A_init_range: tuple[float, float] = (1.0, 16.0)

  def __post_init__(self):
    super().__post_init__()
    L, H, dh = self.num_hidden_layers, self.num_attention_heads, self.head_dim
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("mla_layers", _sorted_unique_layers("mla_layers", self.mla_layers, L))
    set_("attn_layers", _sorted_unique_layers("attn_layers", self.attn_layers, L))
    both = sorted(set(self.mla_layers) & set(self.attn_layers))
    _check(not both, f"layers {both} are in both mla_layers and attn_layers")
    set_("A_init_range", tuple(self.A_init_range))
    # MLA defaults (Zebra: d_r = d_n = d_h/2, d_v = d_h).
    if self.qk_rope_head_dim is None:
      set_("qk_rope_head_dim", dh // 2)
    if self.qk_nope_head_dim is None:
      set_("qk_nope_head_dim", dh - self.qk_rope_head_dim)
    if self.v_head_dim is None:
      set_("v_head_dim", dh)
    if self.mla_rope_theta is None:
      set_("mla_rope_theta", self.rope_theta)
    # Mamba2 defaults (Zebra: ngroups = nheads = H, headdim = d_state = d_h).
    if self.d_state is None:
      set_("d_state", dh)
    if self.headdim is None:
      set_("headdim", dh)
    if self.d_inner is None:
      set_("d_inner", H * dh)
    if self.d_xb is None:
      set_("d_xb", self.num_key_value_heads * dh)
    if self.ngroups is None:
      set_("ngroups", self.d_inner // self.d_state if self.d_inner % self.d_state == 0 else H)
    if self.mla_layer_ranks:
      set_("mla_layer_ranks", {int(k): tuple(v) for k, v in self.mla_layer_ranks.items()})
    self._validate_hybrid()

  def _validate_hybrid(self):
    if self.mla_layers:
      for f in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
        v = getattr(self, f)
        _check(isinstance(v, int) and v >= 0, f"{f} must be a non-negative int, got {v!r}")
      _check(
        self.qk_rope_head_dim % 2 == 0,
        f"qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates pairs)",
      )
      _check(self.qk_rope_head_dim + self.qk_nope_head_dim > 0, "qk head dim d_nope + d_rope is 0")
      _check(self.v_head_dim > 0, f"v_head_dim must be > 0, got {self.v_head_dim}")
      _check(self.kv_lora_rank is not None, "kv_lora_rank must be set when mla_layers is non-empty")
      _validate_rope_scaling("mla_rope_scaling", self.mla_rope_scaling)
      unknown = sorted(set(self.mla_layer_ranks or {}) - set(self.mla_layers))
      _check(not unknown, f"mla_layer_ranks has layers {unknown} that are not in mla_layers")
      for i in self.mla_layers:
        self._validate_mla_ranks(i, *self.mla_ranks(i))
    if self.mamba_layers:
      for f in ("d_state", "headdim", "ngroups", "d_conv", "chunk_size", "d_inner", "d_xb"):
        v = getattr(self, f)
        _check(isinstance(v, int) and v > 0, f"{f} must be a positive int, got {v!r}")
      _check(
        self.d_inner % self.headdim == 0,
        f"d_inner={self.d_inner} is not a multiple of headdim={self.headdim}",
      )
      _check(
        self.d_inner == self.ngroups * self.d_state,
        f"d_inner={self.d_inner} must equal ngroups*d_state={self.ngroups}*{self.d_state} "
        "(C has one d_state-vector per group)",
      )
      _check(
        self.d_xb % self.headdim == 0,
        f"d_xb={self.d_xb} is not a multiple of headdim={self.headdim} (x is split in kv heads)",
      )
      _check(
        self.d_xb % self.d_state == 0,
        f"d_xb={self.d_xb} is not a multiple of d_state={self.d_state} (B is split in groups)",
      )
      nheads, x_groups, b_groups = self.mamba_nheads, self.d_xb // self.headdim, self.d_xb // self.d_state
      _check(
        nheads % x_groups == 0,
        f"Mamba2 heads={nheads} (d_inner/headdim) are not a multiple of the {x_groups} x groups "
        "(d_xb/headdim)",
      )
      _check(
        self.ngroups % b_groups == 0,
        f"ngroups={self.ngroups} is not a multiple of the {b_groups} B groups (d_xb/d_state)",
      )
      _check(
        nheads % self.ngroups == 0, f"Mamba2 heads={nheads} are not a multiple of ngroups={self.ngroups}"
      )
      _check(
        0 < self.A_init_range[0] <= self.A_init_range[1],
        f"A_init_range={self.A_init_range} must satisfy 0 < lo <= hi",
      )
      _check(0 < self.dt_min <= self.dt_max, f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

  def __hash__(self):
    return hash(self.to_json())

  def mla_ranks(self, layer: int) -> tuple[int | None, int]:
    """(q_lora_rank, kv_lora_rank) of an MLA layer (per-layer overrides first)."""
    if self.mla_layer_ranks and layer in self.mla_layer_ranks:
      r_q, r_kv = self.mla_layer_ranks[layer]
      return (None if r_q is None else int(r_q)), int(r_kv)
    return self.q_lora_rank, self.kv_lora_rank

  def _validate_mla_ranks(self, layer: int, r_q: int | None, r_kv: int):
    d, H, div = self.hidden_size, self.num_attention_heads, self.qkv_rank_divisor
    d_qk = self.qk_nope_head_dim + self.qk_rope_head_dim
    where = f"MLA layer {layer}"
    if r_q is not None:
      max_q = min(d, H * d_qk)
      _check(
        0 < r_q <= max_q,
        f"{where}: q_lora_rank={r_q} must be in [1, {max_q}] = "
        f"min(hidden_size={d}, heads*(d_nope+d_rope)={H * d_qk})",
      )
      _check(r_q % div == 0, f"{where}: q_lora_rank={r_q} is not a multiple of qkv_rank_divisor={div}")
    max_kv = min(d, 2 * self.mla_kv_heads * self.head_dim)
    _check(
      0 < r_kv <= max_kv,
      f"{where}: kv_lora_rank={r_kv} must be in [1, {max_kv}] = "
      f"min(hidden_size={d}, rank of [W_K; W_V]={2 * self.mla_kv_heads * self.head_dim})",
    )
    _check(r_kv % div == 0, f"{where}: kv_lora_rank={r_kv} is not a multiple of qkv_rank_divisor={div}")

  # -- derived ----------------------------------------------------------------------------------
  def layer_types(self) -> tuple[MixerType, ...]:
    mla, attn = set(self.mla_layers), set(self.attn_layers)
    return tuple(
      "mla" if i in mla else "attention" if i in attn else "mamba2" for i in range(self.num_hidden_layers)
    )

  @property
  def mamba_layers(self) -> tuple[int, ...]:
    taken = set(self.mla_layers) | set(self.attn_layers)
    return tuple(i for i in range(self.num_hidden_layers) if i not in taken)

  @property
  def mla_kv_heads(self) -> int:
    """Heads produced by kv_b_proj: n_kv (GQA sharing) or all H (`use_full_kv_head`)."""
    return self.num_attention_heads if self.use_full_kv_head else self.num_key_value_heads

  @property
  def qk_head_dim(self) -> int:
    return self.qk_nope_head_dim + self.qk_rope_head_dim

  @property
  def mamba_nheads(self) -> int:
    return self.d_inner // self.headdim

  @property
  def mamba_in_proj_dim(self) -> int:
    """Rows of in_proj: [z | x | B | C | dt] = d_inner + d_xb + d_xb + d_inner + nheads."""
    return 2 * self.d_inner + 2 * self.d_xb + self.mamba_nheads

  @property
  def mamba_conv_dim(self) -> int:
    """Channels of the depthwise conv: the un-repeated [x | B | C]."""
    return 2 * self.d_xb + self.d_inner

  @staticmethod
  def from_llama(base: LlamaConfig, **fields) -> "HybridConfig":
    """A hybrid config on top of a teacher's LlamaConfig (all Llama fields copied)."""
    kw = {f.name: getattr(base, f.name) for f in dataclasses.fields(LlamaConfig)}
    kw.update(fields)
    return HybridConfig(**kw)

  def teacher_config(self) -> LlamaConfig:
    """The LlamaConfig this hybrid was built from (the Llama fields alone)."""
    return LlamaConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LlamaConfig)})


# The HybridConfig fields a saved hybrid's config.json holds under their own names, next to the
# Llama ones: export (export/hf_hybrid.py) writes them, the import (convert/hybrid_import.py) reads them.
HYBRID_CONFIG_JSON_FIELDS = (
  "mla_layers",
  "attn_layers",
  "q_lora_rank",
  "kv_lora_rank",
  "qk_rope_head_dim",
  "qk_nope_head_dim",
  "v_head_dim",
  "use_full_kv_head",
  "use_lora_layer_norm",
  "lora_layer_norm_eps",
  "mla_rope_theta",
  "mla_rope_scaling",
  "mla_layer_ranks",
  "d_state",
  "headdim",
  "ngroups",
  "d_conv",
  "chunk_size",
  "d_inner",
  "d_xb",
  "conv_bias",
  "gated_norm_eps",
)


def is_hybrid(config: LlamaConfig) -> bool:
  return isinstance(config, HybridConfig)
