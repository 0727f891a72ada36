"""The choice rule (eval/compare.py, `scripts/evaluate.py compare`): decisions on validation splits
only, pooled numbers against a token-weighted pool computed here with numpy, held-out rows apart."""

import json
import os

import numpy as np
import pytest
from _runs import ROOT, load_script

from zebra_jax.eval.compare import compare, markdown, model_domains


def row(ppl, teacher, tokens, top1=0.7, kl=0.3):
  return {"perplexity": ppl, "teacher_perplexity": teacher, "top1": top1, "kl": kl, "tokens": tokens}


A = {
  "in-domain:docs": row(12.0, 10.0, 3000, 0.70, 0.30),
  "in-domain:poems": row(33.0, 30.0, 1000, 0.60, 0.50),
  "in-domain:only_a": row(99.0, 10.0, 500),  # not in B: never counted
  "held-out:wiki": row(20.0, 10.0, 2000, 0.55),
}
B = {
  "in-domain:docs": row(11.5, 10.0, 3000, 0.72, 0.28),
  "in-domain:poems": row(34.0, 30.0, 1000, 0.61, 0.49),
  "held-out:wiki": row(30.0, 10.0, 2000, 0.50),  # far worse held out: must not matter
}


def pool_np(d, keys):
  t = np.array([d[k]["tokens"] for k in keys], float)
  lr = np.array([np.log(d[k]["perplexity"] / d[k]["teacher_perplexity"]) for k in keys])
  return float(np.exp((t * lr).sum() / t.sum())), float((t * [d[k]["top1"] for k in keys]).sum() / t.sum())


def test_perplexity_criterion_pools_the_shared_validation_splits_and_ignores_held_out():
  res = compare(A, B)
  keys = ["in-domain:docs", "in-domain:poems"]
  for side, d in (("a", A), ("b", B)):
    ratio, top1 = pool_np(d, keys)
    assert res["validation"][side]["ratio"] == pytest.approx(ratio, rel=1e-12)
    assert res["validation"][side]["top1"] == pytest.approx(top1, rel=1e-12)
    assert res["validation"][side]["splits"] == 2
  # B: 1.15^0.75 * (34/30)^0.25 = 1.1462 < A: 1.2^0.75 * 1.1^0.25 = 1.1742 by more than the noise
  assert res["choose"] == "b" and res["validation"]["b_better_on"] == 1
  assert res["held_out"]["b"]["ratio"] == pytest.approx(3.0) and res["held_out"]["a"][
    "ratio"
  ] == pytest.approx(2.0)
  # a gain inside min_gain keeps A
  assert compare(A, B, min_gain=0.05)["choose"] == "a"
  text = markdown(res, "old", "new")
  assert text.index("chosen on validation data: **new**") < text.index(
    "Held-out sources (read after the choice"
  )


def test_chat_criterion_needs_less_repetition_and_no_worse_validation():
  less, more = (
    {"repetition": 0.05, "loops": 0.02, "stopped": 0.9},
    {"repetition": 0.2, "loops": 0.1, "stopped": 0.7},
  )
  assert compare(A, B, criterion="chat", chat_a=more, chat_b=less)["choose"] == "b"
  assert compare(A, B, criterion="chat", chat_a=less, chat_b=more)["choose"] == "a"
  # less repetition but a worse validation ratio (B and A swapped: x1.174 vs x1.146) keeps A
  assert compare(B, A, criterion="chat", chat_a=more, chat_b=less)["choose"] == "a"
  with pytest.raises(ValueError, match="needs both models' chat-validation"):
    compare(A, B, criterion="chat", chat_a=less)


def test_refusals():
  with pytest.raises(ValueError, match="share no validation split"):
    compare({"held-out:wiki": A["held-out:wiki"]}, B)
  with pytest.raises(ValueError, match="criterion='loops'"):
    compare(A, B, criterion="loops")
  broken = {**B, "in-domain:docs": {"perplexity": 11.5, "tokens": 3000}}
  with pytest.raises(
    ValueError, match="suite row 'in-domain:docs' has no numeric teacher_perplexity, top1, kl"
  ):
    compare(A, broken)
  with pytest.raises(ValueError, match=r"no model 'x' .* \(it has: s\)"):
    model_domains({"models": {"teacher": {}, "s": {"domains": A}}}, "x")


def test_cli_reproduces_the_recorded_run_10_to_run_11_choice(capsys):
  """Run 11 (mixers at 2x) was kept over run 10 on all 24 validation splits, x1.169 -> x1.144
  pooled (docs/status.md); the held-out rows (x1.61 -> x1.57) come after the decision."""
  results = os.path.join(ROOT, "docs", "results")
  evaluate = load_script("evaluate")
  evaluate.main(
    [
      "compare",
      os.path.join(results, "smollm2_135m_h100_run10_suite.json") + ":mla9_smart",
      os.path.join(results, "smollm2_135m_h100_run11_suite.json") + ":mixer_lr2",
    ]
  )
  out = capsys.readouterr().out
  assert "chosen on validation data: **mixer_lr2**" in out
  assert "x1.1442 vs x1.1687" in out and "B better on 24 of 24 splits" in out
  assert "| **pooled** | x1.6126 | x1.5664 |" in out


def test_cli_refusals(tmp_path, capsys):
  evaluate = load_script("evaluate")
  good = tmp_path / "s.json"
  good.write_text(json.dumps({"models": {"teacher": {}, "s": {"domains": A}}}))
  for argv, msg in (
    (["compare", str(good), f"{good}:s"], "expected FILE.json:LABEL"),
    (["compare", f"{tmp_path}/none.json:s", f"{good}:s"], "No such file"),
    (["compare", f"{good}:s", f"{good}:t"], "no model 't'"),
    (["compare", f"{good}:s", f"{good}:s", "--criterion", "chat"], "needs both models' chat-validation"),
  ):
    with pytest.raises(SystemExit) as e:
      evaluate.main(argv)
    assert e.value.code != 0
    assert msg in capsys.readouterr().err
