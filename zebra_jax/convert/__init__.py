"""Checkpoint conversion: HF (safetensors / torch .bin) and GGUF Llama checkpoints -> `CausalLM`,
and Orbax save / load of converted models.

    model = from_pretrained("path/to/hf_dir")            # or a .gguf, a save_model dir, "smollm2"
    save_model(model, "converted/")                      # config.json + Orbax parameter checkpoint
    model = load_model("converted/")

Name maps live in `names.py` as data; every source goes through the same map and the same checks,
which collect every missing / unexpected / mis-shaped tensor before raising one `CheckpointError`.
"""

from __future__ import annotations

import glob
import os
from typing import NamedTuple

from zebra_jax._paths import remember_source
from zebra_jax.assets import smollm2_gguf_path
from zebra_jax.convert.errors import CheckpointError
from zebra_jax.convert.gguf import from_gguf
from zebra_jax.convert.hf import from_hf_directory
from zebra_jax.convert.hybrid_import import detect_format, from_hybrid_directory
from zebra_jax.convert.model_files import has_tokenizer
from zebra_jax.convert.orbax_io import (
  PARAMS_DIR,
  is_incomplete_saved_model,
  is_saved_model,
  load_model,
  save_model,
)


def resolve_gguf(path: str) -> str | None:
  """The .gguf file that `path` designates (the file itself or the only one in a directory)."""
  if os.path.isfile(path) and path.endswith(".gguf"):
    return path
  if os.path.isdir(path):
    found = sorted(glob.glob(os.path.join(path, "*.gguf")))
    has_weights = any(
      os.path.exists(os.path.join(path, f))
      for f in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
      )
    )
    if len(found) > 1 and not has_weights:
      raise CheckpointError(
        f"{path} holds several .gguf files {[os.path.basename(f) for f in found]}; pass the one to load"
      )
    if len(found) == 1 and not has_weights:
      return found[0]
  return None


# Named checkpoints, fetched into the cache on first use (zebra_jax/assets.py).
NAMED_CHECKPOINTS = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
_KINDS = (
  "a named checkpoint (" + ", ".join(NAMED_CHECKPOINTS) + ")",
  "a directory written by save_model (config.json + params/)",
  "a .gguf file (or a directory holding one)",
  "an exported hybrid (config.json of model_type zebra_llama, hybrid_config.json or mamba_config.json)",
  "a Hugging Face Llama directory (config.json + safetensors / pytorch_model.bin)",
)


class Checkpoint(NamedTuple):
  kind: str  # "saved" | "gguf" | "hybrid" | "hf"
  path: str  # the file or directory to read
  format: str | None  # the hybrid layout (hybrid_import.detect_format), else None


def named_checkpoint(spec) -> str | None:
  """The local path of a named checkpoint (fetched into the cache if missing), else None."""
  if isinstance(spec, str) and spec.lower() in NAMED_CHECKPOINTS:
    return smollm2_gguf_path()
  return None


def resolve_checkpoint(spec: str | os.PathLike) -> Checkpoint:
  """What `spec` designates, in this order: a named checkpoint ("smollm2", fetched into the cache:
  $ZEBRA_JAX_CACHE, else ~/.cache/zebra_jax), a save_model directory, a .gguf file (or a directory
  holding exactly one), an exported hybrid directory, an HF Llama directory. One CheckpointError
  listing what was tried when nothing matches. The one resolver of every API and script."""
  spec = os.fspath(spec)
  named = named_checkpoint(spec)
  if named is not None:
    return Checkpoint("gguf", named, None)
  path = os.path.expanduser(spec)
  tried = "tried " + "; ".join(_KINDS)
  if not os.path.exists(path):
    raise CheckpointError(f"{spec}: no such file or directory, and not a named checkpoint ({tried})")
  if os.path.isdir(path) and is_saved_model(path):
    return Checkpoint("saved", path, None)
  if os.path.isdir(path) and is_incomplete_saved_model(path):
    raise CheckpointError(
      f"{path}: a save_model directory without its parameter checkpoint "
      f"{PARAMS_DIR}/ (the save did not finish, or {PARAMS_DIR}/ was moved)"
    )
  gguf_file = resolve_gguf(path)
  if gguf_file is not None:
    return Checkpoint("gguf", gguf_file, None)
  if os.path.isdir(path):
    fmt = detect_format(path)  # exported hybrids, Zebra-Llama reference and MambaInLlama layouts
    if fmt is not None:
      return Checkpoint("hybrid", path, fmt)
    if os.path.isfile(os.path.join(path, "config.json")):
      return Checkpoint("hf", path, None)  # from_hf_directory names what is missing
  raise CheckpointError(f"{spec}: not a checkpoint ({tried})")


def from_pretrained(
  path: str | os.PathLike,
  dtype: str = "float32",
  param_dtype: str | None = None,
  impl: str = "auto",
  *,
  progress: bool = False,
):
  """Loads a checkpoint as a `CausalLM` (config in `model.config`).

  `path`: anything `resolve_checkpoint` accepts: "smollm2" (the SmolLM2-135M-Instruct GGUF, fetched
  into the cache on first use), a directory written by `save_model`, a `.gguf` file (or a directory
  holding exactly one), a hybrid directory (`export_pretrained` output, Zebra-Llama reference
  layout with hybrid_config.json, MambaInLlama layout with mamba_config.json; see hybrid_import),
  or an HF directory (config.json + model.safetensors / sharded safetensors + index /
  pytorch_model.bin [sharded]).
  `dtype` is the compute dtype; `param_dtype` the storage dtype of the parameters (default: same
  as `dtype`). Parameters are cast on the host while reading.
  `progress` shows a tqdm bar over the tensors.
  """
  ck = resolve_checkpoint(path)
  if ck.kind == "saved":
    model = load_model(ck.path, dtype=dtype, param_dtype=param_dtype, impl=impl)
  elif ck.kind == "gguf":
    model = from_gguf(ck.path, dtype=dtype, param_dtype=param_dtype, impl=impl, progress=progress)
  elif ck.kind == "hybrid":
    model = from_hybrid_directory(
      ck.path, ck.format, dtype=dtype, param_dtype=param_dtype, impl=impl, progress=progress
    )
  else:
    model = from_hf_directory(ck.path, dtype=dtype, param_dtype=param_dtype, impl=impl, progress=progress)
  # save_model / export_pretrained refuse to write over it (zebra_jax/_paths.py)
  return remember_source(model, ck.path)


def load_tokenizer(path: str | os.PathLike):
  """The tokenizer of a checkpoint or tokenizer source, local files only (no hub): "byte"
  (ByteTokenizer), a named checkpoint ("smollm2"), a .gguf file, a saved model or exported
  directory (its own tokenizer files), or an HF tokenizer directory."""
  path = os.fspath(path)
  if path == "byte":
    # lazy: pulls in grain, orbax, which importing this module does not
    from zebra_jax.data.tokenize import ByteTokenizer

    return ByteTokenizer()
  from transformers import AutoTokenizer

  path = named_checkpoint(path) or os.path.expanduser(path)
  gguf_file = resolve_gguf(path)
  if gguf_file is not None:
    return AutoTokenizer.from_pretrained(
      os.path.dirname(os.path.abspath(gguf_file)),
      gguf_file=os.path.basename(gguf_file),
      local_files_only=True,
    )
  if not os.path.isdir(path):
    raise CheckpointError(
      f"{path}: not a tokenizer directory, a .gguf file, 'byte' or a named "
      f"checkpoint ({', '.join(NAMED_CHECKPOINTS)})"
    )
  ours = is_saved_model(path) or is_incomplete_saved_model(path) or detect_format(path) is not None
  if ours and not has_tokenizer(path):
    raise CheckpointError(
      f"{path} holds no tokenizer files (saved without one, or before models carried their "
      "tokenizer): pass the teacher's (--tokenizer: an HF directory, a .gguf, smollm2 or byte)"
    )
  if ours:  # config.json is ours (or remote code): AutoTokenizer must not parse it
    from transformers import PretrainedConfig

    return AutoTokenizer.from_pretrained(path, config=PretrainedConfig(), local_files_only=True)
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


__all__ = [
  "CheckpointError",
  "Checkpoint",
  "from_pretrained",
  "load_tokenizer",
  "save_model",
  "load_model",
  "resolve_gguf",
  "resolve_checkpoint",
  "named_checkpoint",
  "NAMED_CHECKPOINTS",
]
