"""Zebra-Llama-3B, 6 MLA + 22 Mamba2 (reference `llama3.2_3B/zebra_6MLA22M2_8bt_SFT.yaml`).

  ZEBRA_LLAMA_3B=/models/Llama-3.2-3B-Instruct ZEBRA_LLAMA_8B=/models/Llama-3.1-8B-Instruct \
      python scripts/distill.py --config configs/zebra_3b.py --workdir gs://bucket/zebra_3b
  python scripts/distill.py --config configs/zebra_3b.py --aot-topology v5p:2x4x4   # compile check

Hardware: a TPU v5p-64 slice (32 chips, fsdp over all of them: 3 of the 96 sequences per chip,
docs/aot.md has the compiled per-chip memory) or 8 x 80 GB GPUs. 64 chips need
--config.mesh.tensor=2 (96 sequences do not split 64 ways). Produces
Zebra-3B-6MLA-22M2: 3.39B parameters, KV cache 2.01% (published average 59.75 after 9B tokens).
"""

from configs._teachers import teacher_path
from zebra_jax.distill.config import base_config
from zebra_jax.presets import zebra_mla_rope_scaling


def get_config():
  c = base_config()
  c.name = "zebra_3b"
  c.teacher.path = teacher_path("ZEBRA_LLAMA_3B", "Llama-3.2-3B-Instruct")
  c.teacher.preset = "llama-3.2-3b-instruct"  # shape for --aot_topology without the weights
  c.kd_teacher.path = teacher_path("ZEBRA_LLAMA_8B", "Llama-3.1-8B-Instruct")
  c.kd_teacher.preset = "llama-3.1-8b-instruct"  # shape for --aot_topology without the weights
  c.model.mla_layers = (0, 5, 10, 16, 21, 26)
  c.model.n_mla = 6
  c.model.kv_lora_rank = 128
  c.model.q_lora_rank = 1536
  c.model.mla_rope_scaling = zebra_mla_rope_scaling(32.0)
  c.data.seq_len = 2048
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.train.remat = True
  # "dots" keeps the matmul outputs: on v5p:2x4x4 (AOT, docs/aot.md) 11-15% fewer executed FLOPs
  # than "full" and at most 26.6% of a chip's HBM; on an H100 at 1B shapes 1.07x "full"'s speed
  c.train.remat_policy = "dots"
  c.train.checkpoint_every = 500
  c.ild.update(steps=7100, lr=0.0002, batch_size=96)
  # The released layouts; set select.method="smart" to place model.n_mla layers by sensitivity.
  c.select.method = "explicit"
  c.kd.update(steps=37842, lr=4e-05, batch_size=96)
  c.stages = ["teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd"]
  return c
