"""Named model configurations: public teachers and the reference hybrids built from them.

Teachers (`LlamaConfig`, the public Hugging Face `config.json` shapes):
  llama-3.2-1b, llama-3.2-1b-instruct, llama-3.2-3b, llama-3.2-3b-instruct,
  llama-3.1-8b, llama-3.1-8b-instruct, smollm2-135m, smollm2-135m-instruct

Zebra-Llama hybrids (`HybridConfig`, MLA + Mamba2; reference section 9, on the -Instruct teacher):
  zebra_1b_8mla8m2, zebra_1b_6mla10m2, zebra_1b_4mla12m2,
  zebra_3b_14mla14m2, zebra_3b_8mla20m2, zebra_3b_6mla22m2,
  zebra_8b_16mla16m2, zebra_8b_8mla24m2,
  zebra_smollm2_135m_9mla21m2 (the README main job's student: configs/smollm2_135m.py, run 8's layers)

X-EcoMLA (every layer MLA, `use_full_kv_head=True`):
  x_ecomla_1b_r64 (r_kv 64, r_q 1424), x_ecomla_3b_r96 (r_kv 96, r_q 2048),
  x_ecomla_smollm2_135m_r16 (the SmolLM_135M config's ranks on SmolLM2-135M; not a released model)

MambaInLlama (Mamba2 + kept GQA attention, `mamba_in_llama(base, attn_every)`):
  mamba2_in_llama_8b_attn50, mamba2_in_llama_8b_attn25, mamba2_in_llama_8b_attn12,
  mamba2_in_llama_3b_attn50

`get_preset(name)` returns the config (names are case-insensitive); `PRESETS` maps every name to a
zero-argument builder. Presets keep the LlamaConfig default dtypes (float32); choose the compute /
storage dtype with `.replace(dtype=..., param_dtype=...)`.
"""

from __future__ import annotations

from typing import Callable

from zebra_jax.config import ConfigError, HybridConfig, LlamaConfig

# ------------------------------------------------------------------------------------------------
# Teachers
# ------------------------------------------------------------------------------------------------
_LLAMA3_EOS_INSTRUCT = (128001, 128008, 128009)  # <|end_of_text|>, <|eom_id|>, <|eot_id|>


def _llama3_rope(factor: float) -> dict:
  return {
    "rope_type": "llama3",
    "factor": float(factor),
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
  }


def _llama3(*, layers, hidden, heads, head_dim, ffn, tied, rope_factor, instruct) -> LlamaConfig:
  return LlamaConfig(
    vocab_size=128256,
    hidden_size=hidden,
    intermediate_size=ffn,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=8,
    head_dim=head_dim,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=_llama3_rope(rope_factor),
    max_position_embeddings=131072,
    tie_word_embeddings=tied,
    bos_token_id=128000,
    eos_token_id=_LLAMA3_EOS_INSTRUCT if instruct else 128001,
    pad_token_id=None,
  )


def llama_3_2_1b(instruct: bool = True) -> LlamaConfig:
  return _llama3(
    layers=16, hidden=2048, heads=32, head_dim=64, ffn=8192, tied=True, rope_factor=32, instruct=instruct
  )


def llama_3_2_3b(instruct: bool = True) -> LlamaConfig:
  return _llama3(
    layers=28, hidden=3072, heads=24, head_dim=128, ffn=8192, tied=True, rope_factor=32, instruct=instruct
  )


def llama_3_1_8b(instruct: bool = True) -> LlamaConfig:
  return _llama3(
    layers=32, hidden=4096, heads=32, head_dim=128, ffn=14336, tied=False, rope_factor=8, instruct=instruct
  )


def smollm2_135m(instruct: bool = True) -> LlamaConfig:
  # Base: bos = eos = 0 (<|endoftext|>); Instruct: bos 1 (<|im_start|>), eos = pad = 2 (<|im_end|>).
  return LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    rope_scaling=None,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    bos_token_id=1 if instruct else 0,
    eos_token_id=2 if instruct else 0,
    pad_token_id=2 if instruct else None,
  )


# ------------------------------------------------------------------------------------------------
# Zebra-Llama
# ------------------------------------------------------------------------------------------------
def zebra_mla_rope_scaling(factor: float | None) -> dict | None:
  """The YaRN dict train_distill.py builds for MLA rope dims (class defaults mscale 1, all_dim 0);
  None: plain RoPE (a teacher whose context the student keeps, as SmolLM2's 8k)."""
  if factor is None:
    return None
  return {
    "rope_type": "yarn",
    "factor": float(factor),
    "original_max_position_embeddings": 8192,
    "beta_fast": 32,
    "beta_slow": 1,
  }


def zebra(
  base: LlamaConfig, mla_layers, *, q_lora_rank: int, kv_lora_rank: int, yarn_factor: float | None, **fields
) -> HybridConfig:
  """A Zebra-Llama hybrid on `base`: MLA on `mla_layers`, Mamba2 elsewhere.

  MLA: d_r = d_n = d_h/2, d_v = d_h, kv_b with the teacher's n_kv heads (use_full_kv_head False),
  no lora layer norms, YaRN on the rope dims. Mamba2: d_state = headdim = d_h, ngroups = nheads = H,
  d_inner = d, d_xb = n_kv*d_h, d_conv 4, conv bias.
  """
  dh = base.head_dim
  kw = dict(
    mla_layers=tuple(mla_layers),
    q_lora_rank=q_lora_rank,
    kv_lora_rank=kv_lora_rank,
    qk_rope_head_dim=dh // 2,
    qk_nope_head_dim=dh // 2,
    v_head_dim=dh,
    use_full_kv_head=False,
    use_lora_layer_norm=False,
    mla_rope_scaling=zebra_mla_rope_scaling(yarn_factor),
    d_state=dh,
    headdim=dh,
    ngroups=base.num_attention_heads,
    d_inner=base.hidden_size,
    d_xb=base.num_key_value_heads * dh,
    d_conv=4,
    conv_bias=True,
  )
  kw.update(fields)
  return HybridConfig.from_llama(base, **kw)


_EVEN = lambda n: tuple(range(0, n, 2))

# the Zebra presets (PRESETS below); the ILD benchmark reads a preset's teacher builder from it
ZEBRA_TABLE = {
  # name: (teacher builder, mla_layers, r_q, r_kv, yarn factor)
  "zebra_1b_8mla8m2": (llama_3_2_1b, _EVEN(16), 1344, 128, 32),
  "zebra_1b_6mla10m2": (llama_3_2_1b, (0, 2, 5, 8, 11, 14), 1344, 128, 32),
  "zebra_1b_4mla12m2": (llama_3_2_1b, (0, 5, 10, 14), 1344, 128, 32),
  "zebra_3b_14mla14m2": (llama_3_2_3b, _EVEN(28), 1536, 128, 32),
  "zebra_3b_8mla20m2": (llama_3_2_3b, (0, 3, 7, 10, 14, 18, 22, 26), 1536, 128, 32),
  "zebra_3b_6mla22m2": (llama_3_2_3b, (0, 5, 10, 16, 21, 26), 1536, 128, 32),
  "zebra_8b_16mla16m2": (llama_3_1_8b, _EVEN(32), 2048, 160, 8),
  # The README says r_kv 128 for this model; its config (and the published 2.73% KV) need 160.
  "zebra_8b_8mla24m2": (llama_3_1_8b, (0, 4, 8, 12, 16, 20, 25, 30), 2048, 160, 8),
  # configs/smollm2_135m.py's student (X-EcoMLA's SmolLM-135M ranks, plain RoPE) with run 8's
  # SMART layers: the shapes of the README main job, for `scripts/bench.py train`
  "zebra_smollm2_135m_9mla21m2": (smollm2_135m, (0, 3, 6, 9, 12, 16, 20, 24, 28), 400, 16, None),
}


def _zebra_preset(name: str) -> HybridConfig:
  base_fn, layers, r_q, r_kv, factor = ZEBRA_TABLE[name]
  return zebra(base_fn(instruct=True), layers, q_lora_rank=r_q, kv_lora_rank=r_kv, yarn_factor=factor)


# ------------------------------------------------------------------------------------------------
# X-EcoMLA
# ------------------------------------------------------------------------------------------------
def x_ecomla(
  base: LlamaConfig, *, q_lora_rank: int, kv_lora_rank: int, yarn_factor: float | None, **fields
) -> HybridConfig:
  """Every layer MLA with full kv heads (kv_b has H heads), d_r = d_n = d_h/2, d_v = d_h.

  X-EcoMLA's yarn dict has no original_max_position_embeddings, so the reference class default
  4096 applies; it is written out here because our rope falls back to max_position_embeddings.
  """
  dh = base.head_dim
  scaling = (
    None
    if yarn_factor is None
    else {
      "rope_type": "yarn",
      "factor": float(yarn_factor),
      "original_max_position_embeddings": 4096,
      "beta_fast": 32,
      "beta_slow": 1,
      "mscale": 1.0,
      "mscale_all_dim": 0.0,
    }
  )
  kw = dict(
    mla_layers=tuple(range(base.num_hidden_layers)),
    q_lora_rank=q_lora_rank,
    kv_lora_rank=kv_lora_rank,
    qk_rope_head_dim=dh // 2,
    qk_nope_head_dim=dh // 2,
    v_head_dim=dh,
    use_full_kv_head=True,
    use_lora_layer_norm=False,
    mla_rope_scaling=scaling,
  )
  kw.update(fields)
  return HybridConfig.from_llama(base, **kw)


# ------------------------------------------------------------------------------------------------
# MambaInLlama
# ------------------------------------------------------------------------------------------------
def mamba_in_llama(base: LlamaConfig, attn_every: int | None = 4, **fields) -> HybridConfig:
  """Mamba2 everywhere except GQA attention on layers attn_every-1, 2*attn_every-1, ...

  attn_every=2 keeps the odd layers (50% attention), 4 keeps 3,7,11,... (25%), 8 keeps 7,15,...
  (12.5%), as in the MambaInLlama configs; None gives a pure Mamba2 model. Mamba2 dims follow
  Mamba2InLlama: d_state = headdim = d_h, ngroups = nheads = H, d_inner = H*d_h, d_xb = n_kv*d_h.
  """
  L = base.num_hidden_layers
  if attn_every is None:
    attn_layers: tuple[int, ...] = ()
  else:
    if not isinstance(attn_every, int) or attn_every < 1:
      raise ConfigError(f"attn_every must be a positive int or None, got {attn_every!r}")
    attn_layers = tuple(range(attn_every - 1, L, attn_every))
  dh = base.head_dim
  kw = dict(
    attn_layers=attn_layers,
    d_state=dh,
    headdim=dh,
    ngroups=base.num_attention_heads,
    d_inner=base.num_attention_heads * dh,
    d_xb=base.num_key_value_heads * dh,
    d_conv=4,
    conv_bias=True,
  )
  kw.update(fields)
  return HybridConfig.from_llama(base, **kw)


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
PRESETS: dict[str, Callable[[], LlamaConfig]] = {
  "llama-3.2-1b": lambda: llama_3_2_1b(instruct=False),
  "llama-3.2-1b-instruct": lambda: llama_3_2_1b(instruct=True),
  "llama-3.2-3b": lambda: llama_3_2_3b(instruct=False),
  "llama-3.2-3b-instruct": lambda: llama_3_2_3b(instruct=True),
  "llama-3.1-8b": lambda: llama_3_1_8b(instruct=False),
  "llama-3.1-8b-instruct": lambda: llama_3_1_8b(instruct=True),
  "smollm2-135m": lambda: smollm2_135m(instruct=False),
  "smollm2-135m-instruct": lambda: smollm2_135m(instruct=True),
  **{name: (lambda n=name: _zebra_preset(n)) for name in ZEBRA_TABLE},
  "x_ecomla_1b_r64": lambda: x_ecomla(llama_3_2_1b(), q_lora_rank=1424, kv_lora_rank=64, yarn_factor=32),
  "x_ecomla_3b_r96": lambda: x_ecomla(llama_3_2_3b(), q_lora_rank=2048, kv_lora_rank=96, yarn_factor=32),
  "x_ecomla_smollm2_135m_r16": lambda: x_ecomla(
    smollm2_135m(), q_lora_rank=400, kv_lora_rank=16, yarn_factor=None
  ),
  "mamba2_in_llama_8b_attn50": lambda: mamba_in_llama(llama_3_1_8b(), attn_every=2),
  "mamba2_in_llama_8b_attn25": lambda: mamba_in_llama(llama_3_1_8b(), attn_every=4),
  "mamba2_in_llama_8b_attn12": lambda: mamba_in_llama(llama_3_1_8b(), attn_every=8),
  "mamba2_in_llama_3b_attn50": lambda: mamba_in_llama(llama_3_2_3b(), attn_every=2),
}


class UnknownPreset(ConfigError, KeyError):
  """A preset name that is not registered (a KeyError too, as before)."""

  __str__ = BaseException.__str__  # the message, not KeyError's quoted repr


def get_preset(name: str) -> LlamaConfig:
  """The config registered under `name` (case-insensitive). Raises UnknownPreset (a ConfigError
  and a KeyError) listing the names."""
  key = name.strip().lower()
  if key not in PRESETS:
    raise UnknownPreset(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
  return PRESETS[key]()


def list_presets() -> list[str]:
  return sorted(PRESETS)
