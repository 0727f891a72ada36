"""Config validation: impossible configs and unsupported HF fields fail with an error naming them."""

import pytest

from zebra_jax.config import ConfigError, HybridConfig, LlamaConfig, llama_config_from_hf

BASE = dict(
  vocab_size=64,
  hidden_size=64,
  intermediate_size=96,
  num_hidden_layers=4,
  num_attention_heads=4,
  num_key_value_heads=2,
)


def hybrid(**kw):
  return HybridConfig(**{**BASE, "kv_lora_rank": 16, "q_lora_rank": 32, **kw})


def test_defaults_follow_the_zebra_recipe():
  c = hybrid(mla_layers=(0, 2))
  assert c.head_dim == 16
  assert (c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim) == (8, 8, 16)
  assert (c.d_state, c.headdim, c.ngroups, c.d_inner, c.d_xb) == (16, 16, 4, 64, 32)
  assert c.layer_types() == ("mla", "mamba2", "mla", "mamba2")
  assert c.mamba_in_proj_dim == 2 * 64 + 2 * 32 + 4
  assert c.mamba_conv_dim == 2 * 32 + 64


def test_layer_kinds_and_json_round_trip():
  c = hybrid(mla_layers=[3, 0], attn_layers=[1])
  assert c.mla_layers == (0, 3) and c.layer_types() == ("mla", "attention", "mamba2", "mla")
  assert LlamaConfig.from_json(c.to_json()) == c
  assert hash(c) == hash(LlamaConfig.from_json(c.to_json()))


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(mla_layers=(0, 4)), r"mla_layers has layer indices \[4\] out of range"),
    (dict(mla_layers=(1, 1)), r"mla_layers lists layers \[1\] more than once"),
    (dict(mla_layers=(0.7,)), r"mla_layers has indices \[0\.7\] that are not whole layer numbers"),
    (dict(attn_layers="12"), r"attn_layers must be a sequence of layer indices"),
    (dict(mla_layers=(1,), attn_layers=(1,)), r"layers \[1\] are in both"),
    (dict(mla_layers=(0,), kv_lora_rank=72), r"kv_lora_rank=72 must be in \[1, 64\]"),
    (dict(mla_layers=(0,), q_lora_rank=128), r"q_lora_rank=128 must be in \[1, 64\]"),
    (dict(mla_layers=(0,), kv_lora_rank=12), r"kv_lora_rank=12 is not a multiple of qkv_rank_divisor"),
    (dict(mla_layers=(0,), kv_lora_rank=None), r"kv_lora_rank must be set"),
    (dict(mla_layers=(0,), qk_rope_head_dim=7), r"qk_rope_head_dim=7 must be even"),
    (dict(headdim=24), r"d_inner=64 is not a multiple of headdim=24"),
    (dict(d_state=32, ngroups=4), r"d_inner=64 must equal ngroups\*d_state"),
    (dict(mla_layers=(0,), mla_layer_ranks={1: (32, 16)}), r"mla_layer_ranks has layers \[1\]"),
    (dict(mla_layers=(0,), mla_rope_scaling={"rope_type": "longrope"}), r"rope_type='longrope'"),
  ],
)
def test_impossible_hybrid_configs(kw, match):
  with pytest.raises(ConfigError, match=match):
    hybrid(**kw)


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(num_key_value_heads=3), r"num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    (dict(hidden_size=66, num_attention_heads=4), r"hidden_size=66 is not divisible"),
    (dict(dtype="float64"), r"dtype='float64'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"needs 'low_freq_factor'"),
  ],
)
def test_impossible_llama_configs(kw, match):
  with pytest.raises(ConfigError, match=match):
    LlamaConfig(**{**BASE, **kw})


HF = {
  "model_type": "llama",
  "vocab_size": 64,
  "hidden_size": 64,
  "intermediate_size": 96,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-5,
  "hidden_act": "silu",
  "max_position_embeddings": 128,
}


def test_hf_config_both_rope_layouts():
  old = llama_config_from_hf(
    {
      **HF,
      "rope_theta": 5e5,
      "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
      },
    }
  )
  new = llama_config_from_hf(
    {
      **HF,
      "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
      },
    }
  )
  assert old.rope_theta == new.rope_theta == 5e5
  assert old.rope_scaling["factor"] == new.rope_scaling["factor"] == 8.0
  plain = llama_config_from_hf({**HF, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
  assert plain.rope_scaling is None and plain.rope_theta == 1e4


def test_hf_config_refuses_everything_it_does_not_implement_in_one_error():
  bad = {
    **HF,
    "attention_bias": True,
    "hidden_act": "gelu",
    "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
    "some_new_field": 3,
  }
  with pytest.raises(ConfigError) as e:
    llama_config_from_hf(bad)
  msg = str(e.value)
  for needle in ("attention_bias=True", "hidden_act='gelu'", "rope_type='dynamic'", "some_new_field"):
    assert needle in msg


def test_hf_config_refuses_other_architectures():
  with pytest.raises(ConfigError, match="model_type='qwen2'"):
    llama_config_from_hf({**HF, "model_type": "qwen2"})


def test_configs_that_read_wrong_are_refused_by_field():
  """Issue 18 item 10: a config.json that is a JSON list, one without vocab_size (no default is
  right for a checkpoint) and `tie_word_embeddings: "false"` (a string, read as true) are refused
  naming the field, from HF configs and saved ones."""
  with pytest.raises(ConfigError, match="must be a JSON object of fields, got a list"):
    llama_config_from_hf([1, 2])
  no_vocab = {k: v for k, v in HF.items() if k != "vocab_size"}
  with pytest.raises(ConfigError, match=r"missing field\(s\) \['vocab_size'\]"):
    llama_config_from_hf(no_vocab)
  with pytest.raises(ConfigError, match="tie_word_embeddings must be true or false, got 'false'"):
    llama_config_from_hf({**HF, "tie_word_embeddings": "false"})
  saved = LlamaConfig(**BASE).to_dict()
  del saved["vocab_size"]
  with pytest.raises(ConfigError, match=r"missing field\(s\) \['vocab_size'\]"):
    LlamaConfig.from_dict(saved)
  assert llama_config_from_hf({**HF, "tie_word_embeddings": True}).tie_word_embeddings is True
