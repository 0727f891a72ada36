"""MambaInLlama recipe on Llama-3.2-1B: GQA attention kept on a quarter of the layers, Mamba2
elsewhere, reached by stepwise replacement (50% attention, then 25%) with MLPs frozen.

  ZEBRA_LLAMA_1B=/models/Llama-3.2-1B-Instruct \\
      python scripts/distill.py --config configs/mamba_in_llama_1b.py --workdir workdir/mil_1b

Hardware: 8 x 80 GB accelerators. Each stepwise phase distils with KL (+ CE) from the teacher;
the final KD stage trains everything. Produces a 4-attention / 12-Mamba2 hybrid.
"""

from configs._teachers import teacher_path
from zebra_jax.distill.config import base_config


def get_config():
  c = base_config()
  c.name = "mamba_in_llama_1b"
  c.teacher.path = teacher_path("ZEBRA_LLAMA_1B", "Llama-3.2-1B-Instruct")
  c.teacher.preset = "llama-3.2-1b-instruct"  # shape for --aot_topology without the weights
  c.model.attn_layers = (3, 7, 11, 15)
  c.data.seq_len = 2048
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.train.remat = True
  c.stepwise.update(
    steps=2000,
    lr=8e-5,
    batch_size=64,
    kl_weight=1.0,
    ce_weight=0.1,
    schedule=((1, 3, 5, 7, 9, 11, 13, 15), (3, 7, 11, 15)),
    freeze_mlp=True,
  )
  c.kd.update(steps=4000, lr=4e-5, batch_size=64)
  c.stages = ["teacher", "stepwise", "kd"]
  return c
