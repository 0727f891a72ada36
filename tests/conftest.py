"""Shared pytest fixtures (keep small)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
  """Path of the real SmolLM2-135M-Instruct Q4_1 GGUF (downloaded once per machine into the cache:
  $ZEBRA_JAX_CACHE or ~/.cache/zebra_jax)."""
  from zebra_jax.assets import smollm2_gguf_path
  return smollm2_gguf_path()
