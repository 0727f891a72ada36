"""Data for distillation: document sources, tokenisation, packing and the resumable Grain pipeline.

See docs/data.md. Main entry points: make_iterator / make_dataset (pipeline), open_source (specs),
load_tokenizer / ByteTokenizer (tokenize), default_corpus (corpus).
"""

from zebra_jax.data.corpus import default_corpus
from zebra_jax.data.packing import pack
from zebra_jax.data.pipeline import (
  PipelineIterator,
  heldout_mask,
  iterator_state,
  load_iterator_state,
  make_dataset,
  make_iterator,
  restore_iterator,
  save_iterator_state,
  split_indices,
)
from zebra_jax.data.sources import (
  ArrayRecordSource,
  ConcatSource,
  DataError,
  HFDatasetSource,
  JsonlSource,
  ListSource,
  TextSource,
)
from zebra_jax.data.specs import MixSource, open_mix, open_source
from zebra_jax.data.tokenize import ByteTokenizer, encode_document, load_tokenizer

__all__ = [
  "ArrayRecordSource",
  "ByteTokenizer",
  "ConcatSource",
  "DataError",
  "HFDatasetSource",
  "JsonlSource",
  "ListSource",
  "MixSource",
  "PipelineIterator",
  "TextSource",
  "default_corpus",
  "encode_document",
  "heldout_mask",
  "iterator_state",
  "load_iterator_state",
  "load_tokenizer",
  "make_dataset",
  "make_iterator",
  "open_mix",
  "open_source",
  "pack",
  "restore_iterator",
  "save_iterator_state",
  "split_indices",
]
