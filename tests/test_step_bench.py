"""`scripts/bench.py train` (zebra_jax/bench/train_step.py) on CPU with small configs: the step
runs for KD (full-logits and fused losses, whose first-step losses agree) and ILD, and the MFU and
table arithmetic is checked by hand."""

import jax
import pytest

from zebra_jax import accounting
from zebra_jax.config import HybridConfig, LlamaConfig
from zebra_jax.bench import train_step as step_bench

SMALL = dict(
  vocab_size=384,
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  impl="reference",
  eos_token_id=None,
)
HYBRID = dict(
  mla_layers=(0,),
  q_lora_rank=32,
  kv_lora_rank=16,
  qk_rope_head_dim=8,
  qk_nope_head_dim=8,
  v_head_dim=16,
  d_state=16,
  headdim=16,
  chunk_size=16,
)


def test_kd_step_bench_rows_and_equal_first_losses():
  student = HybridConfig(**SMALL, **HYBRID)
  teacher = LlamaConfig(**{**SMALL, "num_hidden_layers": 3})
  rows = step_bench.run(
    "kd",
    student,
    teacher,
    seq_len=32,
    batch=2,
    impls=("logits", "fused"),
    ce_weight=0.5,
    chunk=24,
    iters=2,
    breakdown=False,
    remat=(False, "dots"),
  )
  # one row per (remat, impl), remat outermost; remat changes what is recomputed, not the loss
  assert [(r["remat"], r["impl"]) for r in rows] == [
    ("none", "logits"),
    ("none", "fused"),
    ("dots", "logits"),
    ("dots", "fused"),
  ]
  assert rows[2]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-6)
  rows = rows[:2]
  # same weights, same tokens: the first step's loss agrees (bf16 logits vs float32 accumulation)
  assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=2e-2)
  for r in rows:
    assert r["step_ms"] > 0 and r["tokens_per_s"] == pytest.approx(2 * 32 / (r["step_ms"] / 1e3))
    assert r["mfu"] is None  # no peak FLOP/s known for a CPU
    assert r["memory_gib"] is None or r["memory_gib"] > 0
  md = step_bench.markdown(rows, "python scripts/bench.py train")
  assert md.count("\n| kd | custom | custom | 2 x 32 |") == 2


def test_ild_step_bench_runs_the_all_mla_student():
  student = HybridConfig(**SMALL, **HYBRID)
  rows = step_bench.run("ild_mla", student, LlamaConfig(**SMALL), seq_len=32, batch=2, iters=1)
  assert len(rows) == 1 and rows[0]["loss"] > 0
  for k in ("teacher_fwd_ms", "student_fwd_bwd_ms", "optimizer_ms"):  # the breakdown ran
    assert rows[0][k] > 0


def test_dpo_step_bench_starts_at_log_2_and_counts_both_sequences():
  """The reference is a bf16 copy of the policy, so the first DPO loss is -log sigmoid(0) = log 2
  (up to bf16 log-probs); tokens/s and the MFU's FLOPs count the chosen and the rejected rows."""
  import math

  student = HybridConfig(**SMALL, **HYBRID)
  rows = step_bench.run(
    "dpo", student, None, seq_len=32, batch=2, impls=("logits", "fused"), chunk=24, iters=1
  )
  assert [r["impl"] for r in rows] == ["logits", "fused"]
  for r in rows:
    assert r["loss"] == pytest.approx(math.log(2), rel=1e-2)
    assert r["tokens_per_s"] == pytest.approx(2 * 2 * 32 / (r["step_ms"] / 1e3))
    assert r["teacher"] == "a frozen copy" and r["teacher_fwd_ms"] > 0
  b = step_bench.synthetic_batch("dpo", 2, 32, 384)
  assert (b["chosen"][:, :8] == b["rejected"][:, :8]).all()  # a shared prompt
  assert (b["chosen"][:, 8:] != b["rejected"][:, 8:]).any()
  assert b["chosen_mask"][:, :8].sum() == 0 and b["chosen_mask"][:, 8:].all()


def test_mfu_uses_accounting_flops_and_the_device_peak():
  class Dev:
    device_kind = "NVIDIA H200"

  assert step_bench.peak_flops(Dev()) == 989e12
  Dev.device_kind = "TPU v5 lite"
  assert step_bench.peak_flops(Dev()) == 197e12
  assert step_bench.peak_flops(jax.devices()[0]) is None
  s = HybridConfig(**SMALL, **HYBRID)
  # the step's FLOPs: 3x the student's forward (fwd + bwd) + the teacher's forward, per token
  fwd = sum(accounting.flops_breakdown(s, 32).values())
  assert accounting.flops_per_token(s, 32, training=True) == pytest.approx(3 * fwd)
  t = LlamaConfig(**SMALL)
  t_fwd = sum(accounting.flops_breakdown(t, 32).values())
  assert accounting.distill_flops_per_token(s, t, 32) == pytest.approx(3 * fwd + t_fwd)
  # ILD runs no LM head: 2 * vocab * hidden per token out of both forwards (x3 for the student)
  head = 2 * 384 * 64
  assert accounting.distill_flops_per_token(s, t, 32, heads=False) == pytest.approx(
    3 * (fwd - head) + (t_fwd - head)
  )


def test_unknown_stage_and_vocab_mismatch_are_refused():
  student = HybridConfig(**SMALL, **HYBRID)
  with pytest.raises(SystemExit, match="--stage"):
    step_bench.build("sft", student, None)
  with pytest.raises(SystemExit, match="vocab"):
    step_bench.build("kd", student, LlamaConfig(**{**SMALL, "vocab_size": 500}))


def test_kd_layer_breakdown_counts_each_block_type():
  """`--layers`: one row per student block type (with its mixer and MLP inside it), the teacher's
  block, the embedding and the head; the counts are the models' layer counts and the totals are
  count x each; the markdown's sum leaves out the 'of which' rows."""
  student = HybridConfig(**{**SMALL, "num_hidden_layers": 3}, **HYBRID)  # 1 MLA + 2 Mamba2
  teacher = LlamaConfig(**{**SMALL, "num_hidden_layers": 4})
  rows = step_bench.layer_breakdown("kd", student, teacher, seq_len=32, batch=2, iters=1)
  by = {r["part"]: r for r in rows}
  assert by["student mamba2 block (fwd+bwd)"]["count"] == 2
  assert by["student mla block (fwd+bwd)"]["count"] == 1
  assert by["  of which the mamba2 mixer"]["count"] == 2
  # the mixer's pieces, inside the mixer row, not summed again
  for piece in ("in_proj", "the conv + SiLU", "the SSD scan", "the gated norm", "out_proj"):
    assert by[f"    of which {piece}"]["count"] == 2
  candidate = [p for p in by if p.startswith("    candidate in place of in_proj")]
  assert len(candidate) == 1 and by[candidate[0]]["count"] == 2
  assert by["teacher attention block (fwd)"]["count"] == 4
  assert by["student embedding (fwd+bwd)"]["count"] == 1
  for r in rows:
    assert r["ms_each"] > 0 and r["ms_total"] == pytest.approx(r["count"] * r["ms_each"])
  md = step_bench.layers_markdown(rows, 12.5, "cmd")
  top = sum(r["ms_total"] for r in rows if not r["part"].startswith("  "))
  assert f"**{top:.1f}**" in md and "| 12.5 |" in md
  with pytest.raises(SystemExit, match="kd step"):
    step_bench.layer_breakdown("ild_mla", student, teacher, seq_len=32, batch=2)


def test_an_unknown_remat_setting_is_refused_before_anything_runs():
  from zebra_jax.cli import ScriptError

  with pytest.raises(ScriptError, match=r"--remat: unknown setting\(s\) \['everything'\]"):
    step_bench.main(["--student", "zebra_smollm2_135m_9mla21m2", "--remat", "full,everything"])
