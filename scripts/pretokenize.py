r"""Tokenise a corpus into ArrayRecord shards of token ids, for zebra_jax.data.ArrayRecordSource.

  python scripts/pretokenize.py --input corpus.jsonl [more.jsonl docs/ ...] --tokenizer PATH_OR_byte \
    --output out_dir [--num-shards 8] [--paragraphs]

--input accepts what zebra_jax.data.open_source accepts: *.jsonl ({"text"} or {"messages"} per line), text files or
directories of them, "default" (the embedded default corpus), "hf:NAME[:SPLIT]".
--tokenizer: a Hugging Face tokenizer directory / name, a .gguf file, or "byte".

Output: out_dir/data-SSSSS-of-NNNNN.array_record (record i = document i's int32 little-endian token ids with EOS
appended, documents in input order spread over the shards in contiguous runs, so reading the shards in sorted order
gives back the input order) and out_dir/metadata.json (tokenizer, vocab size, eos, dtype, counts), written last:
a directory with metadata.json is complete.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zebra_jax.cli import ScriptError, argument_parser, script_errors  # noqa: E402
from zebra_jax.data import sources, specs, tokenize  # noqa: E402


def parse_args(argv=None):
  p = argument_parser(__doc__)
  p.add_argument("--input", nargs="+", required=True, help="corpus files/directories, 'default' or 'hf:NAME'")
  p.add_argument("--tokenizer", required=True, help="HF tokenizer dir/name, .gguf file, or 'byte'")
  p.add_argument("--output", required=True, help="output directory (created; must not hold shards already)")
  p.add_argument("--num-shards", type=int, default=1, help="ArrayRecord files to spread the documents over")
  p.add_argument(
    "--paragraphs", action="store_true", help="text files: one document per blank-line paragraph"
  )
  p.add_argument("--prefix", default="data", help="shard file name prefix")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p.parse_args(argv)


@script_errors()
def main(argv=None) -> int:
  args = parse_args(argv)
  from array_record.python.array_record_module import ArrayRecordWriter
  from tqdm import tqdm

  if args.num_shards < 1:
    raise ScriptError(f"--num-shards must be >= 1, got {args.num_shards}")
  src = specs.open_source(args.input, paragraphs=args.paragraphs)
  n_docs = len(src)
  if n_docs == 0:
    raise ScriptError(f"--input {' '.join(args.input)}: no documents (empty corpus)")
  if args.num_shards > n_docs:
    raise ScriptError(f"--num-shards={args.num_shards} is more than the {n_docs} documents")
  tok = tokenize.load_tokenizer(args.tokenizer)
  vocab, eos = tokenize.vocab_size(tok), tokenize.eos_id(tok)
  if vocab > np.iinfo(np.int32).max:
    raise ScriptError(f"--tokenizer {args.tokenizer}: a vocabulary of {vocab} does not fit int32")

  os.makedirs(args.output, exist_ok=True)
  if os.path.exists(os.path.join(args.output, sources.METADATA_FILE)) or any(
    f.endswith(sources.ARRAY_RECORD_SUFFIX) for f in os.listdir(args.output)
  ):
    raise ScriptError(
      f"--output {args.output} already holds shards or metadata.json; choose an empty directory"
    )

  # Contiguous runs of documents per shard keep the global order when shards are read in sorted order.
  bounds = np.linspace(0, n_docs, args.num_shards + 1).round().astype(int)
  width = max(5, len(str(args.num_shards)))
  shard_names, shard_docs, shard_tokens = [], [], []
  total_tokens, t0 = 0, time.time()
  bar = tqdm(total=n_docs, unit="doc", disable=args.no_progress, desc="pretokenize")
  for s in range(args.num_shards):
    name = f"{args.prefix}-{s:0{width}d}-of-{args.num_shards:0{width}d}{sources.ARRAY_RECORD_SUFFIX}"
    tmp_path = os.path.join(args.output, name + ".tmp")
    writer = ArrayRecordWriter(tmp_path, "group_size:1")  # group_size 1: cheap random access per document
    n_tok = 0
    for i in range(bounds[s], bounds[s + 1]):
      ids = tokenize.encode_document(tok, src[i], where=f"{getattr(src, 'name', 'input')} document {i}")
      writer.write(ids.astype("<i4").tobytes())
      n_tok += int(ids.size)
      bar.update(1)
      bar.set_postfix(tokens=f"{total_tokens + n_tok:,}", refresh=False)
    writer.close()
    os.replace(tmp_path, os.path.join(args.output, name))
    shard_names.append(name)
    shard_docs.append(int(bounds[s + 1] - bounds[s]))
    shard_tokens.append(n_tok)
    total_tokens += n_tok
  bar.close()

  meta = {
    "format": "zebra_jax.pretokenized/1",
    "tokenizer": tokenize.tokenizer_name(tok),
    "vocab_size": vocab,
    "eos_token_id": eos,
    "bos_token_id": getattr(tok, "bos_token_id", None),
    "eos_appended": True,
    "dtype": "<i4",
    "num_documents": n_docs,
    "num_tokens": total_tokens,
    "shards": [
      {"file": f, "documents": d, "tokens": t} for f, d, t in zip(shard_names, shard_docs, shard_tokens)
    ],
    "inputs": [str(x) for x in args.input],
    "paragraphs": bool(args.paragraphs),
  }
  tmp_meta = os.path.join(args.output, sources.METADATA_FILE + ".tmp")
  with open(tmp_meta, "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp_meta, os.path.join(args.output, sources.METADATA_FILE))
  dt = time.time() - t0
  print(
    f"wrote {n_docs:,} documents, {total_tokens:,} tokens in {args.num_shards} shard(s) to {args.output} "
    f"({total_tokens / max(dt, 1e-9):,.0f} tokens/s)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
