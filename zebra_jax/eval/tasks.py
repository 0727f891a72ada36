"""Zero-shot multiple-choice tasks built from the held-out data only, written as lm-eval tasks.

Every task is deterministic (fixed seed, inputs sorted first), has 4 distinct choices per item with
the answer among them, and is capped at `max_items` (600) items; a task that cannot reach
`min_items` (500) is left out. Items are {"context", "choices", "answer"}; lm-eval scores
`context + " " + choice` (its default target_delimiter " ", so choices are stored without the
leading space, as in lm-eval's own arc / piqa tasks).

  wn_definitions   "Definition: <gloss>\\nWord:" -> the synset's first lemma vs 3 lemmas of other
                   synsets of the same part of speech with about the same length and polysemy
                   (number of synsets the lemma names: WordNet's own frequency proxy)
  wn_hypernyms     "<lemma> is a kind of" -> the first lemma of one of its hypernyms vs 3 nouns that
                   are neither ancestors of the synset nor the synset itself (same length / polysemy)
  wn_examples      a WordNet usage example up to the synset's lemma -> that lemma vs 3 same-POS
                   lemmas (the blank is the last thing in the context)
  cloze_<source>   one per held-out text source other than WordNet: the previous sentence and a
                   sentence without its last word -> that word vs 3 words of the same source with
                   about the same corpus frequency (never equal to the answer, same capitalisation)

    names = build_tasks("workdir/suite/tasks")        # jsonl + yaml per task, and the names
    lm_eval ... --include_path workdir/suite/tasks --tasks wn_definitions,wn_hypernyms
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import re
import types
from typing import Iterable, Sequence

SEED = 1234
MAX_ITEMS = 600
MIN_ITEMS = 500
N_CHOICES = 4

_POS = {
  "n": "noun",
  "v": "verb",
  "a": "adj",
  "s": "adj",
  "r": "adv",
  "noun": "noun",
  "verb": "verb",
  "adj": "adj",
  "adjective": "adj",
  "adv": "adv",
  "adverb": "adv",
}
_LEMMA_RE = re.compile(r"^[a-z][a-z' -]*[a-z]$")
_WORD_RE = re.compile(r"^[A-Za-z][a-z]+$")  # the last word of a cloze sentence (no acronyms)


def normalise_pos(pos) -> str:
  p = str(pos).strip().lower()
  if p not in _POS:
    raise ValueError(f"unknown WordNet part of speech {pos!r}")
  return _POS[p]


def _lemma(text: str) -> str:
  return str(text).replace("_", " ").strip()


def describe_source(registry, x):
  """A registry Source from a name (the registry lists names) or the object itself: name, kind and
  licence of a held-out source, for the tasks built from it and the suite's domain rows. `registry`
  is the module (or a stand-in with SOURCES)."""
  if isinstance(x, str):
    known = getattr(registry, "SOURCES", {})
    src = known.get(x) or (known.get("shakespeare") if x == "default" else None)  # the default corpus
    return (
      types.SimpleNamespace(name=x, kind=src.kind, licence=src.licence)
      if src is not None
      else types.SimpleNamespace(name=x, kind="?", licence=None)
    )
  return x


# -- WordNet ---------------------------------------------------------------------------------------
class _Lexicon:
  """Synsets by offset, clean lemmas per POS with their polysemy, and a picker of distractors of
  about the same length and polysemy."""

  def __init__(self, synsets: Iterable[dict]):
    rows = []
    for s in synsets:
      try:
        pos = normalise_pos(s["pos"])
      except ValueError:
        continue
      lemmas = [_lemma(x) for x in s.get("lemmas") or []]
      if lemmas:
        rows.append(
          {
            "offset": s["offset"],
            "pos": pos,
            "lemmas": lemmas,
            "gloss": str(s.get("gloss") or "").strip(),
            "examples": [str(e) for e in s.get("examples") or []],
            "hypernyms": list(s.get("hypernyms") or []),
          }
        )
    rows.sort(key=lambda r: (r["pos"], str(r["offset"])))
    self.rows = rows
    self.by_key = {(r["pos"], r["offset"]): r for r in rows}
    self.by_offset: dict = {}
    for r in rows:
      self.by_offset.setdefault(r["offset"], r)
    self.polysemy: collections.Counter = collections.Counter()
    for r in rows:
      for lem in set(x.lower() for x in r["lemmas"]):
        self.polysemy[(r["pos"], lem)] += 1
    # clean single lemmas (lower case, letters / space / hyphen) per POS, sorted: the distractor pool
    # (proper names such as "Wilson" stay out: their capital would give them away once lowered)
    self.pool: dict[str, list[str]] = {}
    lower = {(r["pos"], x) for r in rows for x in r["lemmas"] if x == x.lower()}
    for pos, lem in sorted(self.polysemy):
      if _LEMMA_RE.match(lem) and (pos, lem) in lower:
        self.pool.setdefault(pos, []).append(lem)
    self._by_len: dict = {}
    for pos, lems in self.pool.items():
      for lem in lems:
        self._by_len.setdefault((pos, len(lem)), []).append(lem)

  def hypernym(self, row):
    for h in row["hypernyms"]:
      hr = self.by_key.get((row["pos"], h)) or self.by_offset.get(h)
      if hr is not None:
        return hr
    return None

  def ancestors(self, row) -> set:
    seen, stack = set(), list(row["hypernyms"])
    while stack:
      h = stack.pop()
      if h in seen:
        continue
      seen.add(h)
      hr = self.by_key.get((row["pos"], h)) or self.by_offset.get(h)
      if hr is not None:
        stack.extend(hr["hypernyms"])
    return seen

  def distractors(
    self, rng: random.Random, pos: str, answer: str, exclude: set[str], k: int = N_CHOICES - 1
  ) -> list[str] | None:
    """k lemmas of `pos`, none in `exclude` (lower case), with about the answer's length and
    polysemy: candidates of the same length (then +-1, +-2, ...) closest in log-polysemy."""
    target_p = math.log(self.polysemy.get((pos, answer.lower()), 1))
    cands: list[str] = []
    for d in range(0, 8):
      for L in sorted({len(answer) - d, len(answer) + d}):
        cands += [c for c in self._by_len.get((pos, L), ()) if c not in exclude]
      if len(cands) >= 40:
        break
    if len(cands) < k:
      return None
    rng.shuffle(cands)  # ties (most lemmas name one synset) broken at random, not alphabetically
    cands.sort(key=lambda c: abs(math.log(self.polysemy[(pos, c)]) - target_p))
    near = cands[: max(20, k)]
    return rng.sample(near, k)


def _item(rng: random.Random, context: str, answer: str, distractors: Sequence[str], **meta) -> dict:
  choices = [answer] + list(distractors)
  rng.shuffle(choices)
  return {"context": context, "choices": choices, "answer": choices.index(answer), **meta}


def _valid(item: dict) -> bool:
  ch = item["choices"]
  return len(ch) == N_CHOICES and len({c.lower() for c in ch}) == N_CHOICES and all(c.strip() for c in ch)


def _select(rng: random.Random, candidates: list, max_items: int) -> list:
  """A fixed-seed random subset (in the candidates' order) of at most max_items."""
  if len(candidates) <= max_items:
    return list(candidates)
  keep = sorted(rng.sample(range(len(candidates)), max_items))
  return [candidates[i] for i in keep]


def _contains_word(text: str, word: str) -> bool:
  return re.search(r"\b" + re.escape(word) + r"\b", text, re.IGNORECASE) is not None


def wn_definition_items(
  synsets, *, max_items: int = MAX_ITEMS, seed: int = SEED, lexicon: _Lexicon | None = None
) -> list[dict]:
  """ "Definition: <gloss>\\nWord:" -> the first lemma (glosses that spell the lemma are skipped)."""
  lex = lexicon or _Lexicon(synsets)
  rng = random.Random(f"{seed}:wn_definitions")
  cands = [
    r
    for r in lex.rows
    if r["gloss"]
    and _LEMMA_RE.match(r["lemmas"][0].lower())
    and r["lemmas"][0] == r["lemmas"][0].lower()
    and not _contains_word(r["gloss"], r["lemmas"][0])
  ]
  items = []
  for r in _select(rng, cands, max_items * 2):
    ans = r["lemmas"][0]
    ds = lex.distractors(rng, r["pos"], ans, {x.lower() for x in r["lemmas"]})
    if ds is None:
      continue
    it = _item(rng, f"Definition: {r['gloss']}\nWord:", ans, ds, pos=r["pos"], offset=str(r["offset"]))
    if _valid(it):
      items.append(it)
  return _select(rng, items, max_items)


def wn_hypernym_items(
  synsets, *, max_items: int = MAX_ITEMS, seed: int = SEED, lexicon: _Lexicon | None = None
) -> list[dict]:
  """ "<lemma> is a kind of" -> a hypernym's first lemma vs nouns that are no ancestor of the synset."""
  lex = lexicon or _Lexicon(synsets)
  rng = random.Random(f"{seed}:wn_hypernyms")
  cands = []
  for r in lex.rows:
    if r["pos"] != "noun" or not r["hypernyms"]:
      continue
    h = lex.hypernym(r)
    if h is None or not _LEMMA_RE.match(r["lemmas"][0]) or not _LEMMA_RE.match(h["lemmas"][0]):
      continue
    if h["lemmas"][0].lower() in {x.lower() for x in r["lemmas"]}:
      continue
    cands.append((r, h))
  items = []
  for r, h in _select(rng, cands, max_items * 2):
    banned = {x.lower() for x in r["lemmas"]}
    for a in lex.ancestors(r):
      ar = lex.by_key.get(("noun", a)) or lex.by_offset.get(a)
      if ar is not None:
        banned |= {x.lower() for x in ar["lemmas"]}
    ds = lex.distractors(rng, "noun", h["lemmas"][0], banned)
    if ds is None:
      continue
    it = _item(
      rng,
      f"{r['lemmas'][0]} is a kind of",
      h["lemmas"][0],
      ds,
      offset=str(r["offset"]),
      hypernym=str(h["offset"]),
    )
    if _valid(it):
      items.append(it)
  return _select(rng, items, max_items)


def wn_example_items(
  synsets, *, max_items: int = MAX_ITEMS, seed: int = SEED, lexicon: _Lexicon | None = None
) -> list[dict]:
  """A usage example cut just before the synset's lemma -> the lemma (inflected uses are skipped)."""
  lex = lexicon or _Lexicon(synsets)
  rng = random.Random(f"{seed}:wn_examples")
  cands = []
  for r in lex.rows:
    for lem in r["lemmas"]:
      if not _LEMMA_RE.match(lem):
        continue
      for ex in r["examples"]:
        m = re.search(r"\b" + re.escape(lem) + r"\b", ex)
        if m and len(ex[: m.start()].split()) >= 3:
          cands.append((r, lem, ex[: m.start()].rstrip()))
          break
      else:
        continue
      break
  items = []
  for r, lem, ctx in _select(rng, cands, max_items * 2):
    ds = lex.distractors(rng, r["pos"], lem, {x.lower() for x in r["lemmas"]})
    if ds is None:
      continue
    it = _item(rng, ctx.strip("\"' "), lem, ds, pos=r["pos"], offset=str(r["offset"]))
    if _valid(it):
      items.append(it)
  return _select(rng, items, max_items)


# -- cloze on running text -------------------------------------------------------------------------
_SENT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")


def sentences(text: str) -> list[str]:
  """Sentences of a document (a simple splitter on . ! ? before a capital; whitespace collapsed)."""
  text = re.sub(r"\s+", " ", text).strip()
  return [s.strip() for s in _SENT_RE.split(text) if s.strip()]


def cloze_items(
  documents: Sequence[str],
  *,
  max_items: int = MAX_ITEMS,
  seed: int = SEED,
  name: str = "cloze",
  min_words: int = 8,
  max_context_words: int = 60,
) -> list[dict]:
  """Previous sentence + a sentence without its last word -> that word, vs 3 words of the same
  documents with the nearest corpus frequency (rank), in the answer's capitalisation."""
  rng = random.Random(f"{seed}:{name}")
  counts: collections.Counter = collections.Counter()
  for doc in documents:
    for w in re.findall(r"[A-Za-z]+", doc):
      counts[w.lower()] += 1
  vocab = sorted((w for w, c in counts.items() if c >= 2 and len(w) >= 3), key=lambda w: (-counts[w], w))
  rank = {w: i for i, w in enumerate(vocab)}
  cands = []
  for d, doc in enumerate(documents):
    sents = sentences(doc)
    for i, s in enumerate(sents):
      words = s.split(" ")
      if len(words) < min_words or not s.endswith((".", "!", "?")):
        continue
      last = words[-1].rstrip(".!?\"')]")
      if not _WORD_RE.match(last) or last.lower() not in rank:
        continue
      prev = sents[i - 1] if i > 0 else ""
      context = (prev + " " if prev else "") + " ".join(words[:-1])
      ctx_words = context.split(" ")
      if len(ctx_words) > max_context_words:
        context = " ".join(ctx_words[-max_context_words:])
      cands.append((context, last, d))
  items = []
  for context, last, d in _select(rng, cands, max_items * 2):
    r = rank[last.lower()]
    window = [w for w in vocab[max(0, r - 25) : r + 26] if w != last.lower()]
    if len(window) < N_CHOICES - 1:
      continue
    ds = rng.sample(window, N_CHOICES - 1)
    if last[0].isupper():
      ds = [w.capitalize() for w in ds]
    it = _item(rng, context, last, ds, doc=d)
    if _valid(it):
      items.append(it)
  return _select(rng, items, max_items)


# -- lm-eval task files ----------------------------------------------------------------------------
def task_config(name: str, data_file: str) -> dict:
  """The lm-eval 0.4 task YAML of a {"context", "choices", "answer"} jsonl file."""
  return {
    "task": name,
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": os.path.abspath(data_file)}},
    "test_split": "test",
    "output_type": "multiple_choice",
    "doc_to_text": "{{context}}",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "{{answer}}",
    "target_delimiter": " ",
    "metric_list": [
      {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
      {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
    ],
    "metadata": {"version": 1.0},
  }


def write_task(out_dir: str, name: str, items: Sequence[dict], meta: dict | None = None) -> str:
  """Writes <out_dir>/<name>.jsonl and <out_dir>/<name>.yaml; returns the YAML's path."""
  import yaml

  os.makedirs(out_dir, exist_ok=True)
  data = os.path.join(os.path.abspath(out_dir), f"{name}.jsonl")
  with open(data, "w", encoding="utf-8") as f:
    for it in items:
      f.write(json.dumps(it, ensure_ascii=False) + "\n")
  cfg = task_config(name, data)
  if meta:
    cfg["metadata"] = {**cfg["metadata"], **{k: v for k, v in meta.items() if v is not None}}
  path = os.path.join(out_dir, f"{name}.yaml")
  with open(path, "w", encoding="utf-8") as f:
    yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
  return path


def _is_wordnet(src) -> bool:
  return "wordnet" in str(getattr(src, "name", "")).lower() or str(getattr(src, "kind", "")).lower() in (
    "wordnet",
    "lexicon",
    "dictionary",
  )


def _task_name(source_name: str) -> str:
  return "cloze_" + re.sub(r"[^a-z0-9]+", "_", source_name.lower()).strip("_")


# the three WordNet tasks, by name, in the order build_tasks makes them
WN_TASKS = {
  "wn_definitions": wn_definition_items,
  "wn_hypernyms": wn_hypernym_items,
  "wn_examples": wn_example_items,
}


def task_names() -> list[str]:
  """The names of the tasks build_tasks makes from the registry's held-out sources."""
  # lazy: pulls in grain, orbax, jax, which importing this module does not
  from zebra_jax.data import registry

  heldout = [describe_source(registry, x) for x in registry.heldout_sources()]
  wn = list(WN_TASKS) if any(map(_is_wordnet, heldout)) else []
  return wn + [_task_name(s.name) for s in heldout if not _is_wordnet(s)]


def build_tasks(
  out_dir: str,
  cache_dir=None,
  *,
  max_items: int = MAX_ITEMS,
  min_items: int = MIN_ITEMS,
  seed: int = SEED,
  only: Sequence[str] | None = None,
  log=print,
) -> list[str]:
  """Builds every task from the held-out sources of `zebra_jax.data.registry` into `out_dir` and
  returns their names (`only`: just these). Also writes <out_dir>/tasks.json (names, item counts,
  sources). A task with fewer than `min_items` items is left out (logged)."""
  # lazy: pulls in grain, orbax, jax, which importing this module does not
  from zebra_jax.data import registry

  os.makedirs(out_dir, exist_ok=True)
  heldout = [describe_source(registry, x) for x in registry.heldout_sources()]
  built: dict[str, tuple[list[dict], dict]] = {}
  want = (lambda n: True) if not only else (lambda n: n in set(only))

  wn = [s for s in heldout if _is_wordnet(s)]
  if wn and any(want(n) for n in WN_TASKS):
    src = wn[0]
    lex = _Lexicon(registry.wordnet_synsets(cache_dir=cache_dir))
    meta = {"source": src.name, "kind": getattr(src, "kind", None)}
    for name, fn in WN_TASKS.items():
      if want(name):
        built[name] = (fn(None, max_items=max_items, seed=seed, lexicon=lex), meta)
  for src in heldout:
    if _is_wordnet(src):
      continue
    name = _task_name(src.name)
    if not want(name):
      continue
    docs = registry.source_documents(src.name, cache_dir=cache_dir)
    built[name] = (
      cloze_items(docs, max_items=max_items, seed=seed, name=name),
      {"source": src.name, "kind": getattr(src, "kind", None)},
    )
  names, index = [], {}
  for name, (items, meta) in built.items():
    if len(items) < min_items:
      log(f"[tasks] {name}: only {len(items)} items (< {min_items}); left out")
      continue
    write_task(out_dir, name, items, meta)
    names.append(name)
    index[name] = {"items": len(items), **meta}
  head = {"seed": seed, "max_items": max_items, "dir": os.path.abspath(out_dir)}
  path = os.path.join(out_dir, "tasks.json")
  complete = not only  # every task was asked for; "complete": False makes ensure_tasks build the rest
  if only and os.path.exists(path):  # keep the index entries of the tasks not rebuilt now
    with open(path) as f:
      saved = json.load(f)
    if all(saved.get(k) == v for k, v in head.items()):
      kept = {
        n: e
        for n, e in saved.get("tasks", {}).items()
        if n not in set(only) and os.path.exists(os.path.join(out_dir, f"{n}.yaml"))
      }
      index = {**kept, **index}
      complete = bool(saved.get("complete", True)) and set(kept) == set(saved.get("tasks", {})) - set(only)
  with open(path, "w") as f:
    # "dir": the task YAMLs name their data files by absolute path, so a copied or moved task
    # folder must be rebuilt where it now is (suite.ensure_tasks checks this)
    json.dump({**head, "complete": complete, "tasks": index}, f, indent=2)
  return names


__all__ = [
  "build_tasks",
  "task_names",
  "cloze_items",
  "wn_definition_items",
  "wn_hypernym_items",
  "wn_example_items",
  "write_task",
  "task_config",
  "sentences",
  "normalise_pos",
]
