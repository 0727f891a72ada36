"""Output paths that lose nothing: the one check behind every tool that writes a model directory
(`save_model`, `export_pretrained`, scripts/convert.py, export.py, init_hybrid.py).

An output is refused when it is one of the inputs, lies inside one, or holds one (resolved real
paths, so symlinks and `..` do not hide it; for a .gguf file its directory holds it). `overwrite`
replaces only an earlier output of the same tool: a directory holding anything the tool does not
write (`owned` names and patterns) is refused, so a user's own files are never deleted. The tools
write aside and rename into place, so a failed write leaves the old output as it was.

Where a model came from is remembered for the library functions (`remember_source`, set by
`from_pretrained` / `load_model`), so `save_model(model, <its own source>)` is refused too.
"""

from __future__ import annotations

import fnmatch
import os
import weakref
from typing import Iterable, Sequence


class OutputPathError(ValueError):
  """An output path that would destroy an input or files the tool did not write."""


_SOURCES: dict[int, tuple[weakref.ref, str]] = {}


def remember_source(model, path: str | os.PathLike):
  """Records the file or directory `model` was read from (for `source_of`); returns `model`."""
  key = id(model)
  try:
    ref = weakref.ref(model, lambda _: _SOURCES.pop(key, None))
  except TypeError:  # not weak-referenceable: nothing to remember
    return model
  _SOURCES[key] = (ref, os.path.realpath(os.path.expanduser(os.fspath(path))))
  return model


def source_of(model) -> str | None:
  """The real path `model` was loaded from by from_pretrained / load_model, else None."""
  entry = _SOURCES.get(id(model))
  return entry[1] if entry is not None and entry[0]() is model else None


def _real(path) -> str:
  return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _within(path: str, root: str) -> bool:
  """Whether real path `path` is `root` or below it (by components: /a/bc is not below /a/b)."""
  try:
    return os.path.commonpath([path, root]) == root
  except ValueError:  # different drives
    return False


def _is_name(src) -> bool:
  """ "byte" and the named checkpoints are read as names before any file of that name."""
  if not isinstance(src, str):
    return False
  # lazy: pulls in jax, flax, optax, which importing this module does not
  from zebra_jax.convert import NAMED_CHECKPOINTS

  return src == "byte" or src.lower() in NAMED_CHECKPOINTS


def overlap(out, src) -> str | None:
  """How output `out` collides with input `src` ('is', 'is inside' or 'holds'), None if it does
  not or `src` is not a path on disk (a name such as smollm2 or byte)."""
  if src is None or _is_name(src) or not os.path.exists(os.path.expanduser(os.fspath(src))):
    return None
  o, s = _real(out), _real(src)
  if o == s:
    return "is"
  if _within(s, o):
    return "holds"
  if _within(o, s):
    return "is inside"
  return None


def unowned(directory: str, owned: Sequence[str]) -> list[str]:
  """The entries of `directory` that match none of the `owned` names / fnmatch patterns."""
  return sorted(
    e + ("/" if os.path.isdir(os.path.join(directory, e)) else "")
    for e in os.listdir(directory)
    if not any(fnmatch.fnmatchcase(e, p) for p in owned)
  )


def check_output(
  out: str | os.PathLike,
  *,
  inputs: Iterable = (),
  overwrite: bool = False,
  owned: Sequence[str] | None = None,
  out_flag: str | None = None,
  overwrite_flag: str = "overwrite=True",
) -> str:
  """The absolute path of output directory `out` once it may be written; raises OutputPathError
  (an input would be lost, or files the tool did not write) or FileExistsError (not a directory;
  not empty without `overwrite`). `owned`: the names the tool writes (None: any, for callers that
  never hold user files); `out_flag` / `overwrite_flag` name the options in the messages."""
  path = os.path.abspath(os.path.expanduser(os.fspath(out)))
  name = f"{out_flag} {path}" if out_flag else path
  for src in inputs:
    how = overlap(path, src)
    if how:
      where = {
        "is": "is the input itself",
        "is inside": f"is inside the input {_real(src)}",
        "holds": f"holds the input {_real(src)}",
      }[how]
      raise OutputPathError(
        f"{name} {where}: an output must not be, hold or lie inside an input; choose another directory"
      )
  if os.path.lexists(path):
    if not os.path.isdir(path):
      raise FileExistsError(f"{name} exists and is not a directory")
    if os.listdir(path):
      if not overwrite:
        raise FileExistsError(f"{name} is not empty; pass {overwrite_flag} to replace it")
      stray = unowned(path, owned) if owned is not None else []
      if stray:
        shown = ", ".join(stray[:8]) + (f" and {len(stray) - 8} more" if len(stray) > 8 else "")
        raise OutputPathError(
          f"{name} holds files zebra-jax did not write ({shown}); "
          f"{overwrite_flag} replaces only an earlier output: move them or "
          "choose another directory"
        )
  return path


__all__ = ["OutputPathError", "check_output", "overlap", "unowned", "remember_source", "source_of"]
