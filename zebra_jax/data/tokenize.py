"""Tokenisation of documents with the teacher's tokenizer.

A tokenizer here is anything with the small interface the pipeline uses (a transformers tokenizer has it):

  encode(text, add_special_tokens=bool) -> list[int]
  apply_chat_template(messages, tokenize=False) -> str
  eos_token_id: int
  __len__() -> vocabulary size (including added tokens)

Every document becomes its token ids followed by one EOS, the separator the reference's packing
(TRL ConstantLengthDataset) puts between documents.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zebra_jax.data.sources import DataError

# A document: plain text, {"text": str}, {"messages": [{"role", "content"}, ...]}, or already-tokenised ids
# (an integer numpy array, as read back from ArrayRecord shards; EOS is already there).
Document = Any


class ByteTokenizer:
  """UTF-8 byte-level tokenizer: ids 0..255 are bytes, then BOS and EOS.

  No download and no vocabulary file: useful for the tiny CPU config, for smoke runs without a teacher
  tokenizer, and in tests. The chat template is a plain-text rendering ("<|role|>\\ncontent\\n" per turn).
  """

  def __init__(self, add_bos: bool = False):
    self.bos_token_id = 256
    self.eos_token_id = 257
    self.pad_token_id = self.eos_token_id
    self.add_bos = add_bos
    self.name_or_path = "byte"
    self.chat_template = "byte-plain"

  def __len__(self) -> int:
    return 258

  @property
  def vocab_size(self) -> int:
    return len(self)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    ids = list(text.encode("utf-8"))
    if add_special_tokens and self.add_bos:
      ids = [self.bos_token_id] + ids
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

  def apply_chat_template(self, messages, tokenize: bool = False, **kwargs):
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return self.encode(text, add_special_tokens=False) if tokenize else text

  # The same chat rendering in Jinja, for the HF files below.
  JINJA_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"

  def to_transformers(self):
    """The same ids as a transformers fast tokenizer: byte-level BPE with no merges, byte b -> id b,
    then "<|bos|>" 256 and "<|eos|>" 257 (unlike this class it also reads those two strings in text
    as the special tokens). Lets a model trained on bytes carry ordinary HF tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|eos|>"
    )
    fast.chat_template = self.JINJA_TEMPLATE
    return fast

  def save_pretrained(self, directory: str):
    return self.to_transformers().save_pretrained(directory)


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer emits)."""
  bs = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
  cs, n = list(bs), 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def load_tokenizer(spec: Any):
  """Returns a tokenizer from `spec`.

  spec: a tokenizer object (returned as is), "byte" (ByteTokenizer), a named checkpoint ("smollm2"), a
  .gguf file, a local directory (an HF tokenizer directory, a saved or exported model with its tokenizer
  files; `zebra_jax.convert.load_tokenizer`), or a Hugging Face hub id "owner/name" (AutoTokenizer);
  anything else is a DataError naming what is accepted.
  """
  if not isinstance(spec, (str, os.PathLike)):
    return spec
  spec = os.fspath(spec)
  if spec == "byte":
    return ByteTokenizer()
  # lazy: pulls in flax, optax, which importing this module does not
  from zebra_jax.convert import NAMED_CHECKPOINTS, load_tokenizer as convert_load_tokenizer

  if spec.lower() in NAMED_CHECKPOINTS:
    return convert_load_tokenizer(spec)
  if spec.endswith(".gguf"):
    if not os.path.isfile(spec):
      raise FileNotFoundError(f"tokenizer GGUF file not found: {spec}")
    return convert_load_tokenizer(spec)
  if spec.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(spec)):
    raise FileNotFoundError(f"tokenizer directory not found: {spec}")
  if os.path.isfile(spec):
    raise DataError(f"{spec} is a file: pass the tokenizer's directory, or a .gguf file")
  if os.path.isdir(os.path.expanduser(spec)):
    return convert_load_tokenizer(spec)
  accepted = (
    f"'byte', a named checkpoint ({', '.join(sorted(NAMED_CHECKPOINTS))}), a .gguf file, "
    "a local directory or a Hugging Face hub id (owner/name)"
  )
  if "/" not in spec:  # not a hub id either: no network round trip (and its retries) for a typo
    raise DataError(f"could not load a tokenizer from {spec!r}: expected {accepted}")
  from transformers import AutoTokenizer

  try:
    return AutoTokenizer.from_pretrained(spec)
  except OSError as e:  # transformers' hub / offline errors run over several lines
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
      f"could not load a tokenizer from {spec!r} as a Hugging Face hub id: {first} (expected {accepted})"
    ) from e


def vocab_size(tokenizer) -> int:
  """Number of token ids the tokenizer can produce (base vocabulary plus added tokens)."""
  return int(len(tokenizer))


def eos_id(tokenizer) -> int:
  eos = getattr(tokenizer, "eos_token_id", None)
  if eos is None:
    raise DataError(
      f"tokenizer {tokenizer_name(tokenizer)!r} has no eos_token_id; documents are separated by EOS"
    )
  return int(eos)


def tokenizer_name(tokenizer) -> str:
  return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def render_chat(
  tokenizer, messages: Sequence[Mapping[str, Any]], *, where: str = "", add_generation_prompt: bool = False
) -> str:
  """Renders a conversation with the tokenizer's chat template (with add_generation_prompt, ending
  where the assistant's answer starts)."""
  if not getattr(tokenizer, "chat_template", None):
    raise DataError(
      f"{where or 'document'}: chat messages need a tokenizer with a chat_template; "
      f"{tokenizer_name(tokenizer)!r} has none"
    )
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
      raise DataError(
        f"{where or 'document'}: message {i} must be an object with 'role' and 'content', got {m!r}"
      )
  if add_generation_prompt:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
  return tokenizer.apply_chat_template(list(messages), tokenize=False)


def encode_document(tokenizer, doc: Document, *, where: str = "") -> np.ndarray:
  """Token ids (int32) of one document with EOS appended.

  Plain text is encoded with the tokenizer's special tokens (a BOS if the tokenizer adds one); chat is rendered
  with the chat template, which already holds the model's BOS/turn markers, and encoded without adding more.
  Already-tokenised documents (integer arrays) are returned as int32 unchanged.
  """
  if isinstance(doc, np.ndarray):
    if doc.ndim != 1 or not np.issubdtype(doc.dtype, np.integer):
      raise DataError(f"{where or 'document'}: token array must be 1-D integer, got {doc.dtype}{doc.shape}")
    return doc.astype(np.int32, copy=False)
  if isinstance(doc, Mapping):
    if "text" in doc:
      doc = doc["text"]
    elif "messages" in doc:
      text = render_chat(tokenizer, doc["messages"], where=where)
      ids = tokenizer.encode(text, add_special_tokens=False)
      return _with_eos(ids, tokenizer)
    else:
      raise DataError(f"{where or 'document'}: expected a 'text' or 'messages' field, got keys {sorted(doc)}")
  if not isinstance(doc, str):
    raise DataError(f"{where or 'document'}: expected text, got {type(doc).__name__}")
  return _with_eos(tokenizer.encode(doc, add_special_tokens=True), tokenizer)


def encode_documents(tokenizer, docs, *, batch: int = 512) -> list[np.ndarray]:
  """[encode_document(tokenizer, d) for d in docs], plain texts encoded in batches by a fast (Rust)
  tokenizer, which spreads a batch over the CPU's cores (the same ids: the batch call applies the
  same special tokens). Anything else (chat messages, token arrays, other tokenizers) goes through
  encode_document one by one."""
  docs = list(docs)
  out: list[np.ndarray | None] = [None] * len(docs)
  fast = bool(getattr(tokenizer, "is_fast", False))
  texts = []
  for i, d in enumerate(docs):
    text = d.get("text") if isinstance(d, Mapping) else d
    if fast and isinstance(text, str):
      texts.append((i, text))
    else:
      out[i] = encode_document(tokenizer, d, where=f"document {i}")
  for j in range(0, len(texts), batch):
    part = texts[j : j + batch]
    ids = tokenizer([t for _, t in part], add_special_tokens=True)["input_ids"]
    for (i, _), row in zip(part, ids):
      out[i] = _with_eos(row, tokenizer)
  return out


def document_lengths(tokenizer, docs, *, batch: int = 512) -> list[int]:
  """len(encode_document(tokenizer, d)) for each document (`encode_documents`: batched, all cores);
  what `pipeline.epoch_tokens` counts a stage's data with."""
  return [len(ids) for ids in encode_documents(tokenizer, docs, batch=batch)]


def _with_eos(ids, tokenizer) -> np.ndarray:
  out = np.empty(len(ids) + 1, dtype=np.int32)
  out[:-1] = ids
  out[-1] = eos_id(tokenizer)
  return out
