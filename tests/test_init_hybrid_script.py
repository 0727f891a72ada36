"""scripts/init_hybrid.py's output is a complete model (issue 17 item 1): the teacher's tokenizer
files, generation_config.json and provenance.json next to the weights, and the other tools take it
with no --tokenizer. The teacher is a random tiny Llama saved with the byte tokenizer."""

from __future__ import annotations

import json

from _runs import load_script

from zebra_jax import accounting
from zebra_jax.config import LlamaConfig
from zebra_jax.convert import load_model, save_model
from zebra_jax.data.tokenize import load_tokenizer
from zebra_jax.models.hybrid import CausalLM

TINY = dict(
  vocab_size=320,
  hidden_size=64,
  intermediate_size=96,
  num_hidden_layers=3,
  num_attention_heads=4,
  num_key_value_heads=2,
  eos_token_id=257,
  bos_token_id=256,
)


def test_init_hybrid_writes_a_complete_model(tmp_path, capsys):
  from flax import nnx
  from transformers import AutoTokenizer

  teacher_dir, out = tmp_path / "teacher", tmp_path / "hybrid"
  save_model(CausalLM(LlamaConfig(**TINY), rngs=nnx.Rngs(0)), teacher_dir, tokenizer=load_tokenizer("byte"))
  assert load_script("init_hybrid").main(
    [
      "--teacher",
      str(teacher_dir),
      "--mla-layers",
      "0",
      "--kv-lora-rank",
      "8",
      "--q-lora-rank",
      "32",
      "--output",
      str(out),
    ]
  ) in (None, 0)
  student = load_model(out)
  assert tuple(student.config.layer_types()) == ("mla", "mamba2", "mamba2")
  text = "Zebra: héllo"
  assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == list(text.encode("utf-8"))
  assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 257
  prov = json.loads((out / "provenance.json").read_text())
  assert prov["teacher"] == {"path": str(teacher_dir)} and prov["stage"] == "init"
  assert prov["layer_types"] == "Mss"
  assert prov["kv_cache_fraction"] == accounting.kv_cache_fraction(student.config)
  report = json.loads((out / "init_report.json").read_text())
  assert report["kv_cache_fraction"] == prov["kv_cache_fraction"]
  capsys.readouterr()
  # the next tool needs no --tokenizer
  assert (
    load_script("generate").main(["--checkpoint", str(out), "--prompt", "Ze", "--max-new-tokens", "2"]) == 0
  )
