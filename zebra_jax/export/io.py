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
from typing import Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

_ST_NAMES = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}


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
  mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}[unit]
  return max(1, int(value * mult))


def _header_bytes(tensors: Sequence[PlannedTensor]) -> bytes:
  header: dict = {"__metadata__": {"format": "pt"}}
  offset = 0
  for t in tensors:
    if t.dtype not in _ST_NAMES:
      raise ValueError(f"tensor {t.name}: dtype {t.dtype} cannot be stored in safetensors")
    header[t.name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                      "data_offsets": [offset, offset + t.nbytes]}
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


def write_weights(out_dir: str, tensors: Sequence[PlannedTensor], *, max_shard_size: int | str = "5GB",
                  basename: str = "model") -> list[str]:
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


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json")


def save_tokenizer(tokenizer, out_dir: str) -> list[str]:
  """A transformers tokenizer (save_pretrained) or a directory whose tokenizer files are copied."""
  if tokenizer is None:
    return []
  if isinstance(tokenizer, (str, os.PathLike)):
    src = os.fspath(tokenizer)
    if not os.path.isdir(src):
      raise ValueError(f"tokenizer={src!r} is not a directory of tokenizer files")
    found = [f for f in _TOKENIZER_FILES if os.path.isfile(os.path.join(src, f))]
    if not found:
      raise ValueError(f"{src} holds none of the tokenizer files {list(_TOKENIZER_FILES)}")
    for f in found:
      shutil.copyfile(os.path.join(src, f), os.path.join(out_dir, f))
    return found
  if not hasattr(tokenizer, "save_pretrained"):
    raise TypeError("tokenizer must be a transformers tokenizer or a directory, got "
                    f"{type(tokenizer).__name__}")
  return list(tokenizer.save_pretrained(out_dir))


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> str:
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir):
    if not os.path.isdir(out_dir):
      raise FileExistsError(f"{out_dir} exists and is not a directory")
    if os.listdir(out_dir):
      if not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace its contents")
      shutil.rmtree(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  return out_dir


__all__ = ["PlannedTensor", "parse_size", "write_safetensors", "write_weights", "write_pytorch_bin",
           "shard_plan", "save_tokenizer", "write_json", "prepare_out_dir", "np_dtype"]
