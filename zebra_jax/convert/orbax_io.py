"""Save / load a converted `CausalLM`: `config.json` plus an Orbax checkpoint of its parameters.

Layout of a saved directory:
    config.json   model.config.to_json() (carries "zebra_jax_class": LlamaConfig / HybridConfig;
                  "__class__" in directories saved before)
    params/       Orbax StandardCheckpointer checkpoint of the parameter tree as a pure dict
                  (string keys, e.g. {"layers": {"0": {"mixer": {"q_proj": {"kernel": ...}}}}})
    tokenizer.json, tokenizer_config.json, ...   the tokenizer as HF files (when given)
    generation_config.json, provenance.json      see model_files.py

A pure dict (not an `nnx.State`) keeps the on-disk tree independent of flax's State internals.
The directory is written under a temporary sibling name and renamed into place, so an interrupted
save never leaves a directory that looks complete.

Multi-process (jax.distributed): every process calls save_model / load_model at the same point
(Orbax saves and restores are collective). Host-local arrays (a teacher loaded on each process,
frozen parameters) are made global replicated arrays first, so Orbax writes one copy; globally
sharded arrays (a trained student) are written shard by shard by their owners. Process 0 alone
creates the temporary directory, writes config.json and renames it into place; barriers around
those steps keep every process from seeing a half-written directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from zebra_jax.config import CLASS_KEY, ConfigError, LlamaConfig
from zebra_jax.convert.errors import CheckpointError
from zebra_jax.convert.model_files import GENERATION_CONFIG, PROVENANCE, TOKENIZER_FILES
from zebra_jax._paths import check_output, remember_source, source_of
from zebra_jax.convert.hf import abstract_params, materialise, nonfinite_message, nonfinite_report
from zebra_jax.convert.model_files import write_model_files

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
# What a save_model directory may hold (init_report.json: scripts/init_hybrid.py); overwrite=True
# refuses a directory holding anything else (zebra_jax/_paths.py).
SAVED_MODEL_FILES = (
  CONFIG_FILE,
  PARAMS_DIR,
  GENERATION_CONFIG,
  PROVENANCE,
  "init_report.json",
  *TOKENIZER_FILES,
)


def _ours(cfg_path: str) -> bool:
  """Whether config.json at `cfg_path` was written by save_model (a corrupted one counts)."""
  if not os.path.isfile(cfg_path):
    return False
  try:
    with open(cfg_path) as f:
      cfg = json.load(f)
    return isinstance(cfg, dict) and (CLASS_KEY in cfg or "__class__" in cfg)
  except ValueError:
    return True  # ours but corrupted: let load_model report it


def is_saved_model(directory: str) -> bool:
  """True for a directory written by `save_model` (HF directories also have config.json)."""
  return os.path.isdir(os.path.join(directory, PARAMS_DIR)) and _ours(os.path.join(directory, CONFIG_FILE))


def is_incomplete_saved_model(directory: str) -> bool:
  """save_model's config.json without its params/ (read as an HF config it only confuses)."""
  return not os.path.isdir(os.path.join(directory, PARAMS_DIR)) and _ours(
    os.path.join(directory, CONFIG_FILE)
  )


def _param_tree(model: nnx.Module) -> dict:
  """{str key: ... : array} of every nnx.Param, keys stringified (nnx.List indices are ints)."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  tree: dict = {}
  for path, var in flat:
    node = tree
    for p in path[:-1]:
      node = node.setdefault(str(p), {})
    node[str(path[-1])] = var.get_value()
  return tree


def flatten_dotted(tree: dict, prefix: str = "") -> dict[str, object]:
  """{"a": {"b": 1}} -> {"a.b": 1} (checkpoint trees here; run configs in distill/experiment.py)."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}.{k}" if prefix else k
    if isinstance(v, dict):
      out.update(flatten_dotted(v, key))
    else:
      out[key] = v
  return out


def _sync(tag: str) -> None:
  """A barrier over every process (no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"zebra_jax.save_model: {tag}")


def _global_replicated(x) -> jax.Array:
  """A host-local value (identical on every process) as a global array replicated over every
  device of every process: Orbax refuses to write host-local arrays in a multi-process run."""
  host = np.asarray(x)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _savable(tree: dict) -> dict:
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(
    lambda x: x if isinstance(x, jax.Array) and not x.is_fully_addressable else _global_replicated(x), tree
  )


def save_model(
  model: nnx.Module,
  directory: str | os.PathLike,
  *,
  overwrite: bool = False,
  tokenizer=None,
  provenance: dict | None = None,
) -> str:
  """Writes `model.config` and the model's nnx.Param state to `directory`; returns its path.

  `tokenizer` (a transformers tokenizer or ByteTokenizer) is written as HF tokenizer files next to
  the weights, so that tools need no --tokenizer; generation_config.json always, provenance.json
  when `provenance` is given (model_files.py). All inside the same atomic save.
  `overwrite` replaces an earlier save_model directory; one holding other files, or the checkpoint
  `model` was loaded from, is refused (OutputPathError, zebra_jax/_paths.py).
  In a multi-process run every process must call it (collective); see the module docstring."""
  import orbax.checkpoint as ocp

  config = getattr(model, "config", None)
  if not isinstance(config, LlamaConfig):
    raise ValueError("save_model needs a model with a LlamaConfig/HybridConfig in model.config")
  # never over the checkpoint the model was read from, nor over files save_model did not write
  directory = check_output(directory, inputs=[source_of(model)], overwrite=overwrite, owned=SAVED_MODEL_FILES)
  other = {
    p: type(v).__name__
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.Param)))
    if not isinstance(v, nnx.RngState)
  }
  if other:
    raise ValueError(f"save_model stores nnx.Param only; the model also has {other}")

  primary = jax.process_index() == 0
  parent = os.path.dirname(directory)
  # One name for every process (they write into the same directory); a leftover from an
  # interrupted save is removed first: the destination is only ever replaced by a rename.
  tmp = os.path.join(parent, f".{os.path.basename(directory)}.tmp")
  old = os.path.join(parent, f".{os.path.basename(directory)}.old")
  tree = _savable(_param_tree(model))
  try:
    if primary:
      os.makedirs(parent, exist_ok=True)
      for d in (tmp, old):
        if os.path.exists(d):
          shutil.rmtree(d)
      os.makedirs(tmp)
      with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
        f.write(config.to_json())
      write_model_files(tmp, config, tokenizer, provenance)
    _sync(f"{directory} prepared")
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), tree)
      ckptr.wait_until_finished()
    _sync(f"{directory} written")
    if primary:  # swap: the earlier save is set aside, not deleted, until the new one is in place
      if os.path.exists(directory):
        os.rename(directory, old)
      os.rename(tmp, directory)
  finally:
    if primary:
      if os.path.exists(old) and not os.path.exists(directory):
        os.rename(old, directory)  # the new save did not make it in: the earlier one stays
      for d in (tmp, old):
        if os.path.exists(d):
          shutil.rmtree(d, ignore_errors=True)
  _sync(f"{directory} in place")  # nobody reads the directory before it is complete
  return directory


def load_config(directory: str) -> LlamaConfig:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{directory}: missing {CONFIG_FILE}; not a directory written by save_model")
  try:
    with open(path) as f:
      return LlamaConfig.from_json(f.read())
  except (ValueError, TypeError, KeyError, ConfigError) as e:
    raise CheckpointError(f"{path}: cannot be read as a model config ({type(e).__name__}: {e})") from None


def load_model(
  directory: str | os.PathLike,
  dtype: str | None = None,
  *,
  param_dtype: str | None = None,
  impl: str | None = None,
):
  """Restores a `save_model` directory into a CausalLM built abstractly (no random init).

  `dtype` overrides the compute dtype (and, unless `param_dtype` is given, the parameter dtype);
  `impl` overrides the op implementation. Raises CheckpointError naming what is missing or broken.
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise CheckpointError(f"{directory}: no such directory")
  config = load_config(directory)
  params_dir = os.path.join(directory, PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{directory}: missing the Orbax parameter checkpoint {PARAMS_DIR}/")

  abstract = abstract_params(config)  # shapes/dtypes as saved
  expected = abstract[3]
  # This process's first device (jax.devices()[0] belongs to process 0 in a multi-process run);
  # every process reads the whole tree, as every process holds the whole teacher / student.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target: dict = {}
  for path, sds in expected.items():
    node = target
    parts = path.split(".")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    # An explicit sharding: restore onto this host's device, whatever device saved it.
    node[parts[-1]] = jax.ShapeDtypeStruct(sds.shape, sds.dtype, sharding=device)

  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(params_dir)
      tree_meta = getattr(meta, "item_metadata", meta)
      tree_meta = getattr(tree_meta, "tree", tree_meta)
      if not isinstance(tree_meta, Mapping):
        raise CheckpointError(
          f"{params_dir}: the Orbax checkpoint metadata is missing or unreadable "
          "(corrupted or incomplete checkpoint)"
        )
      saved = {k: tuple(v.shape) for k, v in flatten_dotted(dict(tree_meta)).items()}
      problems = [f"missing {k}" for k in sorted(set(expected) - set(saved))]
      problems += [f"unexpected {k}" for k in sorted(set(saved) - set(expected))]
      problems += [
        f"{k}: saved shape {saved[k]}, config needs {tuple(expected[k].shape)}"
        for k in sorted(set(saved) & set(expected))
        if saved[k] != tuple(expected[k].shape)
      ]
      if problems:
        raise CheckpointError(f"{params_dir} does not match {CONFIG_FILE}:\n  - " + "\n  - ".join(problems))
      restored = ckptr.restore(params_dir, target)
  except CheckpointError:
    raise
  except Exception as e:  # orbax / tensorstore raise many types for truncated or missing files
    msg = str(e).strip().splitlines()
    raise CheckpointError(
      f"{params_dir}: cannot restore the Orbax checkpoint (corrupted or "
      f"incomplete?): {type(e).__name__}: {msg[0] if msg else ''}"
    ) from e

  values = flatten_dotted(restored)
  bad = nonfinite_report(values)
  if bad:
    raise CheckpointError(nonfinite_message(directory, bad))
  if dtype is not None or param_dtype is not None or impl is not None:
    new_dtype = dtype or config.dtype
    new = config.replace(
      dtype=new_dtype, param_dtype=param_dtype or dtype or config.param_dtype, impl=impl or config.impl
    )
    if new != config:
      return remember_source(materialise(new, values), directory)
  return remember_source(materialise(config, values, abstract), directory)


__all__ = ["save_model", "load_model", "load_config", "is_saved_model", "SAVED_MODEL_FILES"]
