"""Packing: concatenate documents (each ending in EOS) and split the stream into rows of `seq_len` tokens.

This is the reference's packing (TRL ConstantLengthDataset with packing=True): KL on every token, no attention
reset at document boundaries, positions 0..T-1 in the model. Built on Grain's ConcatThenSplitIterDataset with
split_full_length_features=True, which is exactly concatenate-then-split and checkpoints its buffer compactly
(parent state + a slice of the document being split). Each row also carries
 segment_ids: 1, 2, ... for the document pieces in the row (0 = padding, only in a finite run's last row),
 positions:   the offset inside that piece (a document continued from the previous row restarts at 0),
so that a future masked-attention path can use them; the reference's path ignores both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset


def _rename(row: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {
    "tokens": np.asarray(row["tokens"], np.int32),
    "segment_ids": np.asarray(row["tokens_segment_ids"], np.int32),
    "positions": np.asarray(row["tokens_positions"], np.int32),
  }


def json_state(state: Any) -> Any:
  """A Grain iterator state as plain JSON data (tuples -> lists, numpy scalars -> python)."""
  if isinstance(state, Mapping):
    return {str(k): json_state(v) for k, v in state.items()}
  if isinstance(state, (list, tuple)):
    return [json_state(v) for v in state]
  if isinstance(state, np.generic):
    return state.item()
  return state


def grain_state(state: Any) -> Any:
  """Inverse of json_state where Grain needs it: ConcatThenSplit compares its `remainder_slices` with the
  tuple (-1, -1), so after a JSON round trip the lists must become tuples again (otherwise an empty remainder
  reads as a real one and a row is skipped on restore)."""
  if isinstance(state, Mapping):
    out = {}
    for k, v in state.items():
      if k == "remainder_slices" and isinstance(v, Mapping):
        out[k] = {f: tuple(sl) for f, sl in v.items()}
      else:
        out[k] = grain_state(v)
    return out
  if isinstance(state, list):
    return [grain_state(v) for v in state]
  return state


def pack(docs: grain.IterDataset, seq_len: int) -> grain.IterDataset:
  """docs: elements {"tokens": int32 [n]} -> rows {"tokens", "segment_ids", "positions"}: int32 [seq_len]."""
  if seq_len <= 1:
    raise ValueError(f"seq_len must be > 1 (next-token targets need two tokens), got {seq_len}")
  packed = ConcatThenSplitIterDataset(
    docs, length_struct={"tokens": seq_len}, split_full_length_features=True
  )
  return packed.map(_rename)
