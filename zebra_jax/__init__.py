"""zebra-jax: hybrid MLA + Mamba2 language models composed from pretrained Llamas, in JAX / Flax NNX.

Public API (imported lazily so `import zebra_jax` stays cheap):

  from_pretrained(path, dtype=...)   "smollm2", HF dir (safetensors / .bin), .gguf, exported hybrid or a
                                     saved zebra-jax dir -> CausalLM
  resolve_checkpoint(path)           which of those `path` is (one error listing what was tried)
  load_tokenizer(path)               the tokenizer of any of those (a saved model carries its teacher's)
  save_model / load_model            Orbax checkpoint of a model plus its config (and tokenizer files,
                                     generation_config.json, provenance.json)
  LlamaConfig, HybridConfig          configurations (validated, HF field names)
  CausalLM, Llama                    the decoder stack (attention / MLA / Mamba2 mixers per layer)
  init_hybrid(teacher, config)       SVD-initialised MLA + attention-initialised Mamba2 from a teacher
  kv_cache_fraction, kv_bytes_per_token, param_count, flops_per_token
                                     accounting from the config
  presets                            public model shapes and the Zebra configurations
"""

import importlib

from zebra_jax._platforms import quiet_libtpu

quiet_libtpu()  # before anything initialises a jax backend (zebra_jax/_platforms.py says why)

__version__ = "0.1.0"

_EXPORTS = {
  "LlamaConfig": "zebra_jax.config",
  "HybridConfig": "zebra_jax.config",
  "ConfigError": "zebra_jax.config",
  "CausalLM": "zebra_jax.models.hybrid",
  "Llama": "zebra_jax.models.hybrid",
  "init_hybrid": "zebra_jax.init",
  "from_pretrained": "zebra_jax.convert",
  "load_tokenizer": "zebra_jax.convert",
  "resolve_checkpoint": "zebra_jax.convert",
  "CheckpointError": "zebra_jax.convert",
  "save_model": "zebra_jax.convert.orbax_io",
  "load_model": "zebra_jax.convert.orbax_io",
  "kv_cache_fraction": "zebra_jax.accounting",
  "kv_bytes_per_token": "zebra_jax.accounting",
  "param_count": "zebra_jax.accounting",
  "flops_per_token": "zebra_jax.accounting",
  "generate": "zebra_jax.infer",
  "export_pretrained": "zebra_jax.export",
}
_SUBMODULES = ("presets", "accounting", "ops", "models", "convert", "init", "config")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in _SUBMODULES:
    return importlib.import_module(f"zebra_jax.{name}")
  raise AttributeError(f"module 'zebra_jax' has no attribute {name!r}")


def __dir__():
  return __all__
