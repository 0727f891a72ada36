"""Tiny end-to-end run: a small randomly initialised Llama teacher, every Zebra stage, on a CPU.

  python scripts/distill.py --config configs/tiny.py --workdir /tmp/zebra_tiny

Hardware: 2 CPU cores, about two minutes. Produces /tmp/zebra_tiny/{teacher,ild_mla,ild_mamba,
select,assemble,kd,dpo}/ with loss curves; ILD and KD losses fall. Data: the embedded default corpus
with a byte-level tokenizer, so nothing but PyPI is needed.
"""

import os

from zebra_jax.distill.config import base_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  c = base_config()
  c.name = "tiny"
  c.teacher.path = "random:smollm2-135m"
  c.teacher.dtype = "float32"
  c.teacher.overrides = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    tie_word_embeddings=True,
  )
  c.model.n_mla = 2
  c.model.kv_lora_rank = 16
  c.model.q_lora_rank = 32
  c.model.chunk_size = 16
  c.data.source = "default"
  c.data.tokenizer = "byte"
  c.data.seq_len = 64
  c.data.dpo_path = os.path.join(HERE, "data", "tiny_preferences.jsonl")
  c.train.dtype = "float32"
  c.train.log_every = 5
  c.train.checkpoint_every = 20
  c.ild.update(steps=30, lr=3e-3, batch_size=8)
  c.select.update(calib_batches=2, batch_size=4)
  c.kd.update(steps=30, lr=1e-3, batch_size=8)
  c.dpo.update(steps=6, lr=1e-4, batch_size=4, max_len=64, max_prompt_len=32)
  c.stages = ["teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd", "dpo"]
  return c
