r"""Convert a Llama checkpoint (HF safetensors / torch .bin directory, or a GGUF file) to zebra-jax.

    python scripts/convert.py --input path/to/hf_dir_or_model.gguf --output converted/ \
        [--dtype bfloat16|float32] [--overwrite]

Reads every tensor (progress bar), checks it against the config, prints a config summary and the
parameter count, and writes `config.json` + an Orbax parameter checkpoint that
`zebra_jax.convert.load_model` (or `from_pretrained`) reads back, with the input's tokenizer as HF
files (--tokenizer picks another source), generation_config.json and provenance.json next to it.
--input is anything `zebra_jax.from_pretrained` reads, `smollm2` included.
"""

from __future__ import annotations

import os
import sys

try:
  import zebra_jax  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installation
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zebra_jax.cli import argument_parser, script_errors  # noqa: E402
from zebra_jax._paths import check_output  # noqa: E402
from zebra_jax.cli import ScriptError  # noqa: E402


@script_errors()
def main(argv=None) -> int:
  p = argument_parser(__doc__)
  p.add_argument("--input", required=True, help="HF checkpoint directory, .gguf file, or .bin directory")
  p.add_argument("--output", required=True, help="directory to write (config.json + params/)")
  p.add_argument(
    "--dtype",
    default="float32",
    choices=("float32", "bfloat16", "float16"),
    help="compute and parameter storage dtype of the converted model",
  )
  p.add_argument(
    "--tokenizer",
    default=None,
    help="tokenizer to store with the model: HF dir, .gguf, smollm2 or byte (default: "
    "the input's own; without one the model is saved with a warning)",
  )
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an earlier converted model in --output (never other files)",
  )
  args = p.parse_args(argv)

  # lazy: --help runs without jax, flax, optax
  from zebra_jax.convert import from_pretrained, load_tokenizer, save_model
  from zebra_jax.convert.model_files import provenance  # lazy: --help runs without jax, flax, optax
  from zebra_jax.convert.orbax_io import SAVED_MODEL_FILES  # lazy: --help runs without jax, flax, optax

  # before anything is read: --output must not be (or hold, or lie inside) an input, and
  # --overwrite replaces only an earlier converted model
  check_output(
    args.output,
    inputs=[args.input, args.tokenizer],
    overwrite=args.overwrite,
    owned=SAVED_MODEL_FILES,
    out_flag="--output",
    overwrite_flag="--overwrite",
  )
  model = from_pretrained(args.input, dtype=args.dtype, progress=True)
  try:
    tokenizer = load_tokenizer(args.tokenizer or args.input)
  except Exception as e:  # noqa: BLE001  transformers raises many types for a missing tokenizer
    if args.tokenizer:
      raise ScriptError(f"--tokenizer {args.tokenizer}: {type(e).__name__}: {e}") from None
    tokenizer = None
    print(
      f"warning: {args.input} has no tokenizer transformers can load ({type(e).__name__}); "
      "the model is saved without one (pass --tokenizer to store one)",
      file=sys.stderr,
    )

  import jax
  from flax import nnx

  c = model.config
  n_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(
    f"config: {c.num_hidden_layers} layers, hidden {c.hidden_size}, intermediate "
    f"{c.intermediate_size}, heads {c.num_attention_heads} (kv {c.num_key_value_heads}, head_dim "
    f"{c.head_dim}), vocab {c.vocab_size}, rope_theta {c.rope_theta}, rope_scaling "
    f"{c.rope_scaling}, tied embeddings {c.tie_word_embeddings}, dtype {c.param_dtype}"
  )
  print(f"parameters: {n_params:,}")
  out = save_model(
    model,
    args.output,
    overwrite=args.overwrite,
    tokenizer=tokenizer,
    provenance=provenance(
      c,
      teacher={"path": args.input},
      config="convert",
      stage="convert",
      tokenizer=args.tokenizer or args.input,
    ),
  )
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
