"""Writing checkpoint directories: torch-free safetensors writer with sharding, tensor plans, tokenizer.

An export is first described as a *plan*: an ordered list of `PlannedTensor(name, shape, dtype, get)`
whose `get()` produces the numpy array only when it is written, so a large model is streamed to disk
one tensor at a time (host memory holds one tensor plus the parameters themselves).

safetensors layout (the documented format): 8-byte little-endian header length N, N bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {"format": "pt"}} padded with spaces
to a multiple of 8, then the tensors' raw little-endian bytes back to back in header order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import struct
import sys
from typing import Iterable, Callable, Sequence

import ml_dtypes
import numpy as np

from zebra_jax.convert.model_files import TOKENIZER_FILES as _TOKENIZER_FILES
from zebra_jax._paths import check_output
from zebra_jax.convert import CheckpointError, load_tokenizer
from zebra_jax.convert.model_files import has_tokenizer, write_tokenizer

_ST_NAMES = {
  np.dtype(np.float64): "F64",
  np.dtype(np.float32): "F32",
  np.dtype(np.float16): "F16",
  np.dtype(ml_dtypes.bfloat16): "BF16",
  np.dtype(np.int64): "I64",
  np.dtype(np.int32): "I32",
  np.dtype(np.int16): "I16",
  np.dtype(np.int8): "I8",
  np.dtype(np.uint8): "U8",
  np.dtype(np.bool_): "BOOL",
}
_NP_DTYPES = {
  "float32": np.dtype(np.float32),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
  "float16": np.dtype(np.float16),
}


def np_dtype(name: str) -> np.dtype:
  if name not in _NP_DTYPES:
    raise ValueError(f"dtype={name!r} must be one of {sorted(_NP_DTYPES)}")
  return _NP_DTYPES[name]


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
  """One tensor of an export: known by name/shape/dtype up front, produced by `get()` on write."""

  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  get: Callable[[], np.ndarray]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def parse_size(size: int | str) -> int:
  """'5GB' / '500MB' / '10KiB' / 1234 -> bytes (decimal for kB/MB/GB, binary for KiB/MiB/GiB)."""
  if isinstance(size, (int, np.integer)):
    if size <= 0:
      raise ValueError(f"max_shard_size must be > 0, got {size}")
    return int(size)
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
  if not m:
    raise ValueError(f"cannot parse size {size!r} (use e.g. 5GB, 500MB, 2GiB or a byte count)")
  value, unit = float(m.group(1)), (m.group(2) or "B").upper()
  mult = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
  }[unit]
  return max(1, int(value * mult))


def _header_bytes(tensors: Sequence[PlannedTensor]) -> bytes:
  header: dict = {"__metadata__": {"format": "pt"}}
  offset = 0
  for t in tensors:
    if t.dtype not in _ST_NAMES:
      raise ValueError(f"tensor {t.name}: dtype {t.dtype} cannot be stored in safetensors")
    header[t.name] = {
      "dtype": _ST_NAMES[t.dtype],
      "shape": list(t.shape),
      "data_offsets": [offset, offset + t.nbytes],
    }
    offset += t.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  return raw + b" " * (-len(raw) % 8)


def write_safetensors(path: str, tensors: Sequence[PlannedTensor]) -> None:
  """Writes one safetensors file, materialising each tensor only while it is written."""
  header = _header_bytes(tensors)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    for t in tensors:
      x = np.asarray(t.get())
      if tuple(x.shape) != tuple(t.shape) or x.dtype != t.dtype:
        raise AssertionError(f"{t.name}: produced {x.shape} {x.dtype}, planned {t.shape} {t.dtype}")
      x = np.ascontiguousarray(x)
      if sys.byteorder != "little":
        x = x.byteswap()
      f.write(x.tobytes())


def shard_plan(tensors: Sequence[PlannedTensor], max_shard_size: int) -> list[list[PlannedTensor]]:
  """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
  shards: list[list[PlannedTensor]] = [[]]
  size = 0
  for t in tensors:
    if shards[-1] and size + t.nbytes > max_shard_size:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  return shards


def write_weights(
  out_dir: str,
  tensors: Sequence[PlannedTensor],
  *,
  max_shard_size: int | str = "5GB",
  basename: str = "model",
) -> list[str]:
  """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`
  when the total exceeds `max_shard_size` (the transformers naming). Returns the files written."""
  names = [t.name for t in tensors]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"duplicate tensor names in export plan: {dup}")
  shards = shard_plan(tensors, parse_size(max_shard_size))
  if len(shards) == 1:
    write_safetensors(os.path.join(out_dir, f"{basename}.safetensors"), shards[0])
    return [f"{basename}.safetensors"]
  n = len(shards)
  files, weight_map = [], {}
  for i, shard in enumerate(shards):
    fname = f"{basename}-{i + 1:05d}-of-{n:05d}.safetensors"
    write_safetensors(os.path.join(out_dir, fname), shard)
    files.append(fname)
    weight_map.update({t.name: fname for t in shard})
  index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors))}, "weight_map": weight_map}
  with open(os.path.join(out_dir, f"{basename}.safetensors.index.json"), "w") as f:
    json.dump(index, f, indent=2, sort_keys=True)
  return files + [f"{basename}.safetensors.index.json"]


def write_pytorch_bin(out_dir: str, tensors: Sequence[PlannedTensor]) -> list[str]:
  """A single `pytorch_model.bin` (torch.save of a state dict); needs torch."""
  try:
    import torch
  except ImportError:
    raise ImportError("writing pytorch_model.bin needs PyTorch (pip install torch)") from None
  sd = {}
  for t in tensors:
    x = np.ascontiguousarray(t.get())
    if x.dtype == np.dtype(ml_dtypes.bfloat16):  # bf16 -> float32 bits -> torch bf16, exact
      f32 = (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
      sd[t.name] = torch.from_numpy(f32).to(torch.bfloat16)
    else:
      sd[t.name] = torch.from_numpy(x.copy())
  torch.save(sd, os.path.join(out_dir, "pytorch_model.bin"))
  return ["pytorch_model.bin"]


def write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def resolve_tokenizer(tokenizer):
  """What save_tokenizer will write, checked before any weight is: None, a directory holding
  tokenizer files (copied as they are), or a tokenizer object (a transformers tokenizer or
  ByteTokenizer; "byte", a .gguf, "smollm2" or a model directory without plain tokenizer files
  are loaded into one). Raises ValueError naming the source."""
  if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
      raise TypeError(
        "tokenizer must be a transformers tokenizer, a ByteTokenizer or a path, got "
        f"{type(tokenizer).__name__}"
      )
    return tokenizer
  src = os.fspath(tokenizer)
  if os.path.isdir(src) and has_tokenizer(src):
    return src
  try:
    return load_tokenizer(src)
  except Exception as e:  # noqa: BLE001  transformers raises many types for a missing tokenizer
    msg = str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"
    raise ValueError(f"tokenizer={src!r}: no tokenizer there ({msg})") from None


def save_tokenizer(tokenizer, out_dir: str) -> list[str]:
  """Writes what resolve_tokenizer returned: a directory's tokenizer files are copied, a tokenizer
  object is saved as HF files (model_files.write_tokenizer)."""
  tokenizer = resolve_tokenizer(tokenizer)
  if tokenizer is None:
    return []
  if isinstance(tokenizer, str):
    found = [f for f in _TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer, f))]
    for f in found:
      shutil.copyfile(os.path.join(tokenizer, f), os.path.join(out_dir, f))
    return found
  return write_tokenizer(tokenizer, out_dir)


# What an export directory may hold; overwrite=True refuses one holding anything else
# (zebra_jax/_paths.py): an export replaces an earlier export, never a user's own files.
EXPORT_FILES = (
  "config.json",
  "hybrid_config.json",
  "mamba_config.json",
  "generation_config.json",
  "model.safetensors",
  "model-*-of-*.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "modeling_*.py",
  "configuration_*.py",
  *_TOKENIZER_FILES,
)


def check_out_dir(
  out_dir: str | os.PathLike,
  overwrite: bool,
  inputs: Iterable = (),
  *,
  out_flag: str | None = None,
  overwrite_flag: str = "overwrite=True",
) -> str:
  """The absolute path of `out_dir` once it may be written: not one of `inputs` (the checkpoint,
  the tokenizer source), inside one or holding one (OutputPathError); empty, or with `overwrite`
  an earlier export (FileExistsError / OutputPathError)."""
  return check_output(
    out_dir,
    inputs=inputs,
    overwrite=overwrite,
    owned=EXPORT_FILES,
    out_flag=out_flag,
    overwrite_flag=overwrite_flag,
  )


def write_aside(out_dir: str, write: Callable[[str], object]) -> str:
  """All-or-nothing: `write(tmp)` fills a temporary sibling directory, which then replaces
  `out_dir` (an interrupted or failed export leaves `out_dir` as it was)."""
  parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
  tmp, old = os.path.join(parent, f".{base}.export-tmp"), os.path.join(parent, f".{base}.export-old")
  os.makedirs(parent, exist_ok=True)
  for d in (tmp, old):
    if os.path.exists(d):
      shutil.rmtree(d)
  try:
    os.makedirs(tmp)
    write(tmp)
    if os.path.exists(out_dir):
      os.rename(out_dir, old)
    os.rename(tmp, out_dir)
  finally:
    if os.path.exists(old) and not os.path.exists(out_dir):
      os.rename(old, out_dir)  # the new export did not make it in: the earlier one stays
    for d in (tmp, old):
      if os.path.exists(d):
        shutil.rmtree(d, ignore_errors=True)
  return out_dir


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> str:
  """`out_dir` created, emptied first when it holds an earlier export and `overwrite` (anything
  else in it is refused, see check_out_dir)."""
  out_dir = check_out_dir(out_dir, overwrite)
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    shutil.rmtree(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  return out_dir


__all__ = [
  "PlannedTensor",
  "parse_size",
  "write_safetensors",
  "write_weights",
  "write_pytorch_bin",
  "shard_plan",
  "save_tokenizer",
  "resolve_tokenizer",
  "write_json",
  "prepare_out_dir",
  "check_out_dir",
  "write_aside",
  "np_dtype",
  "EXPORT_FILES",
]
