"""The multi-domain suite (eval/suite.py) and its multiple-choice tasks (eval/tasks.py).

Checked independently of the code under test: lm-eval's accuracy (through its real command line, in
a subprocess) against a numpy log-softmax over the model's own logits, the per-domain perplexity
against numpy, the retained-% arithmetic by hand, and the task builders' invariants on fake WordNet
synsets and fake documents. The data registry is replaced by a fake module (the real one fetches
packages from PyPI).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("lm_eval")

import zebra_jax.data  # noqa: E402
from zebra_jax.config import LlamaConfig  # noqa: E402
from zebra_jax.convert import save_model  # noqa: E402
from zebra_jax.data import ByteTokenizer  # noqa: E402
from zebra_jax.eval import suite, tasks  # noqa: E402
from zebra_jax.models.hybrid import CausalLM  # noqa: E402

BASE = dict(
  vocab_size=258,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-5,
  impl="reference",
  bos_token_id=256,
  eos_token_id=257,
  max_position_embeddings=512,
)


def _model(seed, scale=2.0):
  import jax

  model = CausalLM(LlamaConfig(**BASE), rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p * scale if p.ndim >= 2 else p, state))
  return model


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@nnx.jit
def _forward(model, tokens):
  return model(tokens)


def _logits(model, ids):
  """model(ids)'s logits as float64. One jitted forward over the ids right-padded to a multiple of
  64 positions (op by op, every new length would compile each op again); the model is causal, so
  the first len(ids) positions do not see the padding."""
  padded = np.zeros((1, -(-len(ids) // 64) * 64), np.int32)
  padded[0, : len(ids)] = ids
  return np.asarray(_forward(model, jnp.asarray(padded))[0, : len(ids)], np.float64)


# -- fake held-out data ----------------------------------------------------------------------------
def _word(rng, n):
  return "".join(rng.choice("abcdefghijklmnoprstuvw") for _ in range(n))


def fake_synsets(n=2800, seed=0):
  rng = random.Random(seed)
  out, nouns = [], []
  used = set()
  for i in range(n):
    pos = ["n", "v", "a", "r"][i % 4] if i >= 40 else "n"
    lemmas = []
    while len(lemmas) < rng.randint(1, 3):
      w = _word(rng, rng.randint(3, 9))
      if w not in used:
        used.add(w)
        lemmas.append(w)
    if i % 7 == 0 and out:  # some polysemy: reuse a lemma of an earlier synset of this POS
      prev = [s for s in out if s["pos"] == pos]
      if prev:
        lemmas.append(rng.choice(prev)["lemmas"][0])
    gloss = " ".join(_word(rng, rng.randint(2, 7)) for _ in range(rng.randint(4, 10)))
    examples = [f"the {_word(rng, 4)} {_word(rng, 5)} {lemmas[0]} {_word(rng, 3)}"] if i % 2 else []
    hyp = [rng.choice(nouns)] if pos == "n" and nouns else []
    out.append(
      {
        "offset": 1000 + i,
        "pos": pos,
        "lemmas": lemmas,
        "gloss": gloss,
        "examples": examples,
        "hypernyms": hyp,
      }
    )
    if pos == "n":
      nouns.append(1000 + i)
  return out


def fake_documents(n_docs=120, seed=0):
  rng = random.Random(seed)
  vocab = [_word(rng, rng.randint(3, 8)) for _ in range(400)]
  weights = [1.0 / (i + 1) for i in range(len(vocab))]  # Zipf
  docs = []
  for _ in range(n_docs):
    sents = []
    for _ in range(rng.randint(4, 9)):
      words = rng.choices(vocab, weights, k=rng.randint(8, 16))
      sents.append(words[0].capitalize() + " " + " ".join(words[1:]) + ".")
    docs.append(" ".join(sents))
  return docs


class _Src:
  def __init__(self, name, kind):
    self.name, self.kind, self.package, self.version, self.licence = name, kind, "pkg", "1", "MIT"


@pytest.fixture
def fake_registry(monkeypatch):
  docs = {"novels": fake_documents(seed=1), "manuals": fake_documents(seed=2)}
  syn = fake_synsets()
  reg = types.ModuleType("zebra_jax.data.registry")
  reg.SOURCES = {
    s.name: s
    for s in (
      _Src("wordnet", "reference"),
      _Src("novels", "literature"),
      _Src("manuals", "technical"),
      _Src("default", "literature"),
    )
  }
  reg.heldout_sources = lambda: ["wordnet", "novels", "manuals"]  # names, as the registry lists
  reg.training_sources = lambda: ["default"]
  reg.wordnet_synsets = lambda cache_dir=None: [dict(s) for s in syn]
  reg.source_documents = lambda name, cache_dir=None: (
    docs[name] if name in docs else [s["gloss"] for s in syn[:200]]
  )
  monkeypatch.setitem(sys.modules, "zebra_jax.data.registry", reg)
  monkeypatch.setattr(zebra_jax.data, "registry", reg, raising=False)
  from zebra_jax.eval import suite as suite_module

  monkeypatch.setattr(suite_module, "registry", reg)  # bound at its import
  monkeypatch.setattr(
    suite_module,
    "validation_documents",
    lambda data_cfg, cache_dir=None: {"default": fake_documents(20, seed=3)},
  )
  return reg


# -- task builders ---------------------------------------------------------------------------------
def _check_items(items, n_min=500, n_max=600):
  assert n_min <= len(items) <= n_max
  for it in items:
    ch = it["choices"]
    assert len(ch) == 4 and len({c.lower() for c in ch}) == 4
    assert 0 <= it["answer"] < 4 and all(c and c == c.strip() for c in ch)
  answers = [it["answer"] for it in items]
  assert min(np.bincount(answers, minlength=4)) > len(items) / 8  # shuffled positions


def test_wordnet_tasks_from_fake_synsets():
  syn = fake_synsets()
  by_off = {s["offset"]: s for s in syn}
  for fn in (tasks.wn_definition_items, tasks.wn_hypernym_items, tasks.wn_example_items):
    items = fn(syn)
    _check_items(items)
    assert items == fn(list(reversed(syn)))  # deterministic, whatever the input order
    assert items != fn(syn, seed=7)
  for it in tasks.wn_definition_items(syn):
    s = by_off[int(it["offset"])]
    assert it["context"] == f"Definition: {s['gloss']}\nWord:"
    assert it["choices"][it["answer"]] == s["lemmas"][0]
    wrong = [c for i, c in enumerate(it["choices"]) if i != it["answer"]]
    assert not set(wrong) & set(s["lemmas"])
    assert all(abs(len(w) - len(s["lemmas"][0])) <= 3 for w in wrong)
    same_pos = {lem for x in syn if tasks.normalise_pos(x["pos"]) == it["pos"] for lem in x["lemmas"]}
    assert set(wrong) <= same_pos
  nouns = {lem for x in syn if x["pos"] == "n" for lem in x["lemmas"]}
  for it in tasks.wn_hypernym_items(syn):
    s = by_off[int(it["offset"])]
    assert it["context"] == f"{s['lemmas'][0]} is a kind of"
    assert it["choices"][it["answer"]] == by_off[int(it["hypernym"])]["lemmas"][0]
    anc, stack = set(), list(s["hypernyms"])
    while stack:
      a = stack.pop()
      anc |= set(by_off[a]["lemmas"])
      stack += by_off[a]["hypernyms"]
    wrong = [c for i, c in enumerate(it["choices"]) if i != it["answer"]]
    assert not set(wrong) & (anc | set(s["lemmas"])) and set(wrong) <= nouns
  for it in tasks.wn_example_items(syn):
    s = by_off[int(it["offset"])]
    assert it["choices"][it["answer"]] in s["lemmas"]
    assert any(e.startswith(it["context"]) for e in s["examples"])


def test_cloze_task_from_fake_documents():
  docs = fake_documents()
  items = tasks.cloze_items(docs)
  _check_items(items)
  assert items == tasks.cloze_items(docs)
  text = " ".join(docs)
  for it in items:
    ans = it["choices"][it["answer"]]
    assert (it["context"] + " " + ans + ".") in text  # the sentence's true last word
    wrong = [c for i, c in enumerate(it["choices"]) if i != it["answer"]]
    assert ans.lower() not in {w.lower() for w in wrong}
    assert all(w.lower() in text.lower() for w in wrong)


def test_build_tasks_writes_lm_eval_tasks(fake_registry, tmp_path):
  import yaml

  names = tasks.build_tasks(str(tmp_path))
  assert names == ["wn_definitions", "wn_hypernyms", "wn_examples", "cloze_novels", "cloze_manuals"]
  for n in names:
    cfg = yaml.safe_load((tmp_path / f"{n}.yaml").read_text())
    assert cfg["task"] == n and cfg["output_type"] == "multiple_choice"
    assert cfg["dataset_path"] == "json"
    data = cfg["dataset_kwargs"]["data_files"]["test"]
    assert os.path.isabs(data)
    with open(data) as f:
      assert 500 <= sum(1 for _ in f) <= 600
    assert [m["metric"] for m in cfg["metric_list"]] == ["acc", "acc_norm"]
  index = json.loads((tmp_path / "tasks.json").read_text())["tasks"]
  assert index["cloze_novels"]["source"] == "novels"
  first = (tmp_path / "wn_definitions.jsonl").read_text()
  assert tasks.build_tasks(str(tmp_path / "again"), only=["wn_definitions"]) == ["wn_definitions"]
  assert (tmp_path / "again" / "wn_definitions.jsonl").read_text() == first


def test_a_suite_run_for_a_few_tasks_does_not_shrink_the_task_folder(fake_registry, tmp_path):
  """A hostile pass (2026-12-07): `suite --tasks wn_definitions` rewrote tasks.json with that task
  alone, so a later full run on the same --out silently ran one task of five."""
  every = ["wn_definitions", "wn_hypernyms", "wn_examples", "cloze_novels", "cloze_manuals"]
  assert list(suite.ensure_tasks(str(tmp_path / "a"), ["wn_definitions"])) == ["wn_definitions"]
  assert list(suite.ensure_tasks(str(tmp_path / "a"))) == every
  tasks.build_tasks(str(tmp_path / "b"))
  tasks.build_tasks(str(tmp_path / "b"), only=["cloze_novels"])
  assert sorted(suite.ensure_tasks(str(tmp_path / "b"))) == sorted(every)
  assert json.loads((tmp_path / "b" / "tasks.json").read_text())["complete"] is True


def test_ensure_tasks_rebuilds_a_moved_task_folder(fake_registry, tmp_path):
  """Task YAMLs name their data by absolute path: a folder built elsewhere and copied in (as a
  GPU run once did) is rebuilt in place instead of pointing lm-eval at files that are not there."""
  import shutil
  import yaml

  built = tmp_path / "built"
  tasks.build_tasks(str(built), only=["wn_definitions"])
  moved = tmp_path / "moved"
  shutil.copytree(built, moved)
  shutil.rmtree(built)
  msgs = []
  have = suite.ensure_tasks(str(moved), ["wn_definitions"], log=msgs.append)
  assert set(have) == {"wn_definitions"} and any("rebuilding" in m for m in msgs)
  cfg = yaml.safe_load((moved / "wn_definitions.yaml").read_text())
  data = cfg["dataset_kwargs"]["data_files"]["test"]
  assert data == str(moved / "wn_definitions.jsonl") and os.path.exists(data)
  msgs.clear()
  assert set(suite.ensure_tasks(str(moved), ["wn_definitions"], log=msgs.append)) == {"wn_definitions"}
  assert msgs == []  # in place now: reused as is


# -- retained % ------------------------------------------------------------------------------------
def test_retained_arithmetic():
  teacher = {
    "a": {"acc": 0.50, "acc_norm": 0.40},
    "b": {"acc": 0.80, "acc_norm": 0.60},
    "c": {"acc": 0.0, "acc_norm": 0.2},
  }
  student = {
    "a": {"acc": 0.40, "acc_norm": 0.40},
    "b": {"acc": 0.60, "acc_norm": 0.30},
    "c": {"acc": 0.1, "acc_norm": 0.2},
  }
  r = suite.retained(student, teacher, "acc")
  assert r["per_task"]["a"] == pytest.approx(80.0) and r["per_task"]["b"] == pytest.approx(75.0)
  assert r["per_task"]["c"] is None  # the teacher got none right
  assert r["mean_of_ratios"] == pytest.approx(77.5)
  assert r["of_average"] == pytest.approx(100 * (0.4 + 0.6 + 0.1) / (0.5 + 0.8 + 0.0))
  assert r["teacher_average"] == pytest.approx(1.3 / 3)
  r = suite.retained(student, teacher, "acc_norm")
  assert r["per_task"] == pytest.approx({"a": 100.0, "b": 50.0, "c": 100.0})
  assert r["of_average"] == pytest.approx(100 * 0.9 / 1.2)


# -- multiple choice through the real lm-eval command line -----------------------------------------
MC_ITEMS = [
  {"context": "The sky is", "choices": ["blue", "green", "loud", "made of cheese"], "answer": 0},
  {"context": "Two plus two is", "choices": ["five", "four", "seven", "a fish"], "answer": 1},
  {"context": "Opposite of up:", "choices": ["left", "down", "fast", "upward"], "answer": 1},
]


def _hand_scores(model, context, choice):
  """log p(" " + choice | context) with ByteTokenizer ids (no BOS: lm-eval encodes the context
  with the tokenizer's defaults), numpy log-softmax over the model's logits."""
  ctx = list(context.encode())
  cont = list((" " + choice).encode())
  ids = ctx + cont
  lp = _np_log_softmax(_logits(model, ids))
  return sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont))


def test_mc_accuracy_through_the_lm_eval_cli_matches_numpy(tmp_path):
  model = _model(0)
  ckpt = save_model(model, tmp_path / "ckpt")
  tasks.write_task(str(tmp_path / "tasks"), "zj_three", MC_ITEMS)
  res = suite.run_lm_eval(
    ckpt,
    ["zj_three"],
    str(tmp_path / "tasks"),
    str(tmp_path / "out"),
    tokenizer="byte",
    batch_size=4,
    log_samples=True,
    log=lambda *_: None,
  )
  r = res["zj_three"]
  acc = acc_norm = 0
  for it, sample in zip(MC_ITEMS, sorted(r["samples"], key=lambda s: s["doc_id"])):
    ll = np.array([_hand_scores(model, it["context"], c) for c in it["choices"]])
    np.testing.assert_allclose([float(x[0][0]) for x in sample["resps"]], ll, rtol=1e-4, atol=1e-4)
    acc += int(np.argmax(ll) == it["answer"])
    acc_norm += int(np.argmax(ll / np.array([len(c) for c in it["choices"]])) == it["answer"])
  assert r["n"] == 3
  assert r["acc"] == pytest.approx(acc / 3) and r["acc_norm"] == pytest.approx(acc_norm / 3)
  assert r["acc_stderr"] is not None


# -- per-domain table and the whole suite ----------------------------------------------------------
def _numpy_ppl(model, seqs):
  nll, n = 0.0, 0
  for ids in seqs:
    lp = _np_log_softmax(_logits(model, ids))
    nll -= sum(lp[i, ids[i + 1]] for i in range(len(ids) - 1))
    n += len(ids) - 1
  return math.exp(nll / n), n


def test_capped_sequences():
  tok = ByteTokenizer()
  docs = ["abc " * 50, "de " * 10, "", "xyz " * 100]
  seqs = suite.capped_sequences(tok, docs, 300)
  assert sum(map(len, seqs)) == 300 and all(s[0] == tok.bos_token_id for s in seqs)
  assert seqs == suite.capped_sequences(tok, docs, 300)
  full = suite.capped_sequences(tok, docs, None)
  assert sum(map(len, full)) == sum(len(d) + 1 for d in docs if d)


def test_suite_end_to_end(fake_registry, tmp_path):
  """Teacher + one student: the per-domain table against numpy perplexity, the lm-eval tasks (3
  items each), chat answers, suite.json / suite.md / suite.png, and the per-model cache."""
  import ml_collections

  teacher, student = _model(0), _model(1, scale=1.5)
  t_ckpt = save_model(teacher, tmp_path / "teacher")
  s_ckpt = save_model(student, tmp_path / "student")
  run_cfg = ml_collections.ConfigDict(
    {"data": {"source": "default", "tokenizer": "byte"}, "teacher": {"path": "byte"}}
  )
  out = tmp_path / "suite"
  kw = dict(
    max_tokens=400,
    seq_len=512,
    tasks=["wn_definitions", "cloze_novels"],
    limit=3,
    chat_tokens=4,
    run_config=run_cfg,
    log=lambda *_: None,
    lm_eval_batch_size=8,
  )
  res = suite.run_suite([("small", s_ckpt)], t_ckpt, str(out), **kw)
  assert [d["key"] for d in res["domains"]] == [
    "held-out:wordnet",
    "held-out:novels",
    "held-out:manuals",
    "in-domain:default",
  ]
  tok = ByteTokenizer()
  docs = fake_registry.source_documents("novels")
  seqs = suite.capped_sequences(tok, docs, 400)
  want_s, n = _numpy_ppl(student, seqs)
  want_t, _ = _numpy_ppl(teacher, seqs)
  rows = {r["source"]: r for r in suite.domain_rows(res)}
  assert rows["novels"]["tokens"] == n == 400 - len(seqs)
  assert rows["novels"]["student_ppl"] == pytest.approx(want_s, rel=1e-4)
  assert rows["novels"]["teacher_ppl"] == pytest.approx(want_t, rel=1e-4)
  assert rows["novels"]["ratio"] == pytest.approx(want_s / want_t, rel=1e-4)
  assert rows["novels"]["kept"] == pytest.approx(100 * want_t / want_s, rel=1e-4)
  assert 0 <= rows["novels"]["top1"] <= 1 and rows["novels"]["kl"] > 0
  assert rows["default"]["split"] == "in-domain"
  t_tasks, s_tasks = res["models"]["teacher"]["tasks"], res["models"]["small"]["tasks"]
  assert set(t_tasks) == {"wn_definitions", "cloze_novels"}
  for t in t_tasks:
    assert t_tasks[t]["n"] == 3 and 0 <= s_tasks[t]["acc"] <= 1
    if t_tasks[t]["acc"]:
      assert res["retained"]["small"]["acc"]["per_task"][t] == pytest.approx(
        100 * s_tasks[t]["acc"] / t_tasks[t]["acc"]
      )
  chat = res["models"]["small"]["chat"]
  assert len(chat["greedy"]) == len(suite.CHAT_PROMPTS) == len(chat["sampled"])
  md = (out / "suite.md").read_text()
  assert "| novels | literature | held-out | 400 |" not in md  # tokens are scored positions
  assert f"| novels | literature | held-out | {n} |" in md and "wn_definitions" in md
  assert "Chat answers (greedy" in md and "- *small*:" in md and (out / "suite.png").stat().st_size
  assert json.loads((out / "suite.json").read_text())["tasks"] == ["wn_definitions", "cloze_novels"]
  from zebra_jax.eval import report

  doc = report.markdown(
    {
      "environment": {"device": "cpu", "date": "d", "jax": "j", "flax": "f"},
      "meta": {"command": "c", "decode_batch": 2, "contexts": []},
      "models": {
        "teacher": {"perplexity": 9.0, "top1": 1.0, "kl": 0.0, "kv_fraction": 1.0, "heldout_tokens": 10}
      },
      "variants": {},
      "timings": {},
      "suite": res,
    },
    chart="suite/suite.png",
  )
  assert "Multi-domain evaluation" in doc and "](suite/suite.png)" in doc
  # a second call reuses every finished model (no lm-eval run: its output stays untouched)
  stamp = os.path.getmtime(out / "models" / "small.json")
  again = suite.run_suite([("small", s_ckpt)], t_ckpt, str(out), **kw)
  assert os.path.getmtime(out / "models" / "small.json") == stamp
  assert again["models"]["small"]["domains"] == res["models"]["small"]["domains"]


def test_suite_cut_short_keeps_finished_sections(fake_registry, tmp_path, monkeypatch):
  """A suite killed during a model's chat answers keeps that model's domain rows on disk; the
  rerun computes only the chat answers (the device's time limit cut the first GPU suite there)."""
  import ml_collections

  t_ckpt = save_model(_model(0), tmp_path / "teacher")
  s_ckpt = save_model(_model(1, scale=1.5), tmp_path / "student")
  run_cfg = ml_collections.ConfigDict(
    {"data": {"source": "default", "tokenizer": "byte"}, "teacher": {"path": "byte"}}
  )
  out = tmp_path / "suite"
  kw = dict(max_tokens=200, seq_len=256, mc=False, chat_tokens=2, run_config=run_cfg, log=lambda *_: None)
  real_chat = suite.chat_answers

  def cut(model, *a, **k):
    if cut.calls == 1:  # the second chat call (the student's): the job is killed
      raise KeyboardInterrupt
    cut.calls += 1
    return real_chat(model, *a, **k)

  cut.calls = 0
  monkeypatch.setattr(suite, "chat_answers", cut)
  with pytest.raises(KeyboardInterrupt):
    suite.run_suite([("small", s_ckpt)], t_ckpt, str(out), **kw)
  saved = json.loads((out / "models" / "small.json").read_text())
  assert "domains" in saved and "chat" not in saved
  monkeypatch.setattr(suite, "chat_answers", real_chat)
  monkeypatch.setattr(suite, "score_domains", lambda *a, **k: pytest.fail("domains recomputed"))
  res = suite.run_suite([("small", s_ckpt)], t_ckpt, str(out), **kw)
  assert res["models"]["small"]["domains"] == saved["domains"]
  assert len(res["models"]["small"]["chat"]["greedy"]) == len(suite.CHAT_PROMPTS)


def test_chat_repetition_is_the_share_of_repeated_word_4grams_and_is_reported_per_model():
  """The chat section's loop measure: a text that never repeats scores 0; "a b c d a b c d a b"
  has 7 4-grams (abcd bcda cdab dabc abcd bcda cdab) of which the last 3 occurred earlier: 3/7;
  fewer than 4 words score 0. The markdown gives each model's mean over the prompts."""
  assert suite.repeated_ngram_share("the quick brown fox jumps over the lazy dog") == 0.0
  assert suite.repeated_ngram_share("A b c d a B c d a b") == pytest.approx(3 / 7)
  assert suite.repeated_ngram_share("too short") == 0.0
  chat = lambda answers: {"prompts": ["p1", "p2"], "greedy": answers, "max_new_tokens": 8}  # noqa: E731
  res = {
    "meta": {"teacher": "t", "seq_len": 8, "dtype": "float32"},
    "domains": [],
    "tasks": [],
    "models": {
      "teacher": {"label": "teacher", "chat": chat(["one two three four five", "six seven eight nine"])},
      "student": {"label": "student", "chat": chat(["a b c d a b c d a b", "x y z w"])},
    },
    "retained": {},
  }
  md = suite.suite_markdown(res)
  assert "teacher 0%, student 21%." in md  # (3/7 + 0) / 2


def test_a_rerun_keeps_the_sections_whose_settings_did_not_change(fake_registry, tmp_path, monkeypatch):
  """A domains-only suite (no tasks, no chat: what a recipe decision needs) rerun with the chat
  answers keeps its domain rows and computes only the chat; a rerun with another token budget
  scores the domains again (they depend on it) and keeps the chat (it does not)."""
  import ml_collections

  t_ckpt = save_model(_model(0), tmp_path / "teacher")
  s_ckpt = save_model(_model(1, scale=1.5), tmp_path / "student")
  run_cfg = ml_collections.ConfigDict(
    {"data": {"source": "default", "tokenizer": "byte"}, "teacher": {"path": "byte"}}
  )
  out = tmp_path / "suite"
  kw = dict(seq_len=256, mc=False, chat_tokens=2, run_config=run_cfg, log=lambda *_: None)
  first = suite.run_suite([("small", s_ckpt)], t_ckpt, str(out), max_tokens=200, chat=False, **kw)
  assert "chat" not in first["models"]["small"]
  real_domains, real_chat = suite.score_domains, suite.chat_answers
  monkeypatch.setattr(suite, "score_domains", lambda *a, **k: pytest.fail("domains recomputed"))
  second = suite.run_suite([("small", s_ckpt)], t_ckpt, str(out), max_tokens=200, chat=True, **kw)
  assert second["models"]["small"]["domains"] == first["models"]["small"]["domains"]
  assert len(second["models"]["small"]["chat"]["greedy"]) == len(suite.CHAT_PROMPTS)
  calls = []
  monkeypatch.setattr(suite, "score_domains", lambda *a, **k: calls.append(1) or real_domains(*a, **k))
  monkeypatch.setattr(suite, "chat_answers", lambda *a, **k: pytest.fail("chat recomputed"))
  third = suite.run_suite([("small", s_ckpt)], t_ckpt, str(out), max_tokens=120, chat=True, **kw)
  assert len(calls) == 2  # teacher and student, at the new budget
  assert third["models"]["small"]["chat"] == second["models"]["small"]["chat"]
  assert third["models"]["small"]["domains"] != first["models"]["small"]["domains"]
  monkeypatch.setattr(suite, "chat_answers", real_chat)
