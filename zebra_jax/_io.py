"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never a
torn one. Every JSON / JSONL artifact of the project is written through here."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
  """Opens a temporary sibling of `path` for writing; it replaces `path` when the block ends
  without an error and is removed otherwise. The parent directory is created if missing."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"  # per process: two writers never share a temporary file
  try:
    with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
      yield f
    os.replace(tmp, path)  # atomic within one filesystem
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def join_lines(part_paths, out: str | os.PathLike) -> int:
  """Writes the lines of `part_paths`, in order, to `out` atomically; returns how many."""
  n = 0
  with atomic_write(out) as f:
    for path in part_paths:
      with open(path, encoding="utf-8") as part:
        for line in part:
          f.write(line)
          n += 1
  return n


def _plain(o):
  # numpy / jax scalars as numbers, anything else JSON cannot write as its str (results rows)
  return o.item() if hasattr(o, "item") else str(o)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
  """`obj` as JSON (a str is written as it is), atomically; numpy scalars as numbers."""
  with atomic_write(path) as f:
    f.write(obj if isinstance(obj, str) else json.dumps(obj, indent=indent, default=_plain))
