"""Export back to PyTorch: Hugging Face directories for Llamas and hybrids, and the MambaInLlama layout.

    zebra_jax.export_pretrained(model, "out/")                          # format="hf"
    zebra_jax.export_pretrained(model, "out/", format="mambainllama", dtype="bfloat16")

* format="hf", plain Llama  -> LlamaForCausalLM directory (hf_llama.py).
* format="hf", hybrid       -> transformers remote-code directory with our PyTorch modeling file and
                               Zebra-Llama reference tensor names (hf_hybrid.py).
* format="mambainllama"     -> config.json (Llama) + mamba_config.json + MambaInLlama tensor names for
                               GQA + Mamba2 hybrids (mambainllama.py).
* format="zebra_reference"  -> config.json (Llama) + hybrid_config.json + the hybrid tensors, the
                               Zebra-Llama reference's own layout, no remote code (hf_hybrid.py).

`zebra_jax.from_pretrained` reads all three back (see zebra_jax/convert/hybrid_import.py).
See docs/export.md.
"""

from __future__ import annotations

import os

FORMATS = ("hf", "mambainllama", "zebra_reference")


def export_pretrained(model, out_dir: str | os.PathLike, format: str = "hf", dtype: str | None = None,
                      tokenizer=None, *, max_shard_size: int | str = "5GB", overwrite: bool = False,
                      **kwargs) -> str:
  """Writes `model` as a PyTorch checkpoint directory; returns its absolute path.

  `dtype` (None: the model's parameter dtype; "float32" / "bfloat16" / "float16") is the stored
  dtype (Mamba2 A_log / D / dt_bias always stay float32). `tokenizer`: a transformers tokenizer or a
  directory with tokenizer files, copied alongside. `max_shard_size` splits the safetensors into
  shards + index beyond that size. `overwrite` replaces a non-empty `out_dir`. MambaInLlama extras
  (kwargs): `base_model` (written as `_name_or_path`), `weights="safetensors"|"pytorch_model.bin"`;
  zebra_reference extras: `base_model`.
  """
  from zebra_jax.config import LlamaConfig
  config = getattr(model, "config", None)
  if not isinstance(config, LlamaConfig):
    raise ValueError("export_pretrained needs a zebra_jax CausalLM (model.config is a LlamaConfig)")
  common = dict(dtype=dtype, tokenizer=tokenizer, max_shard_size=max_shard_size, overwrite=overwrite)
  if format == "hf":
    if kwargs:
      raise TypeError(f"unexpected arguments for format='hf': {sorted(kwargs)}")
    if set(config.layer_types()) == {"attention"}:
      from zebra_jax.export.hf_llama import export_llama
      return export_llama(model, out_dir, **common)
    from zebra_jax.export.hf_hybrid import export_hybrid
    return export_hybrid(model, out_dir, **common)
  if format == "mambainllama":
    from zebra_jax.export.mambainllama import export_mambainllama
    return export_mambainllama(model, out_dir, **common, **kwargs)
  if format == "zebra_reference":
    from zebra_jax.export.hf_hybrid import export_zebra_reference
    return export_zebra_reference(model, out_dir, **common, **kwargs)
  raise ValueError(f"format={format!r} must be one of {FORMATS}")


__all__ = ["export_pretrained", "FORMATS"]
