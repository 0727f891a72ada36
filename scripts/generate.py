r"""Generate text with a zebra-jax model (Llama teacher or MLA / Mamba2 hybrid), streaming to stdout.

    python scripts/generate.py --checkpoint smollm2 --prompt "What is the capital of France?" --chat
    python scripts/generate.py --checkpoint path/to/hf_dir_or.gguf --prompt "Once upon a time" \
        [--max-new-tokens 128] [--temperature 0.7 --top-p 0.9 --top-k 50 --repetition-penalty 1.2 --seed 0]
    python scripts/generate.py --checkpoint saved_hybrid/ --tokenizer path/to/teacher_hf_dir ...
    python scripts/generate.py --checkpoint smollm2 --draft path/to/small --num-draft-tokens 4 ...
    python scripts/generate.py --checkpoint saved_hybrid/ --tokenizer byte --mesh 1,1,2 --prompt "..."
    python scripts/generate.py --checkpoint saved_hybrid/ --mesh 2,1,1 --prompt "A" --prompt "B"

--checkpoint: anything `zebra_jax.from_pretrained` reads: a directory written by save_model (every
stage of a distillation run), an HF directory, an exported hybrid, a .gguf file, or `smollm2`
(SmolLM2-135M-Instruct GGUF, fetched once into $ZEBRA_JAX_CACHE, else ~/.cache/zebra_jax).
--tokenizer defaults to the checkpoint's own tokenizer files (a distilled model carries its
teacher's; models saved before that need --tokenizer). --chat wraps the prompt
in the tokenizer's chat template (one user turn, generation prompt added). Generation stops at the
tokenizer's / config's EOS tokens. With --draft, speculative decoding runs (no streaming; the
acceptance statistics are printed). --tokenizer byte: the byte-level tokenizer of the tiny configs.
--prompt may be repeated: the prompts form one batch (printed when all are done, no streaming).
--mesh data,fsdp,tensor shards the model and its cache over that many local devices (product = the
device count; one size may be -1): tensor splits heads, data x fsdp split the batch of prompts
(fsdp also splits the weights); see docs/inference.md.
"""

from __future__ import annotations

import os
import sys
import time

try:
  import zebra_jax  # noqa: F401
except ImportError:  # running from a source checkout without installation
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zebra_jax.cli import argument_parser, script_errors  # noqa: E402
from zebra_jax.cli import ScriptError  # noqa: E402


def _stop_tokens(tokenizer, config, checkpoint: str) -> tuple[int, ...]:
  """The checkpoint's generation_config.json eos ids (a saved model's are its tokenizer's), else
  the config's; plus the tokenizer's eos."""
  import json

  ids = set()
  eos = config.eos_token_id
  gen = os.path.join(checkpoint, "generation_config.json")
  if os.path.isfile(gen):
    with open(gen) as f:
      eos = json.load(f).get("eos_token_id", eos)
  if eos is not None:
    ids.update([eos] if isinstance(eos, int) else eos)
  if getattr(tokenizer, "eos_token_id", None) is not None:
    ids.add(int(tokenizer.eos_token_id))
  return tuple(sorted(ids))


def _decode(tokenizer, ids) -> str:
  try:
    return tokenizer.decode(ids, skip_special_tokens=True)
  except TypeError:  # ByteTokenizer.decode drops special ids itself
    return tokenizer.decode(ids)


@script_errors()
def main(argv=None) -> int:
  p = argument_parser(__doc__)
  p.add_argument(
    "--checkpoint", required=True, help="saved model dir, HF dir, exported hybrid dir, .gguf or smollm2"
  )
  p.add_argument(
    "--tokenizer", default=None, help="HF dir, .gguf, smollm2 or 'byte' (default: the checkpoint's own)"
  )
  p.add_argument(
    "--prompt",
    required=True,
    action="append",
    help="repeat for a batch of prompts (then printed at the end, not streamed)",
  )
  p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
  p.add_argument("--system", default=None, help="optional system message (with --chat)")
  p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
  p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
  p.add_argument(
    "--repetition-penalty",
    type=float,
    default=1.0,
    help="> 1 discourages tokens already in the text, prompt included (as transformers'; 1 = off)",
  )
  p.add_argument("--seed", type=int, default=0, help="seed of the sampling stream")
  p.add_argument(
    "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="compute dtype"
  )
  p.add_argument("--stream-every", type=int, default=8, help="decode steps per streamed chunk")
  p.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens per prefill call")
  p.add_argument("--draft", default=None, help="draft checkpoint for speculative decoding")
  p.add_argument(
    "--num-draft-tokens", type=int, default=4, help="draft tokens proposed per speculative round"
  )
  p.add_argument(
    "--mesh",
    default=None,
    metavar="DATA,FSDP,TENSOR",
    help="shard the model and cache over local devices, e.g. 1,1,2 (default: one device)",
  )
  args = p.parse_args(argv)
  if not 0 < args.repetition_penalty < float("inf"):
    raise ScriptError(
      f"--repetition-penalty {args.repetition_penalty}: must be a finite number > 0 (1 = off)"
    )
  if args.draft and args.repetition_penalty != 1.0:
    raise ScriptError("--repetition-penalty with --draft: speculative decoding has none; drop one of them")

  # lazy: --help runs without jax, flax, optax
  from zebra_jax.convert import from_pretrained, load_tokenizer, resolve_checkpoint

  # lazy: --help runs without jax, flax, optax
  from zebra_jax.infer import generate, shard_for_inference, stream

  mesh = None
  if args.mesh:
    # lazy: --help runs without jax, flax, optax
    from zebra_jax.parallel.sharding import make_mesh, parse_mesh

    try:
      mesh = make_mesh(*parse_mesh(args.mesh))
    except ValueError as e:  # a malformed template, or more devices than there are
      msg = str(e)
      raise ScriptError(msg if msg.startswith("--mesh") else f"--mesh {args.mesh}: {msg}") from None
  model = from_pretrained(args.checkpoint, dtype=args.dtype)
  tokenizer = load_tokenizer(args.tokenizer or args.checkpoint)
  draft = from_pretrained(args.draft, dtype=args.dtype) if args.draft else None
  if mesh is not None:
    shard_for_inference(model, mesh)
    print(f"[sharded over {dict(mesh.shape)} = {mesh.devices.size} devices]", file=sys.stderr)

  if args.chat and not getattr(tokenizer, "chat_template", None):
    raise ScriptError(
      f"--chat: the tokenizer of {args.tokenizer or args.checkpoint} has no chat template; drop --chat"
    )

  def encode(prompt: str) -> list[int]:
    if not args.chat:
      return list(tokenizer.encode(prompt))
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
      {"role": "user", "content": prompt}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))

  prompts = [encode(pr) for pr in args.prompt]
  stops = _stop_tokens(tokenizer, model.config, resolve_checkpoint(args.checkpoint).path)
  kw = dict(
    temperature=args.temperature,
    top_k=args.top_k,
    top_p=args.top_p,
    repetition_penalty=args.repetition_penalty,
    seed=args.seed,
    stop_tokens=stops,
    prefill_chunk=args.prefill_chunk,
  )

  t0 = time.perf_counter()
  if draft is not None or len(prompts) > 1:
    extra = dict(draft=draft, num_draft_tokens=args.num_draft_tokens) if draft is not None else {}
    out, stats = generate(model, prompts, args.max_new_tokens, return_stats=True, **extra, **kw)
    for i, o in enumerate(out):
      prefix = f"[{i}] " if len(out) > 1 else ""
      print(prefix + _decode(tokenizer, [t for t in o if t not in stops]))
    note = (
      f"; acceptance {stats['acceptance_rate']:.1%}, {stats['tokens_per_round']:.2f} tokens per target call"
      if draft is not None
      else ""
    )
    print(
      f"[{sum(len(o) for o in out)} tokens in {time.perf_counter() - t0:.2f}s including compilation{note}]",
      file=sys.stderr,
    )
    return 0

  generated: list[int] = []
  printed = text = ""
  for chunk in stream(model, prompts, args.max_new_tokens, every=args.stream_every, **kw):
    generated += chunk[0]
    text = _decode(tokenizer, [t for t in generated if t not in stops])
    # print only the stable new suffix (a partial UTF-8 sequence decodes to U+FFFD until complete)
    if text.startswith(printed) and not text.endswith("\ufffd"):
      sys.stdout.write(text[len(printed) :])
      sys.stdout.flush()
      printed = text
  if text != printed:
    sys.stdout.write(text[len(printed) :] if text.startswith(printed) else "\n" + text)
  sys.stdout.write("\n")
  dt = time.perf_counter() - t0
  print(f"[{len(generated)} tokens in {dt:.2f}s including compilation]", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
