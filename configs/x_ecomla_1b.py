"""X-EcoMLA-1B: every layer MLA with full KV heads, r_kv 64 (reference `llama3.2_1B/mla_kv_rank_64_8bt.yaml`).

  ZEBRA_LLAMA_1B=/models/Llama-3.2-1B-Instruct ZEBRA_LLAMA_8B=/models/Llama-3.1-8B-Instruct \\
      python scripts/distill.py --config configs/x_ecomla_1b.py --workdir workdir/x_ecomla_1b

Hardware: 8 x 80 GB accelerators. SVD initialisation straight into end-to-end KD (no ILD, as in
X-EcoMLA); add `--config.model.kv_energy_ratio=0.95` for the dynamic-rank variant. Produces a
1.23B-parameter all-MLA model with a 9.37% KV cache (published average 52.68 with the 8B teacher).
"""

from configs._teachers import teacher_path
from zebra_jax.distill.config import base_config


def get_config():
  c = base_config()
  c.name = "x_ecomla_1b"
  c.teacher.path = teacher_path("ZEBRA_LLAMA_1B", "Llama-3.2-1B-Instruct")
  c.teacher.preset = "llama-3.2-1b-instruct"  # shape for --aot_topology without the weights
  c.kd_teacher.path = teacher_path("ZEBRA_LLAMA_8B", "Llama-3.1-8B-Instruct")
  c.kd_teacher.preset = "llama-3.1-8b-instruct"  # shape for --aot_topology without the weights
  c.model.mla_layers = tuple(range(16))
  c.model.kv_lora_rank = 64
  c.model.q_lora_rank = 1424
  c.model.use_full_kv_head = True
  c.model.mla_rope_scaling = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 0.0,
    "original_max_position_embeddings": 4096,
  }
  c.data.seq_len = 2048
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.train.remat = True
  c.select.method = "explicit"
  c.kd.update(steps=17800, lr=8e-5, batch_size=192)
  c.stages = ["teacher", "select", "assemble", "kd"]
  return c
