"""What a model directory carries next to its weights, so that every tool can use it alone:

    tokenizer.json, tokenizer_config.json   the teacher's tokenizer as Hugging Face files (written by
    (chat template included),               transformers' save_pretrained, also for a GGUF teacher;
    special_tokens_map.json,                the chat template is in tokenizer_config.json for older
    chat_template.jinja                     transformers and in chat_template.jinja for newer ones)
    generation_config.json                  bos / eos / pad ids (the tokenizer's, plus the config's
                                            extra end-of-turn ids)
    provenance.json                         teacher, run config name, data, git commit, KV fraction

`save_model` writes them inside its atomic save; `export_pretrained` writes the tokenizer and the
generation config too. `load_tokenizer` (zebra_jax.convert) reads them back.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import subprocess

from zebra_jax import __version__, accounting

TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "vocab.json",
  "merges.txt",
  "added_tokens.json",
  "chat_template.jinja",
  "chat_template.json",
)
GENERATION_CONFIG = "generation_config.json"
PROVENANCE = "provenance.json"
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


def has_tokenizer(directory: str) -> bool:
  """Whether `directory` holds tokenizer files transformers can load."""
  return any(
    os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.json", "tokenizer.model", "vocab.json")
  )


def write_tokenizer(tokenizer, directory: str) -> list[str]:
  """Writes a transformers tokenizer (or ByteTokenizer) as HF files into `directory`; returns the
  file names."""
  if hasattr(tokenizer, "to_transformers"):  # ByteTokenizer
    tokenizer = tokenizer.to_transformers()
  if not hasattr(tokenizer, "save_pretrained"):
    raise TypeError(f"a tokenizer with save_pretrained is needed, got {type(tokenizer).__name__}")
  tokenizer.save_pretrained(directory)
  cfg_path = os.path.join(directory, "tokenizer_config.json")
  cfg = {}
  if os.path.isfile(cfg_path):
    with open(cfg_path) as f:
      cfg = json.load(f)
  # Saved from a local file: these would make a later load refuse the hub for no reason.
  for k in ("is_local", "local_files_only"):
    cfg.pop(k, None)
  if cfg.get("tokenizer_class") == "TokenizersBackend":  # transformers 5's name; 4.x knows this one
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
  template = getattr(tokenizer, "chat_template", None)
  if isinstance(template, str) and "chat_template" not in cfg:
    cfg["chat_template"] = template
  _write_json(cfg_path, cfg)
  special = {k: str(getattr(tokenizer, k)) for k in _SPECIAL if getattr(tokenizer, k, None)}
  smap = os.path.join(directory, "special_tokens_map.json")
  if special and not os.path.isfile(smap):
    _write_json(smap, special)
  return sorted(f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, f)))


def generation_config(config, tokenizer=None) -> dict:
  """bos / eos / pad ids for generation_config.json. With a tokenizer its ids win (a model trained
  on a tokenizer other than the teacher config's, e.g. bytes, must not stop at the config's ids);
  the config's other eos ids are kept when they are the tokenizer's special tokens (Llama 3's
  end-of-turn ids)."""

  def ids(v):
    return [] if v is None else [int(v)] if isinstance(v, int) else [int(i) for i in v]

  out = {
    "bos_token_id": config.bos_token_id,
    "eos_token_id": ids(config.eos_token_id),
    "pad_token_id": config.pad_token_id,
  }
  if tokenizer is not None:
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    eos = ids(getattr(tokenizer, "eos_token_id", None))
    out["eos_token_id"] = eos + [i for i in out["eos_token_id"] if i in special and i not in eos]
    for k in ("bos_token_id", "pad_token_id"):
      if getattr(tokenizer, k, None) is not None:
        out[k] = int(getattr(tokenizer, k))
  eos = out["eos_token_id"]
  out["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
  return {k: v for k, v in out.items() if v is not None}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
  """The commit of the zebra_jax source tree ("<sha>-dirty" with uncommitted changes), or None
  outside a git checkout."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    if sha.returncode != 0:
      return None
    dirty = subprocess.run(
      ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      timeout=30,
    )
  except (OSError, subprocess.TimeoutExpired):
    return None
  return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(model_config, /, **fields) -> dict:
  """provenance.json: where a model comes from (`fields`: teacher, config (the run config's name),
  data, ...) plus the code version and the model's KV-cache fraction of its teacher's."""
  return {
    **fields,
    "layer_types": "".join(
      {"mla": "M", "mamba2": "s", "attention": "A"}[t] for t in model_config.layer_types()
    ),
    "kv_cache_fraction": accounting.kv_cache_fraction(model_config),
    "zebra_jax_version": __version__,
    "git_commit": git_commit(),
    "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def write_model_files(directory: str, config, tokenizer=None, provenance: dict | None = None) -> None:
  """The tokenizer files (when given), generation_config.json and provenance.json (when given)."""
  if tokenizer is not None:
    write_tokenizer(tokenizer, directory)
  gen = generation_config(config, tokenizer)
  if gen:
    _write_json(os.path.join(directory, GENERATION_CONFIG), gen)
  if provenance is not None:
    _write_json(os.path.join(directory, PROVENANCE), provenance)


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


__all__ = [
  "TOKENIZER_FILES",
  "GENERATION_CONFIG",
  "PROVENANCE",
  "has_tokenizer",
  "write_tokenizer",
  "generation_config",
  "git_commit",
  "provenance",
  "write_model_files",
]
