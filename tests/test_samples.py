"""The `samples` stage: teacher-generated training text (distill/samples.py).

The continuation is checked against a greedy loop (tests/_oracles.py) over the model's full forward (top_k=1
makes sampling greedy), the prompts against the train split, and resume against part-file mtimes.
"""

import json
import os

import numpy as np
import pytest
from _oracles import greedy_by_full_forward
from _runs import load_config_file

from zebra_jax.data import ByteTokenizer, default_corpus
from zebra_jax.data.pipeline import split_indices
from zebra_jax.distill import samples as samples_lib
from zebra_jax.distill.config import RunConfigError, validate
from zebra_jax.distill.pipeline import run_pipeline


def _tiny_config():
  c = load_config_file("tiny")
  c.data.source = ("default", "teacher_samples")
  c.samples.update(num_samples=5, batch_size=2, prompt_tokens=12, max_new_tokens=6, temperature=1.0, top_k=1)
  c.stages = ("teacher", "samples")
  return c


@pytest.mark.parametrize(
  "rounds", [dict(), dict(round_tokens=2, round_batches=2)], ids=["one_call_per_batch", "in_rounds"]
)
def test_samples_stage_writes_greedy_continuations_of_train_prompts(tmp_path, rounds):
  """In rounds (2 new tokens per round, batches of 2 regrouped over parts of 2 batches), greedy
  continuations are the same as in one call: a continuation depends on its prefix only."""
  cfg = _tiny_config()
  cfg.samples.update(**rounds)
  run_pipeline(cfg, str(tmp_path), progress=False)
  path = tmp_path / samples_lib.ARTIFACT
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert len(rows) == cfg.samples.num_samples

  tok = ByteTokenizer()
  prompts = samples_lib.make_prompts(
    cfg, tok, cfg.samples.num_samples, cfg.samples.prompt_tokens, cfg.seed + 7
  )
  docs = default_corpus()
  train = split_indices(len(docs), "train", cfg.data.heldout_fraction)
  train_text = "\x00".join(docs[i] for i in train)
  from zebra_jax.convert.orbax_io import load_model

  teacher = load_model(str(tmp_path / "teacher" / "model"), dtype="float32")
  eos = teacher.config.eos_token_id
  for prompt, row in zip(prompts, rows):
    ptext = tok.decode(prompt)
    assert len(prompt) == cfg.samples.prompt_tokens
    assert ptext in train_text, "prompt is not a window of a training document"
    new = [t for t in greedy_by_full_forward(teacher, prompt, cfg.samples.max_new_tokens) if t != eos]
    assert row["text"] == tok.decode(prompt + new)


def test_a_samples_cache_window_writes_the_same_samples_from_a_shorter_cache(tmp_path, monkeypatch):
  """samples.cache_window reaches generate: the decode loop runs on the prefill's 128 rows instead of
  max_len's 256 (prompts padded to PROMPT_BUCKET), and the samples are the ones the full cache writes."""
  from zebra_jax.infer import decode as decode_lib

  rows_seen, real = [], decode_lib.decode_loop

  def spy(state, carry, *args, **kw):
    rows_seen.append(carry.cache.max_len)
    return real(state, carry, *args, **kw)

  monkeypatch.setattr(decode_lib, "decode_loop", spy)
  full_cfg, win_cfg = _tiny_config(), _tiny_config()
  win_cfg.samples.cache_window = 16
  run_pipeline(full_cfg, str(tmp_path / "full"), progress=False)
  assert set(rows_seen) == {256}
  rows_seen.clear()
  run_pipeline(win_cfg, str(tmp_path / "win"), progress=False)
  assert set(rows_seen) == {128}
  read = lambda d: (tmp_path / d / samples_lib.ARTIFACT).read_text()
  assert read("win") == read("full")


def test_samples_resume_regenerates_only_missing_parts(tmp_path):
  cfg = _tiny_config()
  run_pipeline(cfg, str(tmp_path), progress=False)
  art = tmp_path / samples_lib.ARTIFACT
  first = art.read_text()
  parts = sorted((tmp_path / "samples" / "parts").glob("part-*.jsonl"))
  assert len(parts) == 3  # 5 samples in batches of 2
  os.remove(art)
  os.remove(parts[1])
  kept = {p: os.path.getmtime(p) for p in (parts[0], parts[2])}
  run_pipeline(cfg, str(tmp_path), progress=False)
  assert art.read_text() == first
  assert all(os.path.getmtime(p) == t for p, t in kept.items())


def _repeats(text: str) -> float:
  """Independent of prompts.repeated_ngram_share: lower-case word 4-grams seen before, over all."""
  import collections

  w = text.lower().split()
  counts = collections.Counter(" ".join(w[i : i + 4]) for i in range(len(w) - 3))
  total = sum(counts.values())
  return sum(c - 1 for c in counts.values()) / total if total > 1 else 0.0


def test_max_repetition_drops_looping_samples_from_the_parts_without_generating(tmp_path):
  """A workdir holding the parts of an earlier run (here written by hand: the tiny byte-level
  teacher writes no words), with samples.max_repetition set: the stage generates nothing (the parts
  stay as they are) and writes the artifact without the samples that repeat more of their word
  4-grams than the limit, in part order."""
  normal = [
    f"Sample {i} reads like prose: the river bends north past the mill and the old bridge." for i in range(3)
  ]
  loops = [f"Loop {i}: " + "I am so glad to have you here. " * 8 for i in range(2)]
  rows = [[normal[0], loops[0]], [loops[1], normal[1]], [normal[2]]]  # 5 samples in batches of 2
  assert all(_repeats(t) < 0.1 for t in normal) and all(_repeats(t) > 0.6 for t in loops)
  parts = tmp_path / "samples" / "parts"
  parts.mkdir(parents=True)
  for b, texts in enumerate(rows):
    (parts / f"part-{b:05d}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  times = {p: os.path.getmtime(p) for p in parts.iterdir()}
  cfg = _tiny_config()
  cfg.samples.max_repetition = 0.3
  run_pipeline(cfg, str(tmp_path), progress=False)
  got = [json.loads(l)["text"] for l in (tmp_path / samples_lib.ARTIFACT).read_text().splitlines()]
  assert got == normal
  assert {p: os.path.getmtime(p) for p in parts.iterdir()} == times
  # and 0 keeps every sample
  stats = samples_lib.write_artifact(
    sorted(parts.iterdir()), str(tmp_path / "all.jsonl"), 0.0, log=lambda *_: None
  )
  assert stats["kept"] == 5 and stats["dropped"] == 0
  assert (tmp_path / "all.jsonl").read_text() == "".join(p.read_text() for p in sorted(parts.iterdir()))


def test_training_reads_the_samples(tmp_path):
  cfg = _tiny_config()
  run_pipeline(cfg, str(tmp_path), progress=False)
  src = samples_lib.resolve_source(cfg, str(tmp_path))
  assert src[0] == "default" and src[1] == str(tmp_path / samples_lib.ARTIFACT)
  from zebra_jax.data import open_source

  assert len(open_source(src)) == len(default_corpus()) + cfg.samples.num_samples


@pytest.mark.parametrize(
  "change, field",
  [
    (dict(stages=("teacher", "ild_mla")), "'samples' stage"),
    (dict(stages=("teacher", "ild_mla", "samples")), "must come before"),
    (dict(source=("teacher_samples",)), "only 'teacher_samples'"),
    (dict(num_samples=0), "samples.num_samples"),
    (dict(temperature=0.0), "samples.temperature"),
    (dict(chat_fraction=1.5), "samples.chat_fraction"),
    (dict(chat_temperature=0.0), "samples.chat_temperature"),
    (dict(round_tokens=4), "samples.round_tokens must be 0 \\(off\\) or divide"),  # 6 % 4
    (dict(round_tokens=2, round_batches=0), "samples.round_batches"),
    (dict(cache_window=-1), "samples.cache_window"),
    (dict(max_repetition=1.0), "samples.max_repetition"),
    (dict(max_repetition=-0.1), "samples.max_repetition"),
  ],
)
def test_bad_samples_configs_name_the_field(change, field):
  cfg = _tiny_config()
  if "stages" in change:
    cfg.stages = change["stages"]
  if "source" in change:
    cfg.data.source = change["source"]
  for k in (
    "num_samples",
    "temperature",
    "chat_fraction",
    "chat_temperature",
    "round_tokens",
    "round_batches",
    "cache_window",
    "max_repetition",
  ):
    if k in change:
      cfg.samples[k] = change[k]
  with pytest.raises(RunConfigError, match=field):
    validate(cfg)


def test_missing_samples_artifact_is_a_clear_error(tmp_path):
  cfg = _tiny_config()
  with pytest.raises(FileNotFoundError, match="teacher_samples"):
    samples_lib.resolve_source(cfg, str(tmp_path))


# ------------------------------------------------------------------------ chat-template samples
def test_instruction_prompts_are_seeded_and_never_an_evaluation_prompt():
  from zebra_jax.distill.instructions import TEMPLATES, TOPICS, instruction_prompts
  from zebra_jax.data.prompts import REPORT_PROMPTS as PROMPTS

  a = instruction_prompts(50, seed=3)
  assert a == instruction_prompts(50, seed=3) and a != instruction_prompts(50, seed=4)
  assert len(set(a)) == 50  # no repeats before the pool is used up
  pool = len(TEMPLATES) * len(TOPICS)
  assert len(instruction_prompts(pool + 5, seed=0)) == pool + 5
  banned = "Write a haiku about volcanoes."
  assert banned in instruction_prompts(pool, seed=0)
  assert banned not in instruction_prompts(pool + 5, seed=0, exclude=[banned])
  evals = {p["chat"] for p in PROMPTS if "chat" in p}
  assert not evals & set(samples_lib.instruction_prompts_for_samples(pool, seed=1))


def test_chat_prompts_need_a_chat_template():
  class NoTemplate:
    def encode(self, text, add_special_tokens=False):
      return list(text.encode())

  with pytest.raises(ValueError, match="chat_template"):
    samples_lib.make_chat_prompts(NoTemplate(), 1, seed=0)
  # the byte tokenizer's plain-text template works too
  [ids] = samples_lib.make_chat_prompts(ByteTokenizer(), 1, seed=0)
  assert samples_lib.instruction_prompts_for_samples(1, seed=0)[0] in ByteTokenizer().decode(ids)


def test_chat_fraction_mixes_chat_prompts_into_the_samples(tmp_path, monkeypatch):
  cfg = _tiny_config()
  cfg.samples.update(num_samples=5, chat_fraction=0.4)  # round(5 * 0.4) = 2 chat prompts
  marks = [list(b"@CHAT-A@"), list(b"@CHAT-B@")]
  monkeypatch.setattr(samples_lib, "make_chat_prompts", lambda tok, n, seed, *rest: marks[:n])
  run_pipeline(cfg, str(tmp_path), progress=False)
  with open(tmp_path / samples_lib.ARTIFACT) as f:
    texts = [json.loads(line)["text"] for line in f]
  assert len(texts) == 5
  assert sorted(t[:8] for t in texts if t.startswith("@CHAT-")) == ["@CHAT-A@", "@CHAT-B@"]


def test_chat_temperature_samples_chat_prompts_at_their_own_temperature(tmp_path, monkeypatch):
  import zebra_jax.infer.generation as decode_lib

  cfg = _tiny_config()
  cfg.samples.update(num_samples=5, chat_fraction=0.4, temperature=1.0, chat_temperature=0.25)
  marks = [list(b"@CHAT-A@"), list(b"@CHAT-B@")]
  monkeypatch.setattr(samples_lib, "make_chat_prompts", lambda tok, n, seed, *rest: marks[:n])
  calls, real = [], decode_lib.generate

  def spy(model, prompts, n, **kw):
    calls.append((kw["temperature"], [bytes(p[:8]) for p in prompts]))
    return real(model, prompts, n, **kw)

  monkeypatch.setattr(decode_lib, "generate", spy)
  run_pipeline(cfg, str(tmp_path), progress=False)
  for temp, heads in calls:
    chat = [h.startswith(b"@CHAT-") for h in heads]
    assert all(chat) if temp == 0.25 else not any(chat) and temp == 1.0, calls
  assert sum(len(h) for t, h in calls if t == 0.25) == 2 and sum(len(h) for _, h in calls) == 5
  with open(tmp_path / samples_lib.ARTIFACT) as f:  # plain prompts first, then the chat ones
    texts = [json.loads(line)["text"] for line in f]
  assert [t.startswith("@CHAT-") for t in texts] == [False, False, False, True, True]


def test_chat_samples_keep_the_template_markers_through_the_real_tokenizer(smollm2_tokenizer):
  from zebra_jax.data.prompts import decode_text

  tok = smollm2_tokenizer  # what zebra_jax.data.load_tokenizer(<the .gguf>) returns, loaded once
  [ids] = samples_lib.make_chat_prompts(tok, 1, seed=0)
  text = decode_text(tok, ids, keep_special=True)
  assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")
  # the packer re-encodes the text: the turn markers must come back as the same special tokens
  assert [int(i) for i in tok.encode(text, add_special_tokens=False)] == ids
  plain = decode_text(tok, ids, keep_special=False)
  assert "<|im_start|>" not in plain


def test_passage_prompts_wrap_a_passage_of_a_training_document():
  from zebra_jax.distill.instructions import PASSAGE_TEMPLATES, cut_passage, passage_prompts

  docs = [("Paragraph %d of document %d. " % (p, d)) * 12 + "\n\n" for d in range(5) for p in range(4)]
  docs = ["".join(docs[i : i + 4]) for i in range(0, 20, 4)] + [{"messages": []}, "too short"]
  out = passage_prompts(docs, 40, seed=3)
  assert out == passage_prompts(docs, 40, seed=3) and out != passage_prompts(docs, 40, seed=4)
  used = set()
  for msg in out:
    tpl = next(
      t for t in PASSAGE_TEMPLATES if msg.startswith(t.split("{p}")[0]) and msg.endswith(t.split("{p}")[1])
    )
    used.add(tpl)
    head, tail = tpl.split("{p}")
    passage = msg[len(head) : len(msg) - len(tail)]
    assert 300 <= len(passage) <= 1200 and any(passage in d for d in docs if isinstance(d, str))
  assert len(used) >= 5  # the tasks vary
  assert cut_passage("short", np.random.default_rng(0)) == ""
  with pytest.raises(ValueError, match="at least 300 characters"):
    passage_prompts(["tiny"], 1, seed=0)


def test_passage_fraction_builds_chat_prompts_from_train_documents_only(tmp_path):
  cfg = _tiny_config()
  cfg.samples.passage_fraction = 1.0
  docs = samples_lib.train_documents(cfg)
  corpus = default_corpus()
  held = set(split_indices(len(corpus), "heldout", cfg.data.heldout_fraction))
  assert len(docs) == len(corpus) - len(held) and all(corpus[i] not in docs for i in held)
  ids = samples_lib.make_chat_prompts(ByteTokenizer(), 6, seed=0, documents=docs, passage_fraction=0.5)
  texts = [ByteTokenizer().decode(i) for i in ids]
  from_docs = [
    t for t in texts if any(line and line in d for d in docs for line in t.split("\n")[2:3] if len(line) > 40)
  ]
  assert len(texts) == 6 and len(from_docs) >= 1


def test_instruction_topics_avoid_the_suites_chat_prompts():
  from zebra_jax.distill.instructions import TOPICS
  from zebra_jax.data.prompts import CHAT_PROMPTS

  words = {w.strip("?.,:").lower() for p in CHAT_PROMPTS for w in p.split() if len(w) > 6}
  for topic in TOPICS:
    assert not ({w.lower() for w in topic.split() if len(w) > 6} & words), topic
  prompts = samples_lib.instruction_prompts_for_samples(2000, seed=0)
  assert not set(prompts) & set(CHAT_PROMPTS)
