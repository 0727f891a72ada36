"""Checkpoint conversion: HF (safetensors / torch .bin) and GGUF Llama checkpoints -> `CausalLM`,
and Orbax save / load of converted models.

    model = from_pretrained("path/to/hf_dir")            # or a .gguf file, or a save_model directory
    save_model(model, "converted/")                      # config.json + Orbax parameter checkpoint
    model = load_model("converted/")

Name maps live in `names.py` as data; every source goes through the same map and the same checks,
which collect every missing / unexpected / mis-shaped tensor before raising one `CheckpointError`.
"""

from __future__ import annotations

import glob
import os


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded faithfully. The message lists every problem found."""


# Imported after CheckpointError: the submodules import it from here.
from zebra_jax.convert.orbax_io import is_saved_model, load_model, save_model  # noqa: E402


def resolve_gguf(path: str) -> str | None:
  """The .gguf file that `path` designates (the file itself or the only one in a directory)."""
  if os.path.isfile(path) and path.endswith(".gguf"):
    return path
  if os.path.isdir(path):
    found = sorted(glob.glob(os.path.join(path, "*.gguf")))
    has_weights = any(os.path.exists(os.path.join(path, f)) for f in (
        "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
        "pytorch_model.bin.index.json"))
    if len(found) > 1 and not has_weights:
      raise CheckpointError(f"{path} holds several .gguf files {[os.path.basename(f) for f in found]}; "
                            "pass the one to load")
    if len(found) == 1 and not has_weights:
      return found[0]
  return None


def from_pretrained(path: str | os.PathLike, dtype: str = "float32", param_dtype: str | None = None,
                    impl: str = "auto", *, progress: bool = False):
  """Loads a Llama checkpoint as a `CausalLM` (config in `model.config`).

  `path`: an HF directory (config.json + model.safetensors / sharded safetensors + index /
  pytorch_model.bin [sharded]), a `.gguf` file (or a directory holding exactly one), a directory
  written by `save_model`, or a hybrid directory (`export_pretrained` output, Zebra-Llama reference
  layout with hybrid_config.json, MambaInLlama layout with mamba_config.json; see hybrid_import).
  `dtype` is the compute dtype; `param_dtype` the storage dtype of the parameters (default: same
  as `dtype`). Parameters are cast on the host while reading.
  `progress` shows a tqdm bar over the tensors.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file or directory")
  if os.path.isdir(path) and is_saved_model(path):
    return load_model(path, dtype=dtype, param_dtype=param_dtype, impl=impl)
  gguf_file = resolve_gguf(path)
  if gguf_file is not None:
    from zebra_jax.convert.gguf import from_gguf
    return from_gguf(gguf_file, dtype=dtype, param_dtype=param_dtype, impl=impl, progress=progress)
  if os.path.isdir(path):
    from zebra_jax.convert.hybrid_import import detect_format, from_hybrid_directory
    fmt = detect_format(path)  # exported hybrids, Zebra-Llama reference and MambaInLlama layouts
    if fmt is not None:
      return from_hybrid_directory(path, fmt, dtype=dtype, param_dtype=param_dtype, impl=impl,
                                   progress=progress)
    from zebra_jax.convert.hf import from_hf_directory
    return from_hf_directory(path, dtype=dtype, param_dtype=param_dtype, impl=impl, progress=progress)
  raise CheckpointError(f"{path}: not a checkpoint directory or a .gguf file")


def load_tokenizer(path: str | os.PathLike):
  """The transformers tokenizer of an HF directory or a GGUF file (local files only, no hub)."""
  from transformers import AutoTokenizer
  path = os.fspath(path)
  gguf_file = resolve_gguf(path)
  if gguf_file is not None:
    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf_file)),
                                         gguf_file=os.path.basename(gguf_file), local_files_only=True)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: not a tokenizer directory or a .gguf file")
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


__all__ = ["CheckpointError", "from_pretrained", "load_tokenizer", "save_model", "load_model",
           "resolve_gguf"]
