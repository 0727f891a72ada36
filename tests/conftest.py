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


# The tests compile the same small programs many times: in different tests (new closures, same
# HLO) and in the subprocesses of the command-line and multi-process tests. A persistent compilation
# cache shared by every test process (pytest-xdist workers and their children inherit the variable)
# compiles each program once; it keys on the program, jax version and flags, so results are the ones
# a fresh compile gives. ZEBRA_JAX_TEST_CACHE=0 turns it off; a set JAX_COMPILATION_CACHE_DIR wins.
if os.environ.get("ZEBRA_JAX_TEST_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      tempfile.gettempdir(), f"zebra_jax_test_xla_cache_{os.getuid()}")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
  """Path of the real SmolLM2-135M-Instruct Q4_1 GGUF (downloaded once per machine into the cache:
  $ZEBRA_JAX_CACHE or ~/.cache/zebra_jax)."""
  from zebra_jax.assets import smollm2_gguf_path
  return smollm2_gguf_path()
