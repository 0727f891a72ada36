"""Evaluation: perplexity and lm-eval scores against transformers / lm-eval's own HF model, teacher
agreement against float64 numpy, the KV report against the reference's table, needle in a haystack
with scripted generators (and a real tiny model end to end).

A character-level tokenizer (tokenizers BPE with no merges, BOS added) is written next to an
exported tiny Llama, so transformers and lm-eval's HFLM read exactly the same model and tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _runs import load_script

from zebra_jax import presets  # noqa: E402
from zebra_jax.config import HybridConfig, LlamaConfig  # noqa: E402
from zebra_jax.eval import (
  format_kv_report,
  format_needle_grid,
  kv_cache_report,  # noqa: E402
  make_needle_prompt,
  needle_in_a_haystack,
  perplexity,
  perplexity_of_files,
  rolling_windows,
  teacher_agreement,
)
from zebra_jax.export import export_pretrained  # noqa: E402
from zebra_jax.models.hybrid import CausalLM  # noqa: E402

V = 128
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(
  vocab_size=V,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-5,
  impl="reference",
  bos_token_id=0,
  eos_token_id=1,
  max_position_embeddings=256,
)


def char_tokenizer():
  from tokenizers import Tokenizer, decoders, models, processors

  chars = [chr(c) for c in range(32, 127)] + ["\n"]
  vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tok.decoder = decoders.Fuse()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
  )


def scaled_model(config, seed=0, scale=2.0):
  model = CausalLM(config, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p * scale if p.ndim >= 2 else p, state))
  return model


TEXT = (
  "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!\n"
  "Sphinx of black quartz, judge my vow. 0123456789"
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  """(our tiny Llama, its exported HF directory with the char tokenizer, the tokenizer)."""
  tok = char_tokenizer()
  model = scaled_model(LlamaConfig(**BASE), scale=1.5)
  out = export_pretrained(model, tmp_path_factory.mktemp("eval") / "llama", tokenizer=tok)
  return model, out, transformers.AutoTokenizer.from_pretrained(out)


# ------------------------------------------------------------------------------------------------
# perplexity
# ------------------------------------------------------------------------------------------------
def test_rolling_windows_predict_every_token_once_with_context():
  for n, L, s in [(50, 16, 8), (50, 16, 15), (7, 16, None), (33, 4, 1), (2, 2, 1)]:
    seen = []
    for start, end, k in rolling_windows(n, L, s):
      assert end - start <= L and 1 <= k <= end - start - 1
      seen += list(range(end - k, end))
      assert start == max(0, end - L)  # as much context as fits
    assert seen == list(range(1, n))
  with pytest.raises(ValueError, match="stride"):
    list(rolling_windows(10, 8, 8))


def test_perplexity_matches_transformers(llama, tmp_path):
  model, out, tok = llama
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = tok.encode(TEXT)  # BOS + characters
  n = len(ids)
  # One window: exp(mean token cross-entropy) as transformers computes it with labels.
  with torch.no_grad():
    loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
  res = perplexity(model, [ids], max_length=256)
  assert res["tokens"] == n - 1
  assert abs(math.log(res["perplexity"]) - loss) < 1e-4 * loss
  # Sliding windows of 32 tokens, stride 8: every token scored once, with up to 31 of context.
  ref_nll = 0.0
  with torch.no_grad():
    for s, e, k in rolling_windows(n, 32, 8):
      logp = torch.log_softmax(hf(torch.tensor([ids[s:e]])).logits[0].double(), -1)
      ref_nll -= sum(logp[e - s - 1 - j - 1, ids[e - 1 - j]].item() for j in range(k))
  res = perplexity(model, [ids, ids[:40]], max_length=32, stride=8, batch_size=2)
  assert abs(res["per_sequence"][0]["nll"] - ref_nll) < 1e-4 * ref_nll
  assert res["tokens"] == (n - 1) + 39
  # Files: BOS prepended, bits per byte reported.
  p = tmp_path / "doc.txt"
  p.write_text(TEXT)
  fres = perplexity_of_files(model, tok, [p], max_length=256)
  assert abs(math.log(fres["perplexity"]) - loss) < 1e-4 * loss
  assert abs(fres["bits_per_byte"] - loss * (n - 1) / math.log(2) / len(TEXT.encode())) < 1e-6


def test_a_jsonl_file_is_scored_row_by_row_not_as_json_text(llama, tmp_path):
  """`evaluate.py perplexity --files data.jsonl` scores each {"text"} row as a document (as the
  training data reads the file), not the file's JSON syntax; the NLL is transformers' summed
  per-row loss. A row that is not text is a one-line DataError naming the line."""
  import json

  from zebra_jax.data.sources import DataError

  model, out, tok = llama
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  rows = [TEXT, TEXT[:60]]
  ref_nll = 0.0
  with torch.no_grad():
    for r in rows:
      ids = tok.encode(r)
      ref_nll += hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item() * (len(ids) - 1)
  p = tmp_path / "rows.jsonl"
  p.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows) + "\n")
  res = perplexity_of_files(model, tok, [p], max_length=256)
  (entry,) = res["per_sequence"]
  assert entry["documents"] == 2 and abs(entry["nll"] - ref_nll) < 1e-4 * ref_nll
  assert entry["bytes"] == sum(len(r.encode()) for r in rows)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": 5}\n')
  with pytest.raises(DataError, match=r"bad.jsonl:2: 'text' must be a string"):
    perplexity_of_files(model, tok, [bad], max_length=256)
  chat = tmp_path / "chat.jsonl"
  chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
  with pytest.raises(DataError, match=r"chat.jsonl: row 1 is a chat 'messages' row"):
    perplexity_of_files(model, tok, [chat], max_length=256)


# ------------------------------------------------------------------------------------------------
# teacher agreement
# ------------------------------------------------------------------------------------------------
def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_teacher_agreement_against_numpy(llama):
  teacher = llama[0]
  student = scaled_model(
    HybridConfig(
      **{**BASE, "num_hidden_layers": 2}, mla_layers=(0,), q_lora_rank=16, kv_lora_rank=16, chunk_size=8
    ),
    seed=3,
  )
  rng = np.random.default_rng(0)
  seqs = [rng.integers(3, V, 45).tolist(), rng.integers(3, V, 20).tolist()]
  res = teacher_agreement(student, teacher, seqs, max_length=24, stride=10, batch_size=2)
  # Reference: every window right-padded to 24 (exact: the models are causal) in one batch.
  windows = [(seq[s:e], k) for seq in seqs for s, e, k in rolling_windows(len(seq), 24, 10)]
  batch = np.zeros((len(windows), 24), np.int32)
  for i, (w, _) in enumerate(windows):
    batch[i, : len(w)] = w
  fwd = nnx.jit(lambda m, x: m(x))
  all_s = np.asarray(fwd(student, jnp.asarray(batch)), np.float64)
  all_t = np.asarray(fwd(teacher, jnp.asarray(batch)), np.float64)
  kl, top1, n = 0.0, 0, 0
  for i, (w, k) in enumerate(windows):
    ls = _np_log_softmax(all_s[i, : len(w)])[-k - 1 : -1]
    lt = _np_log_softmax(all_t[i, : len(w)])[-k - 1 : -1]
    kl += float((np.exp(lt) * (lt - ls)).sum())
    top1 += int((ls.argmax(-1) == lt.argmax(-1)).sum())
    n += k
  assert res["tokens"] == n == 44 + 19
  assert abs(res["kl"] - kl / n) < 1e-4 * (kl / n)
  assert res["top1"] == pytest.approx(top1 / n, abs=1e-12)
  assert 0.0 < res["top1"] < 1.0 and res["kl"] > 0.01
  same = teacher_agreement(teacher, teacher, seqs, max_length=24, stride=10)
  assert same["top1"] == 1.0 and abs(same["kl"]) < 1e-6


# ------------------------------------------------------------------------------------------------
# KV-cache report
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "name,percent",
  [
    ("zebra_1b_4mla12m2", 3.906),
    ("zebra_1b_8mla8m2", 7.812),
    ("zebra_3b_6mla22m2", 2.009),
    ("zebra_8b_8mla24m2", 2.734),
  ],
)
def test_kv_report_matches_reference_table(name, percent):
  cfg = presets.get_preset(name)
  r = kv_cache_report(cfg, seq_lens=(4096,), batch=2)
  assert round(r["kv_cache_percent"], 3) == percent  # reference 9.2 table
  d_h, n_kv = cfg.head_dim, cfg.num_key_value_heads
  assert r["teacher_kv_elements_per_token"] == cfg.num_hidden_layers * 2 * n_kv * d_h
  row = r["by_length"][0]
  mamba = len(cfg.mamba_layers) * (
    cfg.mamba_nheads * cfg.headdim * cfg.d_state + cfg.mamba_conv_dim * cfg.d_conv
  )
  assert row["bytes"] == 2 * (4096 * r["kv_elements_per_token"] + mamba) * 2
  assert "% of the GQA teacher" in format_kv_report(r)


# ------------------------------------------------------------------------------------------------
# needle in a haystack
# ------------------------------------------------------------------------------------------------
def _key_in_prompt(tok, ids, visible=None):
  text = tok.decode(ids[:visible] if visible else ids, skip_special_tokens=True)
  m = re.search(r"The pass key is (\d+)\.", text)
  return m.group(1) if m else None


def test_needle_prompts_and_grid(llama):
  tok = llama[2]
  for L in (300, 1000):
    for d in (0.0, 0.5, 1.0):
      p = make_needle_prompt(tok, L, d, "12345")
      assert L - 25 <= len(p["ids"]) <= L  # within one filler sentence (< 25 chars) of the target
      hay_start = p["text"].index("\n") + 1
      hay_end = p["text"].rindex("\nWhat is the pass key?")
      needle = "The pass key is 12345. Remember it. 12345 is the pass key. "
      frac = (p["needle_char"] - hay_start) / (hay_end - hay_start - len(needle))
      assert abs(frac - d) < 0.08, (L, d, frac)
      assert _key_in_prompt(tok, p["ids"]) == "12345"

  def oracle(prompts, n):  # reads the whole prompt
    return [
      tok.encode(" " + (_key_in_prompt(tok, p) or "0") + ".", add_special_tokens=False) for p in prompts
    ]

  def short_memory(prompts, n):  # sees only the first 330 tokens
    return [
      tok.encode(" " + (_key_in_prompt(tok, p, 330) or "none"), add_special_tokens=False) for p in prompts
    ]

  res = needle_in_a_haystack(None, tok, [300, 1000], [0.0, 0.5, 1.0], trials=2, generate_fn=oracle)
  assert res["overall"] == 1.0 and len(res["trials"]) == 12
  res = needle_in_a_haystack(None, tok, [300, 1000], [0.0, 0.5, 1.0], trials=2, generate_fn=short_memory)
  assert res["by_length"][300] == 1.0
  assert res["accuracy"][(1000, 0.0)] == 1.0 and res["accuracy"][(1000, 1.0)] == 0.0
  assert "overall accuracy" in format_needle_grid(res)
  keys = [t["key"] for t in res["trials"]]
  assert len(set(keys)) > 1 and all(len(k) == 5 for k in keys)


def test_needle_with_a_real_model(llama):
  model, _, tok = llama
  res = needle_in_a_haystack(model, tok, [250], [0.0, 1.0], max_new_tokens=6)
  assert len(res["trials"]) == 2 and 0.0 <= res["overall"] <= 1.0
  assert all(isinstance(t["output"], str) and 225 < t["prompt_tokens"] <= 250 for t in res["trials"])
  with pytest.raises(ValueError, match="shorter than the prompt without any filler"):
    make_needle_prompt(tok, 96, 0.5, "12345")


# ------------------------------------------------------------------------------------------------
# lm-eval adapter: the same local tasks through our model and through lm-eval's own HF model
# ------------------------------------------------------------------------------------------------
MC_DOCS = [
  {"question": "Sky color:", "choices": [" blue", " green", " red"], "answer": 0},
  {"question": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0},
  {"question": "Opposite of up:", "choices": [" left", " down", " fast", " up"], "answer": 1},
  {"question": "", "choices": ["yes", "no"], "answer": 1},
]
PPL_DOCS = [{"text": TEXT}, {"text": "short one"}, {"text": "x" * 300}]  # the last spans windows
GEN_DOCS = [{"prompt": "Q: abc\nA:", "target": " abc"}, {"prompt": "Q: 12\nA:", "target": " 12"}]


def _write_tasks(d):
  import yaml

  files = {}
  for name, docs in (("mc", MC_DOCS), ("ppl", PPL_DOCS), ("gen", GEN_DOCS)):
    files[name] = str(d / f"{name}.jsonl")
    with open(files[name], "w") as f:
      for doc in docs:
        f.write(json.dumps(doc) + "\n")
  common = lambda n: {
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": files[n]}},
    "test_split": "test",
  }
  tasks = {
    "zj_mc": {
      **common("mc"),
      "output_type": "multiple_choice",
      "doc_to_text": "{{question}}",
      "doc_to_choice": "{{choices}}",
      "doc_to_target": "{{answer}}",
      "metric_list": [{"metric": "acc"}],
    },
    "zj_ppl": {
      **common("ppl"),
      "output_type": "loglikelihood_rolling",
      "doc_to_text": "",
      "doc_to_target": "{{text}}",
      "metric_list": [
        {"metric": "word_perplexity"},
        {"metric": "byte_perplexity"},
        {"metric": "bits_per_byte"},
      ],
    },
    "zj_gen": {
      **common("gen"),
      "output_type": "generate_until",
      "doc_to_text": "{{prompt}}",
      "doc_to_target": "{{target}}",
      "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
      "metric_list": [{"metric": "exact_match"}],
    },
  }
  for name, spec in tasks.items():
    (d / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **spec}))
  return str(d)


@pytest.fixture(scope="module")
def lm_eval_setup(tmp_path_factory):
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  lm_eval = pytest.importorskip("lm_eval")
  d = tmp_path_factory.mktemp("tasks")
  return lm_eval, _write_tasks(d)


def _run(lm_eval, model, include, **kw):
  from lm_eval.tasks import TaskManager

  return lm_eval.simple_evaluate(
    model=model,
    tasks=["zj_mc", "zj_ppl", "zj_gen"],
    task_manager=TaskManager(include_path=include),
    log_samples=True,
    bootstrap_iters=0,
    **kw,
  )


def test_lm_eval_adapter_matches_lm_eval_hf_model(llama, lm_eval_setup):
  lm_eval, include = lm_eval_setup
  from zebra_jax.eval.lm_eval_adapter import ZebraJaxLM

  model, out, _ = llama
  ours = _run(lm_eval, ZebraJaxLM(model=model, tokenizer=out, batch_size=4), include)
  ref = _run(
    lm_eval,
    "hf",
    include,
    model_args=f"pretrained={out},dtype=float32,max_length=256",
    device="cpu",
    batch_size=4,
  )
  # multiple choice: identical per-choice log-likelihoods and greedy flags, hence identical acc
  for a, b in zip(ours["samples"]["zj_mc"], ref["samples"]["zj_mc"]):
    la = np.array([r[0][0] for r in a["resps"]])
    lb = np.array([r[0][0] for r in b["resps"]])
    np.testing.assert_allclose(la, lb, rtol=1e-4)
    assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]
  assert ours["results"]["zj_mc"]["acc,none"] == ref["results"]["zj_mc"]["acc,none"]
  # perplexity task (rolling windows, one document longer than max_length 256)
  for m in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
    assert ours["results"]["zj_ppl"][m] == pytest.approx(ref["results"]["zj_ppl"][m], rel=1e-4)
  # generation: greedy text identical, cut at "\n"
  gen_ours = [s["resps"][0][0] for s in ours["samples"]["zj_gen"]]
  gen_ref = [s["resps"][0][0] for s in ref["samples"]["zj_gen"]]
  assert gen_ours == gen_ref and all("\n" not in g for g in gen_ours)


def test_lm_eval_command_line(llama, lm_eval_setup, tmp_path, capsys):
  """`lm_eval --model zebra_jax --model_args checkpoint=...` through `scripts/evaluate.py lm-eval`
  (lm-eval's own command line, run in-process to skip a second JAX start-up)."""
  _, include = lm_eval_setup
  _, out, _ = llama
  load_script("evaluate").main(
    [
      "lm-eval",
      "--model",
      "zebra_jax",
      "--model_args",
      f"checkpoint={out}",
      "--batch_size",
      "4",
      "--tasks",
      "zj_mc,zj_ppl",
      "--include_path",
      include,
      "--output_path",
      str(tmp_path / "res"),
    ]
  )
  printed = capsys.readouterr().out
  assert "zj_mc" in printed and "zj_ppl" in printed and "word_perplexity" in printed
  saved = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "res") for f in fs if f.endswith(".json")]
  assert saved and "zj_mc" in json.load(open(saved[0]))["results"]


def test_evaluate_script_kv_and_perplexity(llama, tmp_path, capsys):
  _, out, _ = llama
  p = tmp_path / "doc.txt"
  p.write_text(TEXT)
  script = load_script("evaluate")
  assert script.main(["kv", "--preset", "zebra_1b_8mla8m2"]) == 0
  assert "7.81% of the GQA teacher" in capsys.readouterr().out
  assert (
    script.main(
      [
        "perplexity",
        "--checkpoint",
        out,
        "--files",
        str(p),
        "--max-length",
        "64",
        "--json",
        str(tmp_path / "ppl.json"),
      ]
    )
    == 0
  )
  assert json.loads((tmp_path / "ppl.json").read_text())["tokens"] == len(TEXT)
  assert script.main(["kv", "--checkpoint", out]) == 0  # config read without the weights
  assert "100.00% of the GQA teacher" in capsys.readouterr().out
