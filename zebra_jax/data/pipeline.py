"""The Grain input pipeline for distillation: documents -> split -> process shard -> shuffle -> repeat ->
tokenise (+EOS) -> concatenate-then-split packing -> batches of (global_batch // process_count, seq_len) int32.

  it = make_iterator("corpus.jsonl", tokenizer, seq_len=2048, global_batch=64, seed=42)
  batch = next(it)   # {"tokens", "segment_ids", "positions"}: np.int32 [B_local, seq_len]
  state = it.get_state()          # JSON-able; also what grain.checkpoint.CheckpointSave(it) writes
  it2 = make_iterator(...same arguments...); it2.set_state(state)   # continues exactly where `it` stopped

Held-out split: document i is held out iff a splitmix64 hash of (split_seed, i) falls below heldout_fraction.
It depends only on the document's index, so it is identical for every seed/process count, for the jsonl and
the pre-tokenised ArrayRecord form of the same corpus, and stays put when documents are appended.
Weighted mixes (`source={"shakespeare": 1.0, "django_docs": 0.5}`, specs.MixSource): each source is
split on its own document indices first, then its train documents are repeated by its weight (passes
per epoch; fractional parts keep a hash-chosen subset), so a repeated document is never held out.
ILD / KD parts of the train split (`part="ild"|"kd"`, `ild_fraction`): a second hash of the index, salted
differently, puts a train document in the ILD part iff it falls below ild_fraction; the KD part is the rest.
Disjoint, deterministic, never touching the held-out split; ild_fraction 0 or 1 means no split (both parts
are the whole train split).
Shuffling: a Grain index shuffle per epoch (seeded by `seed`, reseeded each epoch) over each shard's documents.
Data shards: the split is cut into `num_shards` (default: the process count) interleaved shards, shard s
holding documents s, s + S, s + 2S, ...; each is shuffled and packed on its own and gives global_batch // S
rows of every batch, in shard order. Process p of P reads the contiguous shards [p S/P, (p+1) S/P), so the
global batch depends on S alone, not on P: a 1-process run with num_shards=2 sees the batches of a
2-process run. With S = P (the default) process p reads documents p, p + P, ... as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import grain
import numpy as np

from zebra_jax._io import write_json
from zebra_jax.data import packing, registry, specs, tokenize

STATE_VERSION = 1
SPLITS = ("train", "heldout")
PARTS = ("ild", "kd")
_ILD_SALT = 0x494C44  # "ILD": the ILD/KD hash must not be the held-out hash
_MIX_SALT = 0x4D4958  # "MIX": which documents a fractional mix weight keeps

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def _unit_hash(num_documents: int, salt: int) -> np.ndarray:
  """float64 [num_documents] in [0, 1): a splitmix64 hash of (salt, document index)."""
  idx = np.arange(num_documents, dtype=np.uint64)
  with np.errstate(over="ignore"):
    salted = idx ^ _splitmix64(np.full((), int(salt) % (1 << 64), np.uint64))
  return (_splitmix64(salted) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def heldout_mask(num_documents: int, heldout_fraction: float, split_seed: int = 0) -> np.ndarray:
  """bool [num_documents]: True for held-out documents (hash of (split_seed, index) < fraction)."""
  if not 0.0 <= heldout_fraction < 1.0:
    raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
  return _unit_hash(num_documents, split_seed) < heldout_fraction


def splits_parts(ild_fraction: float) -> bool:
  """Whether `ild_fraction` splits the train documents into ILD and KD parts (0 and 1: no split)."""
  if not 0.0 <= ild_fraction <= 1.0:
    raise ValueError(f"data.ild_fraction must be in [0, 1], got {ild_fraction}")
  return 0.0 < ild_fraction < 1.0


def ild_mask(num_documents: int, ild_fraction: float, split_seed: int = 0) -> np.ndarray:
  """bool [num_documents]: True for documents of the ILD part (a hash of the index, salted apart from
  the held-out hash, below ild_fraction). Only meaningful on train documents: part_indices applies it
  after the held-out split."""
  splits_parts(ild_fraction)
  return _unit_hash(num_documents, int(split_seed) ^ _ILD_SALT) < ild_fraction


def part_indices(
  num_documents: int, part: str | None, heldout_fraction: float, ild_fraction: float, split_seed: int = 0
) -> np.ndarray:
  """Train document indices (int64, ascending) of `part`: "ild", "kd", or None (the whole train split,
  as also for ild_fraction 0 or 1). Raises ValueError naming data.ild_fraction when the split would
  leave either part empty (checked for both parts, whichever is asked for)."""
  train = split_indices(num_documents, "train", heldout_fraction, split_seed)
  if part is not None and part not in PARTS:
    raise ValueError(f"part must be one of {PARTS} or None, got {part!r}")
  if part is None or not splits_parts(ild_fraction):
    return train
  in_ild = ild_mask(num_documents, ild_fraction, split_seed)[train]
  for name, n in (("ILD", int(in_ild.sum())), ("KD", int((~in_ild).sum()))):
    if n == 0:
      raise ValueError(
        f"data.ild_fraction={ild_fraction} leaves the {name} part of the {train.size} train documents "
        "empty; use a fraction further from 0 and 1 (or 0 / 1 for no split: both parts read all train data)"
      )
  return train[in_ild] if part == "ild" else train[~in_ild]


def _name_salt(name: str) -> int:
  return int.from_bytes(hashlib.sha1(str(name).encode("utf-8")).digest()[:8], "little")


def repeat_indices(indices: np.ndarray, weight: float, num_documents: int, salt: int) -> np.ndarray:
  """`indices` (original document indices of one source) repeated `weight` times: floor(weight) full
  copies, plus the documents whose hash of (salt, original index) falls below the fractional part
  (a fixed, hash-chosen subset: weight 0.25 = a quarter, 2.0 = every document twice)."""
  if not (weight >= 0 and np.isfinite(weight)):
    raise ValueError(f"a mix weight must be a finite number >= 0, got {weight}")
  full, frac = int(np.floor(weight)), float(weight - np.floor(weight))
  parts = [indices] * full
  if frac > 0:
    chosen = _unit_hash(num_documents, salt ^ _MIX_SALT)[indices] < frac
    parts.append(indices[chosen])
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def mix_indices(
  lengths: list[int],
  weights: list[float],
  split: str = "train",
  part: str | None = None,
  heldout_fraction: float = 0.01,
  ild_fraction: float = 0.0,
  split_seed: int = 0,
  names: list[str] | None = None,
) -> np.ndarray:
  """Global document indices (into the sources laid end to end) of a weighted mix.

  Each source k of lengths[k] documents is split on its OWN document indices, before any repetition:
  held-out iff heldout_mask(lengths[k], heldout_fraction, split_seed), ILD / KD by ild_mask, exactly
  as a corpus of that source alone. The "heldout" split takes each source's held-out documents once
  (sources of weight 0 are skipped); the train split (or part) repeats each source's train documents
  by its weight (repeat_indices), so a repeated document can never be a held-out one."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if part is not None and part not in PARTS:
    raise ValueError(f"part must be one of {PARTS} or None, got {part!r}")
  names = names or [str(k) for k in range(len(lengths))]
  use_parts = part is not None and splits_parts(ild_fraction)
  out, offset, counts = [], 0, {"ILD": 0, "KD": 0}
  for name, n, w in zip(names, lengths, weights):
    held = heldout_mask(n, heldout_fraction, split_seed)
    if split == "heldout":
      idx = np.flatnonzero(held) if w > 0 else np.zeros(0, np.int64)
    else:
      train = ~held
      if use_parts:
        ild = ild_mask(n, ild_fraction, split_seed)
        if w > 0:
          counts["ILD"] += int((train & ild).sum())
          counts["KD"] += int((train & ~ild).sum())
        train &= ild if part == "ild" else ~ild
      idx = repeat_indices(np.flatnonzero(train), float(w), n, _name_salt(name))
    out.append(idx.astype(np.int64) + offset)
    offset += n
  for pname, cnt in counts.items():
    if use_parts and cnt == 0:
      raise ValueError(
        f"data.ild_fraction={ild_fraction} leaves the {pname} part of the mix's train "
        "documents empty; use a fraction further from 0 and 1 (or 0 / 1 for no split)"
      )
  idx = np.concatenate(out) if out else np.zeros(0, np.int64)
  if idx.size == 0:
    raise ValueError(
      f"the {split!r} split{f' ({part} part)' if part else ''} of the mix {dict(zip(names, weights))} "
      f"is empty (heldout_fraction={heldout_fraction}, split_seed={split_seed})"
    )
  return idx


def split_indices(num_documents: int, split: str, heldout_fraction: float, split_seed: int = 0) -> np.ndarray:
  """Document indices (int64, ascending) of `split` ("train" or "heldout")."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  mask = heldout_mask(num_documents, heldout_fraction, split_seed)
  idx = np.flatnonzero(mask if split == "heldout" else ~mask)
  if idx.size == 0:
    raise ValueError(
      f"the {split!r} split is empty: {num_documents} documents with heldout_fraction={heldout_fraction} "
      f"(split_seed={split_seed}); use a larger corpus or change heldout_fraction"
    )
  return idx


def validation_documents(cfg_data, cache_dir=None, teacher_samples: str | None = None) -> dict[str, list]:
  """{source name: its validation documents} for the training sources of data.mix (data.source when
  the mix is empty): the documents of each source whose ORIGINAL index the held-out split puts aside
  (split_indices(len(source), "heldout", cfg_data.heldout_fraction, cfg_data.split_seed or
  0)), which training never reads. "teacher_samples" is included only when its artifact path is given
  (teacher_samples=...). A plain data.source is keyed by its spec ("default", a path, "source:NAME" ->
  NAME); a list of specs is one corpus and is keyed by the joined specs."""
  frac = float(cfg_data.get("heldout_fraction", 0.02))
  split_seed = int(cfg_data.get("split_seed", 0) or 0)
  mix = registry.parse_mix(
    cfg_data.get("mix", None) if hasattr(cfg_data, "get") else getattr(cfg_data, "mix", None)
  )
  out: dict[str, list] = {}
  if mix:
    entries = {}
    for k, w in mix.items():
      if k == registry.SAMPLES_TOKEN:
        if teacher_samples is None or not float(w) > 0:
          continue
        entries[teacher_samples] = w
      elif float(w) > 0:
        entries[k] = w
    m = specs.open_mix(entries, cache_dir)
    for name, src in zip(m.names, m.sources):
      key = registry.SAMPLES_TOKEN if teacher_samples is not None and name == teacher_samples else name
      idx = np.flatnonzero(heldout_mask(len(src), frac, split_seed))  # may be empty for a tiny source
      out[key] = [src[int(i)] for i in idx]
    return out
  spec = cfg_data.get("source", "default")
  spec_list = list(spec) if isinstance(spec, (list, tuple)) else [spec]
  spec_list = [s for s in spec_list if s != registry.SAMPLES_TOKEN]
  src = specs.open_source(spec_list if len(spec_list) > 1 else spec_list[0], cache_dir=cache_dir)
  key = "+".join(
    s[len(registry.SOURCE_PREFIX) :] if s.startswith(registry.SOURCE_PREFIX) else s for s in spec_list
  )
  out[key] = [src[int(i)] for i in np.flatnonzero(heldout_mask(len(src), frac, split_seed))]
  return out


def process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count) of this process; defaults to jax.process_index()/process_count()."""
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  return int(process_index), int(process_count)


class PipelineIterator(grain.DatasetIterator):
  """Top of the pipeline: yields batches and owns the checkpoint format.

  get_state() -> {"version", "pipeline": the arguments that decide the data order, "grain": Grain's nested
  state as JSON data}. set_state() refuses a state made by a differently configured pipeline (other seed,
  batch, seq_len, split, process layout or corpus size) rather than silently yielding different data.
  """

  def __init__(self, parent: grain.DatasetIterator, fingerprint: dict[str, Any]):
    super().__init__(parent)
    self.fingerprint = fingerprint

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def close(self) -> None:
    """Stops a prefetch thread (idempotent); the trainer's stages call it when a stage ends, so no
    thread outlives its stage or is torn down at interpreter exit."""
    close = getattr(self._parent, "close", None)
    if close is not None:
      close()

  def get_state(self) -> dict[str, Any]:
    return {
      "version": STATE_VERSION,
      "pipeline": dict(self.fingerprint),
      "grain": packing.json_state(self._parent.get_state()),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "grain" not in state:
      raise ValueError(f"not a zebra_jax data iterator state (version {STATE_VERSION}): {str(state)[:200]}")
    saved = state.get("pipeline", {})
    keys = set(self.fingerprint) | (set(saved) if isinstance(saved, dict) else set())
    diff = {
      k: (saved.get(k), self.fingerprint.get(k)) for k in keys if saved.get(k) != self.fingerprint.get(k)
    }
    if diff:
      detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
      raise ValueError(f"data iterator state was saved by a differently configured pipeline ({detail})")
    self._parent.set_state(packing.grain_state(state["grain"]))


class _PipelineDataset(grain.IterDataset):
  def __init__(self, parent: grain.IterDataset, fingerprint: dict[str, Any]):
    super().__init__(parent)
    self._fingerprint = fingerprint

  def __iter__(self) -> PipelineIterator:
    return PipelineIterator(self._parent.__iter__(), self._fingerprint)

  def __str__(self) -> str:
    return f"ZebraDataPipeline({self._fingerprint})"


def _check_tokenizer(source, tokenizer) -> int | None:
  """Vocabulary size to range-check ids against; checks pre-tokenised metadata against the tokenizer."""
  meta = getattr(source, "metadata", None) or {}
  if tokenizer is None:
    return meta.get("vocab_size")
  vocab = tokenize.vocab_size(tokenizer)
  if meta:
    if meta.get("vocab_size") is not None and int(meta["vocab_size"]) != vocab:
      raise ValueError(
        f"pre-tokenised data has vocab_size={meta['vocab_size']} (tokenizer {meta.get('tokenizer')!r}) but "
        f"the tokenizer {tokenize.tokenizer_name(tokenizer)!r} has {vocab}"
      )
    if meta.get("eos_token_id") is not None and int(meta["eos_token_id"]) != tokenize.eos_id(tokenizer):
      raise ValueError(
        f"pre-tokenised data has eos_token_id={meta['eos_token_id']} but the tokenizer has "
        f"{tokenize.eos_id(tokenizer)}"
      )
  return vocab


def selected_indices(
  src,
  split: str = "train",
  part: str | None = None,
  heldout_fraction: float = 0.01,
  ild_fraction: float = 0.0,
  split_seed: int = 0,
) -> np.ndarray:
  """The document indices of `src` that one epoch of `split` / `part` reads (repeated by mix weight)."""
  if hasattr(src, "mix_fingerprint"):  # a weighted mix (specs.MixSource): split per source, then repeat
    return mix_indices(
      src.lengths,
      src.weights,
      split,
      part if split == "train" else None,
      heldout_fraction,
      ild_fraction,
      split_seed,
      names=src.names,
    )
  if split == "train":
    return part_indices(len(src), part, heldout_fraction, ild_fraction, split_seed)
  return split_indices(len(src), split, heldout_fraction, split_seed)


def epoch_tokens(
  source: Any,
  tokenizer: Any,
  *,
  split: str = "train",
  part: str | None = None,
  heldout_fraction: float = 0.01,
  ild_fraction: float = 0.0,
  split_seed: int = 0,
  paragraphs: bool = False,
) -> dict:
  """Tokens in one epoch of what make_dataset reads with these arguments (EOS included): "tokens"
  counts repeated documents each time, "distinct_tokens" once. A stage reading T tokens makes
  T / distinct_tokens passes over its data (docs/data.md: the recipe keeps that at most 2)."""
  src = specs.open_source(source, paragraphs=paragraphs)
  tokenizer = tokenize.load_tokenizer(tokenizer) if tokenizer is not None else None
  indices = selected_indices(src, split, part, heldout_fraction, ild_fraction, split_seed)
  unique = [int(i) for i in np.unique(indices)]
  counts = dict(zip(unique, tokenize.document_lengths(tokenizer, (src[i] for i in unique))))
  return {
    "tokens": int(sum(counts[int(i)] for i in indices)),
    "distinct_tokens": int(sum(counts.values())),
    "documents": int(indices.size),
    "distinct_documents": len(counts),
  }


def make_dataset(
  source: Any,
  tokenizer: Any = None,
  *,
  seq_len: int,
  global_batch: int,
  split: str = "train",
  heldout_fraction: float = 0.01,
  split_seed: int = 0,
  seed: int = 0,
  num_epochs: int | None = None,
  shuffle: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
  num_shards: int | None = None,
  part: str | None = None,
  ild_fraction: float = 0.0,
  paragraphs: bool = False,
  prefetch: int = 0,
) -> grain.IterDataset:
  """The packed, sharded, shuffled batch dataset; iterate it for a PipelineIterator.

  source: a source object or a spec for specs.open_source (path, list of paths, "default", "hf:NAME",
    "source:NAME" of the registry, or a dict {name or spec: weight} for a weighted mix; see mix_indices).
  tokenizer: the teacher's tokenizer (or a spec for tokenize.load_tokenizer); may be None only when every
    document is already tokenised (ArrayRecord shards).
  num_epochs: None repeats forever (training); an int stops after that many passes, the last row padded
    (segment_ids 0) and an incomplete last batch dropped.
  process_index/process_count: default to jax's; each process gets global_batch // process_count rows.
  num_shards: data shards S (default: process_count); must be a multiple of process_count and divide
    global_batch. The global batch is the same for every process count with the same S.
  part, ild_fraction: "ild" / "kd" reads only that part of the train split (see part_indices); None (or
    ild_fraction 0 or 1) reads the whole split.
  prefetch: batches prepared ahead in a background thread (0 = none); the saved state is still the consumer's.
  """
  if int(seq_len) <= 1:
    raise ValueError(f"seq_len must be > 1, got {seq_len}")
  if int(global_batch) <= 0:
    raise ValueError(f"global_batch must be positive, got {global_batch}")
  pidx, pcount = process_info(process_index, process_count)
  if global_batch % pcount:
    raise ValueError(f"global_batch={global_batch} is not divisible by process_count={pcount}")
  shards = pcount if num_shards is None else int(num_shards)
  if shards < 1 or shards % pcount:
    raise ValueError(f"num_shards={num_shards} must be a positive multiple of process_count={pcount}")
  if global_batch % shards:
    raise ValueError(f"global_batch={global_batch} is not divisible by num_shards={shards}")
  if part is not None and split != "train":
    raise ValueError(f"part={part!r} splits the train documents; split={split!r} has no parts")
  if num_epochs is not None and int(num_epochs) <= 0:
    raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
  src = specs.open_source(source, paragraphs=paragraphs)
  if len(src) == 0:
    raise ValueError(f"empty corpus: {getattr(src, 'name', src)!r} has no documents")
  if tokenizer is not None:
    tokenizer = tokenize.load_tokenizer(tokenizer)
  vocab = _check_tokenizer(src, tokenizer)

  mix = src.mix_fingerprint() if hasattr(src, "mix_fingerprint") else None
  indices = selected_indices(src, split, part, heldout_fraction, ild_fraction, split_seed)
  mine = range(pidx * shards // pcount, (pidx + 1) * shards // pcount)
  for s in mine:
    if indices[s::shards].size == 0:
      raise ValueError(
        f"data shard {s} of {shards} (process {pidx} of {pcount}) gets no documents: the "
        f"{split!r} split{f' ({part} part)' if part else ''} has only {indices.size}"
      )
  name = getattr(src, "name", type(src).__name__)

  def load(doc_index) -> dict[str, np.ndarray]:
    doc_index = int(doc_index)
    where = f"{name} document {doc_index}"
    doc = src[doc_index]
    if tokenizer is None and not isinstance(doc, np.ndarray):
      raise ValueError(f"{where} is text: pass a tokenizer (only pre-tokenised data can go without one)")
    ids = tokenize.encode_document(tokenizer, doc, where=where)
    if vocab is not None and ids.size and (ids.max() >= vocab or ids.min() < 0):
      raise ValueError(f"{where}: token id {int(ids.max())} outside the vocabulary of size {vocab}")
    return {"tokens": ids}

  def shard_batches(s: int) -> grain.IterDataset:
    ds = grain.MapDataset.source(indices[s::shards])
    if shuffle:
      ds = ds.shuffle(seed=int(seed))
    ds = ds.repeat(num_epochs)  # reseeds the shuffle each epoch
    docs = ds.map(load).to_iter_dataset()
    return packing.pack(docs, int(seq_len)).batch(global_batch // shards, drop_remainder=True)

  if len(mine) == 1:  # the process's rows are one shard's (the state format of S = P)
    batches = shard_batches(mine[0])
  else:  # this process's shards side by side; a finite run ends with its shortest shard
    batches = grain.experimental.ZipIterDataset([shard_batches(s) for s in mine], strict=False)
    batches = batches.map(lambda rows: {k: np.concatenate([r[k] for r in rows]) for k in rows[0]})
  if prefetch < 0:
    raise ValueError(f"prefetch must be >= 0, got {prefetch}")
  if prefetch:
    batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=int(prefetch))
  fingerprint = {
    "num_documents": len(src),
    "split": split,
    "heldout_fraction": float(heldout_fraction),
    "split_seed": int(split_seed),
    "seed": int(seed),
    "shuffle": bool(shuffle),
    "num_epochs": num_epochs,
    "seq_len": int(seq_len),
    "global_batch": int(global_batch),
    "process_index": pidx,
    "process_count": pcount,
  }
  # Present only when they change the data, so states saved before these options existed still load.
  if shards != pcount:
    fingerprint["num_shards"] = shards
  if part is not None and splits_parts(ild_fraction):
    fingerprint.update(part=part, ild_fraction=float(ild_fraction))
  if mix is not None:  # [[name, weight, documents], ...]: resuming with another mix is refused
    fingerprint["mix"] = mix
  return _PipelineDataset(batches, fingerprint)


def make_iterator(source: Any, tokenizer: Any = None, **kwargs) -> PipelineIterator:
  """iter(make_dataset(...)): see make_dataset for the arguments."""
  return iter(make_dataset(source, tokenizer, **kwargs))


# --- iterator state as JSON (the training loop may instead hand the iterator to
# grain.checkpoint.CheckpointSave / CheckpointRestore inside an Orbax CheckpointManager) ---


def iterator_state(it: PipelineIterator) -> dict[str, Any]:
  """JSON-able state of the iterator (json.dumps works on it)."""
  return it.get_state()


def restore_iterator(it: PipelineIterator, state: dict[str, Any]) -> PipelineIterator:
  """Sets `it` (a freshly made iterator of the same pipeline) to `state`; returns it."""
  it.set_state(state)
  return it


def save_iterator_state(it: PipelineIterator, path: str | os.PathLike) -> None:
  """Writes the state as JSON, atomically (temp file + rename)."""
  write_json(path, iterator_state(it), indent=None)


def load_iterator_state(it: PipelineIterator, path: str | os.PathLike) -> PipelineIterator:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"data iterator state not found: {path}")
  with open(path) as f:
    return restore_iterator(it, json.load(f))
