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
import shutil

from zebra_jax._paths import source_of
from zebra_jax.config import LlamaConfig

FORMATS = ("hf", "mambainllama", "zebra_reference")


def export_pretrained(
  model,
  out_dir: str | os.PathLike,
  format: str = "hf",
  dtype: str | None = None,
  tokenizer=None,
  *,
  max_shard_size: int | str = "5GB",
  overwrite: bool = False,
  **kwargs,
) -> str:
  """Writes `model` as a PyTorch checkpoint directory; returns its absolute path.

  `dtype` (None: the model's parameter dtype; "float32" / "bfloat16" / "float16") is the stored
  dtype (Mamba2 A_log / D / dt_bias always stay float32). `tokenizer`: a transformers tokenizer,
  a directory with tokenizer files (copied alongside, with its generation_config.json), a .gguf,
  "smollm2" or "byte" (written as HF tokenizer files); checked before anything is written.
  `max_shard_size` splits the safetensors into shards + index beyond that size. `overwrite`
  replaces an earlier export in `out_dir`; a directory holding other files, the checkpoint the
  model was loaded from or the tokenizer directory (or inside / above either) is refused
  (zebra_jax/_paths.py). The directory is written aside and swapped in at the end, so a failed
  export leaves `out_dir` as it was. MambaInLlama extras (kwargs): `base_model` (written as
  `_name_or_path`), `weights="safetensors"|"pytorch_model.bin"`; zebra_reference extras:
  `base_model`.
  """
  # lazy: pulls in jax, flax, optax, which importing this module does not
  from zebra_jax.convert.model_files import GENERATION_CONFIG, generation_config
  from zebra_jax.export import io  # lazy: pulls in jax, flax, optax, which importing this module does not

  config = getattr(model, "config", None)
  if not isinstance(config, LlamaConfig):
    raise ValueError("export_pretrained needs a zebra_jax CausalLM (model.config is a LlamaConfig)")
  if format not in FORMATS:
    raise ValueError(f"format={format!r} must be one of {FORMATS}")
  if format == "hf" and kwargs:
    raise TypeError(f"unexpected arguments for format='hf': {sorted(kwargs)}")
  # never over the checkpoint the model was read from or the tokenizer's directory
  sources = [source_of(model)] + ([tokenizer] if isinstance(tokenizer, (str, os.PathLike)) else [])
  out_dir = io.check_out_dir(out_dir, overwrite, sources)
  tokenizer = io.resolve_tokenizer(tokenizer)  # a bad source fails before any weight is written
  common = dict(dtype=dtype, tokenizer=tokenizer, max_shard_size=max_shard_size, overwrite=True)

  def write(tmp: str) -> None:
    if format == "hf" and set(config.layer_types()) == {"attention"}:
      # lazy: pulls in jax, flax, optax, which importing this module does not
      from zebra_jax.export.hf_llama import export_llama

      export_llama(model, tmp, **common)
    elif format == "hf":
      # lazy: pulls in jax, flax, optax, which importing this module does not
      from zebra_jax.export.hf_hybrid import export_hybrid

      export_hybrid(model, tmp, **common)
    elif format == "mambainllama":
      # lazy: pulls in jax, flax, optax, which importing this module does not
      from zebra_jax.export.mambainllama import export_mambainllama

      export_mambainllama(model, tmp, **common, **kwargs)
    else:
      # lazy: pulls in jax, flax, optax, which importing this module does not
      from zebra_jax.export.hf_hybrid import export_zebra_reference

      export_zebra_reference(model, tmp, **common, **kwargs)
    # The tokenizer's ids are the ones generation must stop at (model_files.generation_config).
    src_gen = os.path.join(tokenizer, GENERATION_CONFIG) if isinstance(tokenizer, str) else None
    if src_gen and os.path.isfile(src_gen):
      shutil.copyfile(src_gen, os.path.join(tmp, GENERATION_CONFIG))
    elif tokenizer is not None and generation_config(config, tokenizer):
      io.write_json(os.path.join(tmp, GENERATION_CONFIG), generation_config(config, tokenizer))

  return io.write_aside(out_dir, write)


__all__ = ["export_pretrained", "FORMATS"]
