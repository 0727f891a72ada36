"""PyTorch modeling templates, copied verbatim into exported hybrid directories (remote code).

They are package data: never imported by zebra_jax itself (they import torch and transformers), only
copied by `zebra_jax.export.hf_hybrid` next to `config.json`, whose `auto_map` points at them.
"""

import os

TEMPLATE_DIR = os.path.dirname(os.path.abspath(__file__))
TEMPLATE_FILES = ("configuration_zebra.py", "modeling_zebra.py")
