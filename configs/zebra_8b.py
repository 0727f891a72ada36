"""Zebra-Llama-8B, 8 MLA + 24 Mamba2 (reference `llama3.1_8B/zebra_8MLA24M2_8bt_SFT.yaml`).

  ZEBRA_LLAMA_8B=/models/Llama-3.1-8B-Instruct \
      python scripts/distill.py --config configs/zebra_8b.py --workdir gs://bucket/zebra_8b
  python scripts/distill.py --config configs/zebra_8b.py --aot-topology v5p:2x2x4   # compile check

Hardware: a TPU v5p-32 slice (16 chips, fsdp over all of them; the ILD batch of 48 and KD batch of
64 split 16 ways; docs/aot.md has the compiled per-chip memory) or 8+ x 80 GB GPUs with fsdp.
Produces Zebra-8B-8MLA-24M2: 8.38B parameters, KV cache 2.73% (r_kv 160; published average 64.12
after 11B tokens). The teacher is the model itself for both ILD and KD.
"""

from configs._teachers import teacher_path
from zebra_jax.distill.config import base_config
from zebra_jax.presets import zebra_mla_rope_scaling


def get_config():
  c = base_config()
  c.name = "zebra_8b"
  c.teacher.path = teacher_path("ZEBRA_LLAMA_8B", "Llama-3.1-8B-Instruct")
  c.teacher.preset = "llama-3.1-8b-instruct"  # shape for --aot_topology without the weights
  c.model.mla_layers = (0, 4, 8, 12, 16, 20, 25, 30)
  c.model.n_mla = 8
  c.model.kv_lora_rank = 160
  c.model.q_lora_rank = 2048
  c.model.mla_rope_scaling = zebra_mla_rope_scaling(8.0)
  c.data.seq_len = 2048
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.train.remat = True
  # "dots" keeps the matmul outputs: on v5p:2x2x4 (AOT, docs/aot.md) 13-15% fewer executed FLOPs
  # than "full" and at most 59.3% of a chip's HBM (KD)
  c.train.remat_policy = "dots"
  c.train.checkpoint_every = 500
  c.ild.update(steps=14300, lr=0.0001, batch_size=48)
  # The released layouts; set select.method="smart" to place model.n_mla layers by sensitivity.
  c.select.method = "explicit"
  c.kd.update(steps=72021, lr=4e-05, batch_size=64)
  c.stages = ["teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd"]
  return c
