"""RoPE frequencies and pairings against transformers' own implementation."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import jax.numpy as jnp
from zebra_jax.models import rope

CASES = [
  ("default", None),
  ("linear", {"rope_type": "linear", "factor": 4.0}),
  (
    "llama3",
    {
      "rope_type": "llama3",
      "factor": 32.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192,
    },
  ),
  (
    "yarn",
    {
      "rope_type": "yarn",
      "factor": 32.0,
      "original_max_position_embeddings": 8192,
      "beta_fast": 32.0,
      "beta_slow": 1.0,
    },
  ),
  (
    "yarn",
    {
      "rope_type": "yarn",
      "factor": 8.0,
      "original_max_position_embeddings": 4096,
      "mscale": 1.0,
      "mscale_all_dim": 1.0,
    },
  ),
]


@pytest.mark.parametrize("rope_type, scaling", CASES)
@pytest.mark.parametrize("dim", [32, 64, 128])
def test_frequencies_match_transformers(rope_type, scaling, dim):
  params = {"rope_type": rope_type, "rope_theta": 500000.0, **(scaling or {})}
  hf = HFLlamaConfig(
    hidden_size=dim * 4,
    num_attention_heads=4,
    head_dim=dim,
    max_position_embeddings=131072,
    rope_parameters=params,
  )
  fn = ROPE_INIT_FUNCTIONS[rope_type] if rope_type != "default" else None
  if fn is None:
    ref_inv = 1.0 / (500000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ref_factor = 1.0
  else:
    ref_inv, ref_factor = fn(hf, "cpu")
  inv, factor = rope.rope_frequencies(dim, 500000.0, scaling, 131072)
  np.testing.assert_allclose(inv, ref_inv.numpy(), rtol=1e-6)
  assert factor == pytest.approx(ref_factor, rel=1e-7)


def test_yarn_mscale_values_of_the_reference():
  for factor, expected in ((32.0, 1.3466), (8.0, 1.2079)):
    _, f = rope.rope_frequencies(
      32, 5e5, {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": 8192}
    )
    assert f == pytest.approx(expected, abs=1e-4)


def test_rotate_half_matches_transformers():
  rng = np.random.RandomState(0)
  B, T, H, K = 2, 7, 3, 16
  q, k = rng.randn(B, T, H, K).astype(np.float32), rng.randn(B, T, H, K).astype(np.float32)
  pos = np.tile(np.arange(T)[None] + 100, (B, 1))
  inv, fac = rope.rope_frequencies(K, 10000.0)
  cos, sin = rope.rope_cos_sin(jnp.asarray(pos), inv, fac)
  ours = np.asarray(rope.apply_rope_half(jnp.asarray(q), cos, sin))
  emb = np.concatenate([np.asarray(cos), np.asarray(sin)], -1)
  tcos = torch.tensor(np.concatenate([np.asarray(cos)] * 2, -1))
  tsin = torch.tensor(np.concatenate([np.asarray(sin)] * 2, -1))
  ref, _ = apply_rotary_pos_emb(torch.tensor(q).transpose(1, 2), torch.tensor(k).transpose(1, 2), tcos, tsin)
  np.testing.assert_allclose(ours, ref.transpose(1, 2).numpy(), rtol=1e-5, atol=1e-5)
  assert emb.shape[-1] == K


def test_interleaved_rotates_adjacent_pairs():
  rng = np.random.RandomState(1)
  x = rng.randn(1, 5, 2, 8).astype(np.float32)
  pos = np.arange(5)[None]
  inv, _ = rope.rope_frequencies(8, 10000.0)
  cos, sin = rope.rope_cos_sin(jnp.asarray(pos), inv, 1.0)
  out = np.asarray(rope.apply_rope_interleaved(jnp.asarray(x), cos, sin))
  ang = pos[0][:, None] * inv[None]  # (T, 4)
  for j in range(4):
    c, s = np.cos(ang[:, j])[None, :, None], np.sin(ang[:, j])[None, :, None]
    np.testing.assert_allclose(out[..., 2 * j], x[..., 2 * j] * c - x[..., 2 * j + 1] * s, atol=1e-5)
    np.testing.assert_allclose(out[..., 2 * j + 1], x[..., 2 * j + 1] * c + x[..., 2 * j] * s, atol=1e-5)
