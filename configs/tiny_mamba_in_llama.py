"""Tiny MambaInLlama run on a CPU: random 4-layer teacher, stepwise replacement then KD.

  python scripts/distill.py --config configs/tiny_mamba_in_llama.py --workdir /tmp/zebra_tiny_mil

Hardware: 2 CPU cores, about a minute. Produces a 1-attention / 3-Mamba2 hybrid.
"""

from configs.tiny import get_config as tiny_config


def get_config():
  c = tiny_config()
  c.name = "tiny_mamba_in_llama"
  c.model.attn_layers = (3,)
  c.stepwise.update(steps=10, lr=1e-3, batch_size=8, schedule=((1, 3), (3,)), ce_weight=0.1)
  c.kd.update(steps=10)
  c.stages = ["teacher", "stepwise", "kd"]
  return c
