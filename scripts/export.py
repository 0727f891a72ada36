r"""Export a zebra-jax model (or any checkpoint `from_pretrained` reads) to a PyTorch / HF directory.

    python scripts/export.py --checkpoint <saved dir | HF dir | .gguf | hybrid dir | smollm2> \
        --out DIR [--format hf|mambainllama|zebra_reference] [--dtype bfloat16] [--tokenizer TOK] \
        [--max-shard-size 5GB] [--base-model NAME] [--weights safetensors|pytorch_model.bin] \
        [--overwrite]

The directory always holds the tokenizer (HF files): the checkpoint's own (a distilled model carries
its teacher's), else --tokenizer (an HF tokenizer directory, the teacher's .gguf, smollm2 or byte);
without either nothing is written. It is written aside and swapped in at the end: a failed export
leaves --out as it was.

format "hf": a plain Llama becomes a LlamaForCausalLM directory; a hybrid becomes a transformers
remote-code directory (`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`).
format "mambainllama": config.json + mamba_config.json in the MambaInLlama layout (GQA + Mamba2).
format "zebra_reference": config.json (Llama) + hybrid_config.json + tensors, no remote code.
See docs/export.md.
"""

from __future__ import annotations

import os
import sys

try:
  import zebra_jax  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installation
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zebra_jax.cli import argument_parser, exit_code, script_errors  # noqa: E402
from zebra_jax.cli import ScriptError  # noqa: E402
from zebra_jax.export import export_pretrained  # noqa: E402


@script_errors()
def main(argv=None) -> int:
  p = argument_parser(__doc__)
  p.add_argument(
    "--checkpoint",
    required=True,
    help="a save_model directory, HF directory, .gguf file or exported hybrid directory",
  )
  p.add_argument("--out", required=True, help="directory to write")
  p.add_argument(
    "--format",
    default="hf",
    choices=("hf", "mambainllama", "zebra_reference"),
    help="directory layout (docs/export.md)",
  )
  p.add_argument(
    "--dtype",
    default=None,
    choices=("float32", "bfloat16", "float16"),
    help="stored dtype (default: the model's parameter dtype: as saved for a "
    "zebra-jax checkpoint, float32 for other sources)",
  )
  p.add_argument(
    "--tokenizer",
    default=None,
    help="tokenizer to include: an HF tokenizer directory, a .gguf, smollm2 or byte "
    "(default: the checkpoint's own)",
  )
  p.add_argument("--max-shard-size", default="5GB", help="split the weights into files of at most this")
  p.add_argument(
    "--base-model", default=None, help="mambainllama / zebra_reference: _name_or_path of the base Llama"
  )
  p.add_argument(
    "--weights",
    default="safetensors",
    choices=("safetensors", "pytorch_model.bin"),
    help="mambainllama: weight file format",
  )
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  args = p.parse_args(argv)

  # lazy: --help runs without jax, flax, optax
  from zebra_jax.convert import CheckpointError, from_pretrained, resolve_checkpoint

  # lazy: --help runs without jax, flax, optax
  from zebra_jax.export.io import check_out_dir, resolve_tokenizer

  # Everything that can fail cheaply fails before a weight is read or written: --out must not be
  # (or hold, or lie inside) the checkpoint or the tokenizer source.
  flags = dict(out_flag="--out", overwrite_flag="--overwrite")
  check_out_dir(args.out, args.overwrite, [args.checkpoint, args.tokenizer], **flags)
  ckpt = resolve_checkpoint(args.checkpoint)
  check_out_dir(args.out, args.overwrite, [ckpt.path], **flags)  # a named one is in the cache
  try:
    tokenizer = resolve_tokenizer(args.tokenizer or ckpt.path)
  except CheckpointError:
    raise
  except ValueError as e:
    if args.tokenizer:
      raise ScriptError(f"--tokenizer: {e}") from None
    raise ScriptError(
      f"{args.checkpoint} carries no tokenizer; pass --tokenizer (an HF tokenizer "
      "directory, the teacher's .gguf, smollm2 or byte)"
    ) from None
  # Load in the checkpoint's own dtype: an Orbax dir knows it; other sources load as float32 and
  # --dtype picks the stored dtype.
  model = (
    from_pretrained(ckpt.path)
    if ckpt.kind == "saved"
    else from_pretrained(ckpt.path, dtype="float32", progress=True)
  )
  extra = {}
  if args.format == "mambainllama":
    extra = dict(base_model=args.base_model, weights=args.weights)
  elif args.format == "zebra_reference":
    extra = dict(base_model=args.base_model)
  try:
    out = export_pretrained(
      model,
      args.out,
      format=args.format,
      dtype=args.dtype,
      tokenizer=tokenizer,
      max_shard_size=args.max_shard_size,
      overwrite=args.overwrite,
      **extra,
    )
  except ValueError as e:  # a --max-shard-size or --dtype the writer refuses
    if exit_code(e) is not None:
      raise
    raise ScriptError(str(e)) from None
  kinds = model.config.layer_types()
  counts = ", ".join(f"{k}: {kinds.count(k)}" for k in sorted(set(kinds)))
  print(f"exported {len(kinds)} layers ({counts}) as {args.format} to {out}")
  for f in sorted(os.listdir(out)):
    print(f"  {f}  {os.path.getsize(os.path.join(out, f)):,} bytes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
