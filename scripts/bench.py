#!/usr/bin/env python
r"""Benchmarks of zebra-jax.

    python scripts/bench.py kernels --family ssd [--append docs/benchmarks.md] [family options]
    python scripts/bench.py generate [--append docs/benchmarks.md]      # decode throughput
    python scripts/bench.py speculative [--append docs/benchmarks.md]   # speculative decoding
    python scripts/bench.py train --stage kd --student zebra_1b_4mla12m2 --teacher llama-3.1-8b-instruct \
        --seq-len 2048 --batch 8 [--append docs/benchmarks.md]         # one distillation step
    python scripts/bench.py samples --windows 0,256 [--append docs/benchmarks.md]  # the samples stage's decode

`kernels` runs one or more kernel families (`--family` may repeat) and prints one markdown section
per family: a table of shape, implementation, time, GB/s (or TFLOP/s) and the ratio to the peer
measured in the same run, under a line naming the device, the library versions and the date.
`--append PATH` appends the sections to PATH (docs/benchmarks.md is append-only). Options the
dispatcher does not know are passed to the family (see `python -m zebra_jax.bench.<family> -h`).

Every benchmark lives in the `zebra_jax.bench` package, one module per sub-command or family.
Adding a family: write `zebra_jax/bench/<name>.py` with `main(argv) -> str` (it parses its own
options and returns its markdown section), then `bench_<name>(argv) -> str` below calling it,
decorated with `@family("<name>")`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

# Two frameworks may share the GPU in one run (the JAX kernels and the PyTorch/Triton peers):
# let JAX allocate on demand instead of reserving most of the memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zebra_jax.cli import argument_parser, script_errors, with_help_formatter  # noqa: E402

FAMILIES: dict[str, Callable[[list[str]], str]] = {}


def family(name: str):
  def register(fn):
    FAMILIES[name] = fn
    return fn

  return register


@family("ssd")
def bench_ssd(argv: list[str]) -> str:
  """Mamba2 SSD chunked scan: Pallas GPU kernel vs mamba_ssm (Triton) vs the pure-JAX reference."""
  from zebra_jax.bench import ssd  # lazy: --help runs without numpy

  return ssd.main(argv)


@family("mla")
def bench_mla(argv: list[str]) -> str:
  """Absorbed MLA decode: Pallas kernel vs the HBM copy ceiling and an XLA decode."""
  from zebra_jax.bench import mla  # lazy: --help runs without jax, numpy

  return mla.main(argv)


@family("decode_attention")
def bench_decode_attention(argv: list[str]) -> str:
  """GQA decode step over the [v | k] cache: the latent decode kernel (rows below each length) vs
  the XLA path (every allocated row), at the samples stage's and a Llama-3.1-8B layer's shapes."""
  from zebra_jax.bench import decode_attention  # lazy: --help runs without jax, numpy

  return decode_attention.main(argv)


@family("attention")
def bench_attention(argv: list[str]) -> str:
  """Causal prefill/training attention with MLA head sizes: our Pallas GPU flash kernel (autotuned
  over its block presets, `--flash-config` to choose) vs cuDNN, fwd and fwd+bwd TFLOP/s."""
  from zebra_jax.bench import attention  # lazy: --help runs without jax, numpy

  return attention.main(argv)


@family("kd_loss")
def bench_kd_loss(argv: list[str]) -> str:
  """KD output-head loss + gradient: full logits (train/losses.py) vs chunked with a custom VJP
  (train/fused_losses.py), time and XLA temp memory at the smollm2 / Zebra-1B / Zebra-8B heads."""
  from zebra_jax.bench import kd_loss  # lazy: --help runs without jax, flax, optax

  return kd_loss.main(argv)


def kernels(args: argparse.Namespace, rest: list[str]) -> None:
  sections = []
  for name in args.family or sorted(FAMILIES):
    sections.append(FAMILIES[name](rest))
  if args.append:
    with open(args.append, "a") as f:
      for s in sections:
        f.write("\n" + s)
    print(f"appended {len(sections)} section(s) to {args.append}")


@script_errors()
def main(argv=None) -> None:
  parser = argument_parser(__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  k = sub.add_parser("kernels", help="kernel benchmarks against their peers")
  k.add_argument(
    "--family", action="append", choices=sorted(FAMILIES), help="benchmark family (repeatable; default: all)"
  )
  k.add_argument("--append", default=None, help="append the markdown sections to this file")
  sub.add_parser(
    "generate",
    help="decode throughput: teacher vs GQA+Mamba2 vs Zebra (options: python scripts/bench.py generate -h)",
    add_help=False,
  )
  sub.add_parser(
    "speculative",
    help="speculative decoding of a real target with a distilled "
    "truncated draft (options: python scripts/bench.py speculative -h)",
    add_help=False,
  )
  sub.add_parser(
    "train",
    help="one distillation step (kd / ild_mla / ild_mamba) at preset shapes "
    "with random weights: tokens/s, MFU, memory, breakdown (options: python "
    "scripts/bench.py train -h)",
    add_help=False,
  )
  sub.add_parser(
    "samples",
    help="the samples stage's generate call with and without the windowed cache "
    "(options: python scripts/bench.py samples -h)",
    add_help=False,
  )
  with_help_formatter(parser)
  args, rest = parser.parse_known_args(argv)
  if args.command == "kernels":
    kernels(args, rest)
  elif args.command == "generate":
    from zebra_jax.bench import decode  # lazy: --help runs without jax, flax, optax

    decode.main(rest)
  elif args.command == "train":
    from zebra_jax.bench import train_step  # lazy: --help runs without jax, flax, optax

    train_step.main(rest)
  elif args.command == "samples":
    from zebra_jax.bench import samples  # lazy: --help runs without jax, flax, optax

    samples.main(rest)
  elif args.command == "speculative":
    from zebra_jax.bench import speculative  # lazy: --help runs without jax, flax, optax

    speculative.main(rest)


if __name__ == "__main__":
  main()
