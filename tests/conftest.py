"""Shared pytest fixtures (keep small)."""

from __future__ import annotations

import importlib.util
import os

import pytest

# With libtpu installed (the `tpu-aot` extra, for ahead-of-time TPU compilation on a CPU machine) jax
# would try to open a TPU at import. Tests run on the CPU unless told otherwise; TPU topologies for AOT
# compilation are still available. Several test processes may load libtpu at once.
if importlib.util.find_spec("libtpu") is not None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


# Most of the CPU suite's time is XLA compiling small programs, where LLVM's optimisation passes
# cost far more than the programs take to run. jax's `jax_disable_most_optimizations` (XLA backend
# optimisation level 0, no expensive LLVM passes; the HLO passes, hence what every program computes,
# are unchanged) about halves the compile time. Only for CPU runs (GPU / TPU tests and benchmarks
# keep the optimising backend); set in the environment, so the subprocesses the tests start
# (scripts, multi-device workers) inherit it; JAX_DISABLE_MOST_OPTIMIZATIONS=0 restores the default.
if os.environ.get("JAX_PLATFORMS") == "cpu":
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# Two pytest-xdist workers (pyproject's addopts) on one GPU: XLA would preallocate 75% of its memory
# in each; they allocate as they go instead.
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The scripts turn on a persistent compilation cache in ~/.cache/zebra_jax/xla; a test that calls a
# script's main() in this process would leave it on for every later test. Tests that want a cache
# pass $JAX_COMPILATION_CACHE_DIR to their subprocesses (test_distill.py's jax_cache).
os.environ.setdefault("ZEBRA_JAX_COMPILATION_CACHE", "0")


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
  """Path of the real SmolLM2-135M-Instruct Q4_1 GGUF (downloaded once per machine into the cache:
  $ZEBRA_JAX_CACHE or ~/.cache/zebra_jax)."""
  from zebra_jax.assets import smollm2_gguf_path

  return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
  """transformers' own tokenizer of the SmolLM2 GGUF, loaded once (converting a GGUF vocabulary takes
  10-20 s on a busy CPU)."""
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(
    os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf), local_files_only=True
  )
