"""Document sources: random-access sequences of documents that Grain's MapDataset.source can read.

Each source has `__len__`, `__getitem__(i) -> document` and `name`; a document is plain text (str), a chat
({"messages": [...]}) or, for pre-tokenised ArrayRecord shards, an int32 array of token ids (EOS included).

- JsonlSource: *.jsonl, one object per line, {"text": ...} or {"messages": [{"role", "content"}, ...]}.
- TextSource: plain text files; one document per file (default) or per blank-line-separated paragraph.
- ArrayRecordSource: shards written by scripts/pretokenize.py (local paths or etils.epath URLs such as gs://).
- HFDatasetSource: a Hugging Face `datasets` dataset (hub name, local `save_to_disk` dir, or a loaded object).
- ListSource / ConcatSource: in-memory lists, and several sources read one after the other.
`zebra_jax.data.specs.open_source(spec)` builds one from a spec (a path, a list, a mix, "default", ...).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


ARRAY_RECORD_SUFFIX = ".array_record"
METADATA_FILE = "metadata.json"
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".json")


class DataError(ValueError):
  """A data file or spec that cannot be read as documents; the message names the file (and line)."""


def _read_text(path: str) -> str:
  """A file's UTF-8 text; a binary file is refused by name (not a bare UnicodeDecodeError)."""
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise DataError(
      f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
      f"data files are UTF-8 *.jsonl / *.txt / *.md, or *{ARRAY_RECORD_SUFFIX} shards "
      "from scripts/pretokenize.py"
    ) from None


class ListSource:
  """Documents held in memory."""

  def __init__(self, documents: Sequence[Any], name: str = "list"):
    self._docs = list(documents)
    self.name = name
    self.metadata = None

  def __len__(self) -> int:
    return len(self._docs)

  def __getitem__(self, index: int):
    return self._docs[index]

  def __repr__(self) -> str:
    return f"ListSource({self.name!r}, {len(self)} documents)"


def _check_exists(path: str, what: str) -> None:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found: {path}")


def _validate_messages(messages: Any, where: str) -> None:
  if not isinstance(messages, list) or not messages:
    raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
  for i, m in enumerate(messages):
    if (
      not isinstance(m, Mapping)
      or not isinstance(m.get("role"), str)
      or not isinstance(m.get("content"), str)
    ):
      raise DataError(f"{where}: message {i} must have string 'role' and 'content', got {m!r}")


def parse_record(obj: Any, where: str, text_field: str = "text", messages_field: str = "messages"):
  """One jsonl/dataset row -> a document (str or {"messages": [...]}), or ValueError naming `where`."""
  if not isinstance(obj, Mapping):
    raise DataError(
      f"{where}: expected a JSON object with '{text_field}' or '{messages_field}', got {type(obj).__name__}"
    )
  if text_field in obj and obj[text_field] is not None:
    if not isinstance(obj[text_field], str):
      raise DataError(f"{where}: '{text_field}' must be a string, got {type(obj[text_field]).__name__}")
    return obj[text_field]
  if messages_field in obj and obj[messages_field] is not None:
    _validate_messages(obj[messages_field], where)
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in obj[messages_field]]}
  raise DataError(f"{where}: line has neither '{text_field}' nor '{messages_field}' (keys: {sorted(obj)})")


class JsonlSource:
  """JSON-lines files read eagerly (validated on load, so errors name the file and line).

  Blank lines are skipped. Large corpora belong in ArrayRecord shards (scripts/pretokenize.py), which are read
  lazily.
  """

  def __init__(self, paths: str | Sequence[str], text_field: str = "text", messages_field: str = "messages"):
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
      raise DataError("JsonlSource: no files given")
    self._docs: list[Any] = []
    for path in map(os.fspath, paths):
      _check_exists(path, "jsonl file")
      for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
          continue
        where = f"{path}:{lineno}"
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{where}: invalid JSON ({e.msg})") from None
        self._docs.append(parse_record(obj, where, text_field, messages_field))
    self.name = ",".join(paths)
    self.metadata = None

  def __len__(self) -> int:
    return len(self._docs)

  def __getitem__(self, index: int):
    return self._docs[index]

  def __repr__(self) -> str:
    return f"JsonlSource({self.name!r}, {len(self)} documents)"


def split_paragraphs(text: str) -> list[str]:
  """Paragraphs = runs of non-blank lines separated by one or more blank (whitespace-only) lines."""
  return [p.strip("\n") for p in re.split(r"\n(?:[ \t]*\n)+", text.replace("\r\n", "\n")) if p.strip()]


class TextSource:
  """Plain text files (UTF-8). Directories are searched recursively for *.txt / *.md / *.text, sorted.

  paragraphs=False (default): one document per file, since a file is usually one coherent text and packing
  concatenates documents anyway. paragraphs=True: one document per blank-line-separated paragraph.
  Whitespace-only documents are dropped.
  """

  def __init__(self, paths: str | Sequence[str], paragraphs: bool = False):
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[str] = []
    for path in map(os.fspath, paths):
      _check_exists(path, "text file or directory")
      if os.path.isdir(path):
        found = sorted(
          os.path.join(root, f)
          for root, _, names in os.walk(path)
          for f in names
          if f.endswith(TEXT_SUFFIXES)
        )
        if not found:
          raise DataError(f"TextSource: no {'/'.join(TEXT_SUFFIXES)} files under directory {path}")
        files.extend(found)
      else:
        files.append(path)
    self._docs: list[str] = []
    for path in files:
      text = _read_text(path)
      if paragraphs:
        self._docs.extend(split_paragraphs(text))
      elif text.strip():
        self._docs.append(text)
    self.name = ",".join(map(os.fspath, paths))
    self.metadata = None

  def __len__(self) -> int:
    return len(self._docs)

  def __getitem__(self, index: int):
    return self._docs[index]

  def __repr__(self) -> str:
    return f"TextSource({self.name!r}, {len(self)} documents)"


def _epath(path: str):
  from etils import epath

  return epath.Path(path)


def resolve_array_record_paths(paths: str | Sequence[str]) -> tuple[list[str], dict | None]:
  """Expands directories and glob patterns into a sorted list of shard paths; reads metadata.json if present."""
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  if not paths:
    raise DataError("ArrayRecordSource: no paths given")
  shards: list[str] = []
  metadata = None
  for raw in map(os.fspath, paths):
    p = _epath(raw)
    if any(c in p.name for c in "*?["):
      found = sorted(str(x) for x in p.parent.glob(p.name))
      if not found:
        raise FileNotFoundError(f"no ArrayRecord shards match {raw}")
      shards.extend(found)
      meta_dir = p.parent
    elif p.is_dir():
      found = sorted(str(x) for x in p.glob(f"*{ARRAY_RECORD_SUFFIX}"))
      if not found:
        raise FileNotFoundError(f"no *{ARRAY_RECORD_SUFFIX} shards in directory {raw}")
      shards.extend(found)
      meta_dir = p
    elif p.exists():
      shards.append(str(p))
      meta_dir = p.parent
    else:
      raise FileNotFoundError(f"ArrayRecord shard or directory not found: {raw}")
    meta_path = meta_dir / METADATA_FILE
    if meta_path.exists():
      meta = json.loads(meta_path.read_text())
      if metadata is not None and _tokenizer_fields(meta) != _tokenizer_fields(metadata):
        raise DataError(f"ArrayRecord shards were made with different tokenizers: {meta_path} vs earlier")
      metadata = meta
  return shards, metadata


def _tokenizer_fields(meta: Mapping[str, Any]) -> tuple:
  return meta.get("vocab_size"), meta.get("eos_token_id")


class ArrayRecordSource:
  """Pre-tokenised documents in ArrayRecord shards: each record is one document's int32 little-endian token ids
  (EOS included), as written by scripts/pretokenize.py. Shards are read in sorted order, so document i here is
  document i of the corpus that was tokenised."""

  def __init__(self, paths: str | Sequence[str], reader_options: dict[str, str] | None = None):
    import grain

    self.paths, self.metadata = resolve_array_record_paths(paths)
    self._source = grain.sources.ArrayRecordDataSource(self.paths, reader_options=reader_options)
    self._dtype = np.dtype((self.metadata or {}).get("dtype", "<i4"))
    self.name = ",".join(self.paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> np.ndarray:
    return np.frombuffer(self._source[index], dtype=self._dtype).astype(np.int32)

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} documents)"


def _import_datasets():
  try:
    import datasets  # type: ignore
  except ImportError as e:
    raise ImportError(
      "Hugging Face `datasets` is not installed; `pip install datasets` to read hub/saved datasets, "
      "or convert the data to jsonl / ArrayRecord (scripts/pretokenize.py)"
    ) from e
  return datasets


class HFDatasetSource:
  """A Hugging Face `datasets` dataset as a document source.

  `dataset` may be a hub name, a local directory written by `save_to_disk` (loaded with `load_from_disk`), a
  local dataset script/data directory (`load_dataset(path)`), or an already-loaded object with `__len__` and
  `__getitem__` returning rows (dicts). Rows need `text_field` (str) or `messages_field` (chat list).
  """

  def __init__(
    self,
    dataset: Any,
    split: str | None = "train",
    *,
    name: str | None = None,
    text_field: str = "text",
    messages_field: str = "messages",
    **load_kwargs,
  ):
    if isinstance(dataset, (str, os.PathLike)):
      label = os.fspath(dataset)
      datasets = _import_datasets()
      if os.path.isdir(label) and (
        os.path.exists(os.path.join(label, "state.json"))
        or os.path.exists(os.path.join(label, "dataset_dict.json"))
      ):
        dataset = datasets.load_from_disk(label)
      else:
        try:
          dataset = datasets.load_dataset(label, name, split=split, **load_kwargs)
        except Exception as e:  # network, auth, missing split: say which dataset failed
          raise RuntimeError(f"could not load Hugging Face dataset {label!r} (split={split!r}): {e}") from e
      if isinstance(dataset, datasets.DatasetDict):  # load_from_disk of a dict of splits
        if split not in dataset:
          raise DataError(f"dataset {label!r} has splits {list(dataset.keys())}, not {split!r}")
        dataset = dataset[split]
    else:
      info = getattr(dataset, "info", None)
      label = getattr(info, "dataset_name", None) or type(dataset).__name__
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
      raise TypeError(
        f"HFDatasetSource needs a random-access dataset (len + indexing), got {type(dataset).__name__}"
      )
    self._ds = dataset
    self._text_field = text_field
    self._messages_field = messages_field
    self.name = str(label)
    self.metadata = None

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int):
    return parse_record(self._ds[index], f"{self.name}[{index}]", self._text_field, self._messages_field)

  def __repr__(self) -> str:
    return f"HFDatasetSource({self.name!r}, {len(self)} documents)"


class ConcatSource:
  """Several sources read one after the other (document indices are offset by the earlier sources' lengths)."""

  def __init__(self, sources: Sequence[Any]):
    if not sources:
      raise DataError("ConcatSource: no sources given")
    self.sources = list(sources)
    self._offsets = np.cumsum([0] + [len(s) for s in self.sources])
    metas = [s.metadata for s in self.sources if getattr(s, "metadata", None)]
    if any(_tokenizer_fields(m) != _tokenizer_fields(metas[0]) for m in metas):
      raise DataError("ConcatSource: pre-tokenised sources were made with different tokenizers")
    self.metadata = metas[0] if metas else None
    self.name = "+".join(s.name for s in self.sources)

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(index)
    k = int(np.searchsorted(self._offsets, index, side="right")) - 1
    return self.sources[k][index - int(self._offsets[k])]

  def __repr__(self) -> str:
    return f"ConcatSource({self.sources!r})"
