"""Opening a data spec as a document source: paths, lists, "default", "source:NAME" (a registry
source), "hf:NAME" and weighted mixes {name or spec: weight}.

`open_source` and `open_mix` live together because each calls the other (a dict spec is a mix, a
mix's path entries are specs); they sit above `sources` (the source classes) and `registry` (the
catalogue of real text sources), which import neither.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from zebra_jax.data import registry
from zebra_jax.data.corpus import default_corpus
from zebra_jax.data.sources import (
  ARRAY_RECORD_SUFFIX,
  JSONL_SUFFIXES,
  TEXT_SUFFIXES,
  ArrayRecordSource,
  ConcatSource,
  DataError,
  HFDatasetSource,
  JsonlSource,
  ListSource,
  TextSource,
)

__all__ = ["MixSource", "open_mix", "open_source", "resolve_spec"]


def open_source(spec: Any, *, paragraphs: bool = False, cache_dir: str | None = None):
  """Builds a document source from a spec.

  spec: a source object (returned as is); a list of specs (concatenated); a dict {name or spec: weight}
  (a weighted mix, open_mix); "default" (the embedded default corpus, see
  zebra_jax.data.corpus); "source:NAME" (a source of zebra_jax.data.registry; held-out ones refused); "hf:NAME[:SPLIT]" (Hugging Face datasets); a *.jsonl/*.json file; a
  *.txt/*.md file; an ArrayRecord shard, glob or directory with shards (also cloud URLs); a directory of text
  files. `paragraphs` applies to text files.
  """
  if isinstance(spec, Mapping) or type(spec).__name__ in ("ConfigDict", "FrozenConfigDict"):
    return open_mix(dict(spec.items()), cache_dir, paragraphs=paragraphs)
  if isinstance(spec, (list, tuple)):
    srcs = [open_source(s, paragraphs=paragraphs, cache_dir=cache_dir) for s in spec]
    return srcs[0] if len(srcs) == 1 else ConcatSource(srcs)
  if not isinstance(spec, (str, os.PathLike)):
    if hasattr(spec, "__len__") and hasattr(spec, "__getitem__"):
      return spec
    raise TypeError(f"cannot build a document source from {type(spec).__name__}")
  spec = os.fspath(spec)
  if spec == "default":
    return ListSource(default_corpus(cache_dir), name="default")
  if spec.startswith("source:"):  # a registry source (held-out evaluation sources are refused)
    return resolve_spec(spec, "data.source", cache_dir)
  if spec.startswith("hf:"):
    name, _, split = spec[3:].partition(":")
    return HFDatasetSource(name, split or "train")
  if "://" in spec or ARRAY_RECORD_SUFFIX in spec:
    return ArrayRecordSource(spec)
  if spec.endswith(JSONL_SUFFIXES):
    return JsonlSource(spec)
  if spec.endswith(TEXT_SUFFIXES):
    return TextSource(spec, paragraphs=paragraphs)
  if os.path.isdir(spec):
    if any(f.endswith(ARRAY_RECORD_SUFFIX) for f in os.listdir(spec)):
      return ArrayRecordSource(spec)
    return TextSource(spec, paragraphs=paragraphs)
  if not os.path.exists(spec):
    raise FileNotFoundError(f"data source not found: {spec}")
  raise DataError(
    f"cannot tell the format of {spec}: use *.jsonl, *.txt/*.md, *{ARRAY_RECORD_SUFFIX}, a directory, "
    "'default', 'source:NAME' or 'hf:NAME'"
  )


class MixSource:
  """Documents of several sources, one after the other, with a weight per source (passes per epoch
  over its train documents; see pipeline.mix_indices). `names`, `weights`, `lengths` and `sources`
  are parallel lists; document i of source k is global index offsets[k] + i."""

  def __init__(self, names: Sequence[str], sources: Sequence, weights: Sequence[float]):
    if not names:
      raise ValueError("data.mix is empty")
    for n, w in zip(names, weights):
      if not (isinstance(w, (int, float)) and w >= 0 and math.isfinite(w)):
        raise ValueError(f"data.mix[{n!r}] = {w!r}: a weight must be a finite number >= 0")
      if w > registry.MAX_MIX_WEIGHT:
        raise ValueError(registry.mix_weight_error(n, w))
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
      raise ValueError(f"data.mix names {twice} more than once (give each source one weight)")
    if not any(w > 0 for w in weights):
      raise ValueError("data.mix: every weight is 0")
    self.names = list(names)
    self.weights = [float(w) for w in weights]
    self.sources = list(sources)
    self.lengths = [len(s) for s in self.sources]
    self._concat = ConcatSource(self.sources)
    self.offsets = [int(x) for x in self._concat._offsets[:-1]]
    self.metadata = self._concat.metadata
    self.name = "mix(" + ", ".join(f"{n}={w:g}" for n, w in zip(self.names, self.weights)) + ")"

  def __len__(self) -> int:
    return len(self._concat)

  def __getitem__(self, index: int):
    return self._concat[index]

  def mix_fingerprint(self) -> list:
    return [[n, w, ln] for n, w, ln in zip(self.names, self.weights, self.lengths)]

  def __repr__(self) -> str:
    return f"MixSource({self.name}, {len(self)} documents)"


def resolve_spec(spec: str, field: str = "data.source", cache_dir=None):
  """A "source:NAME" spec (or a bare registry name inside data.mix) -> ListSource of its documents;
  held-out / unknown names are refused."""
  name = spec[len(registry.SOURCE_PREFIX) :] if spec.startswith(registry.SOURCE_PREFIX) else spec
  registry.check_trainable([name], field)
  return ListSource(registry.source_documents(name, cache_dir), name=f"{registry.SOURCE_PREFIX}{name}")


def open_mix(mix: Mapping[str, float], cache_dir=None, *, paragraphs: bool = False) -> MixSource:
  """data.mix -> MixSource. A key is a registry source name ("django_docs" or "source:django_docs"),
  "default" (the Shakespeare corpus, same as "shakespeare" before dedup), or any other open_source spec
  (a jsonl path, e.g. the teacher-samples artifact that the run context substitutes for
  "teacher_samples")."""
  names, srcs, weights = [], [], []
  for key, w in mix.items():
    key = str(key)
    bare = key[len(registry.SOURCE_PREFIX) :] if key.startswith(registry.SOURCE_PREFIX) else key
    if bare in registry.SOURCES or key.startswith(registry.SOURCE_PREFIX):
      srcs.append(resolve_spec(bare, "data.mix", cache_dir))
    elif key == registry.SAMPLES_TOKEN:
      raise ValueError(
        "data.mix names 'teacher_samples': the run context replaces it by the samples "
        "stage's artifact; a library caller passes that jsonl path instead"
      )
    elif key == "default" or registry.is_path_spec(key) or os.path.exists(key):
      srcs.append(open_source(key, paragraphs=paragraphs, cache_dir=cache_dir))
    else:
      registry.check_trainable([bare], "data.mix", allow=(registry.SAMPLES_TOKEN, "default"))
    names.append(bare)
    weights.append(w)
  return MixSource(names, srcs, weights)
