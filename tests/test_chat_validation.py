"""Chat validation (eval/chat_validation.py): prompts about passages of validation documents, greedy
answers, repetition statistics.

The prompts are checked against the held-out split's documents (and kept apart from the train
split's), the answers against a greedy loop (tests/_oracles.py) over the model's full forward, the
statistics against word 4-gram counts done by hand.
"""

import numpy as np
import jax
import pytest
from flax import nnx
from _oracles import greedy_by_full_forward
from _runs import load_config_file, load_script

from zebra_jax.config import HybridConfig
from zebra_jax.data import ByteTokenizer
from zebra_jax.data.pipeline import validation_documents
from zebra_jax.distill.instructions import PASSAGE_TEMPLATES
from zebra_jax.distill.samples import train_documents
from zebra_jax.eval.chat_validation import answer_stats, greedy_answers, validation_chat_prompts
from zebra_jax.models.hybrid import CausalLM

USER = "<|user|>\n"  # the byte tokenizer's chat template: "<|user|>\n{message}\n"


def _passage(message: str) -> str:
  for t in PASSAGE_TEMPLATES:
    head, tail = t.split("{p}")
    if message.startswith(head) and message.endswith(tail):
      return message[len(head) : len(message) - len(tail)]
  raise AssertionError(f"not a passage task: {message[:80]!r}")


def test_prompts_are_passage_tasks_about_validation_documents_only():
  cfg = load_config_file("tiny")
  tok = ByteTokenizer()
  prompts = validation_chat_prompts(cfg, tok, 10, passage_chars=(100, 300))
  assert len(prompts) == 10
  held_out = [d for docs in validation_documents(cfg.data).values() for d in docs]
  train = train_documents(cfg)
  for ids in prompts:
    text = tok.decode(ids)
    assert text.startswith(USER) and text.endswith("\n") and text.count("<|") == 1
    passage = _passage(text[len(USER) : -1])
    assert 100 <= len(passage) <= 300
    assert any(passage in d for d in held_out)
    assert not any(passage in d for d in train if isinstance(d, str))
  assert prompts == validation_chat_prompts(cfg, tok, 10, passage_chars=(100, 300))  # seeded
  assert prompts != validation_chat_prompts(cfg, tok, 10, seed=7, passage_chars=(100, 300))


def test_answer_stats_count_repeated_word_4grams_by_hand():
  tok = ByteTokenizer()
  eos = tok.eos_token_id
  plain = tok.encode("the cat sat on the mat today", add_special_tokens=False)
  # 12 words, 9 word 4-grams, 4 distinct: 5 of 9 already occurred
  loop = tok.encode("a b c d a b c d a b c d", add_special_tokens=False)
  short = tok.encode("yes", add_special_tokens=False)  # no 4-gram: 0
  answers = [plain + [eos], loop, short + [eos]]
  s = answer_stats(answers, tok, [eos])
  assert s["repetition"] == pytest.approx((0 + 5 / 9 + 0) / 3)
  assert s["loops"] == pytest.approx(1 / 3)
  assert s["stopped"] == pytest.approx(2 / 3)
  assert s["mean_tokens"] == pytest.approx((len(plain) + 1 + len(loop) + len(short) + 1) / 3)
  assert s["answers"] == ["the cat sat on the mat today", "a b c d a b c d a b c d", "yes"]


V, EOS = 64, 5


def test_greedy_answers_equal_a_full_forward_greedy_loop_across_batches():
  config = HybridConfig(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=3,
    mla_layers=(0,),
    attn_layers=(2,),
    q_lora_rank=16,
    kv_lora_rank=16,
    chunk_size=4,
    eos_token_id=EOS,
    impl="reference",
  )
  model = CausalLM(config, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p * 2.0 if p.ndim >= 2 else p, state))  # sharp logits
  rng = np.random.default_rng(0)
  prompts = [rng.integers(6, V, n).tolist() for n in (9, 3, 14, 6, 11)]
  got = greedy_answers(model, prompts, 12, stops=(EOS,), batch_size=2)  # 3 batches
  assert got == [greedy_by_full_forward(model, p, 12, width=160) for p in prompts]


def test_cli_refuses_a_missing_checkpoint_and_a_checkpoint_outside_a_run(tmp_path, capsys):
  evaluate = load_script("evaluate")
  with pytest.raises(SystemExit) as e:
    evaluate.main(["chat-validation", "--checkpoint", f"kd={tmp_path}/nope/kd/model"])
  assert e.value.code != 0
  assert "no such file or directory" in capsys.readouterr().err
  (tmp_path / "model").mkdir()
  with pytest.raises(SystemExit) as e:
    evaluate.main(["chat-validation", "--checkpoint", str(tmp_path / "model"), "--num", "0"])
  assert e.value.code != 0
  assert "each must be >= 1" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    evaluate.main(["chat-validation", "--checkpoint", str(tmp_path / "model"), "--teacher", "smollm2"])
  assert e.value.code != 0
  assert "--run_config is required" in capsys.readouterr().err
