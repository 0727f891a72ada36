"""Budgets + ablations sharing the budget-free stages (distill/experiment.py) and the report
(eval/report.py), on the tiny config.

Checked independently of the code under test: which stage ran where (files and links), that each
student's blocks come from the right source (ILD students vs the initialisers, compared weight by
weight), KV fractions against the cache formula written here, and the teacher's self-agreement.
"""

import os

import numpy as np
import pytest
from _runs import load_config_file
from flax import nnx

from zebra_jax.convert.orbax_io import load_model
from zebra_jax.data import ByteTokenizer
from zebra_jax.data.prompts import REPORT_PROMPTS, heldout_sequences, prompt_ids
from zebra_jax.distill.experiment import Variant, plan, run_experiment, shared_settings_diff, variant_config
from zebra_jax.distill.select import uniform_placement
from zebra_jax.eval import report
from zebra_jax.init import init_hybrid


def _tiny():
  c = load_config_file("tiny")
  c.ild.steps = 3
  c.kd.steps = 3
  c.train.log_every = 1
  return c


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  root = tmp_path_factory.mktemp("report")
  cfg = _tiny()
  # One budget, its uniform and no-ILD ablations; a second budget (2 MLA layers) runs in
  # test_shared_from_links_a_finished_root_and_refuses_other_settings, on these shared stages.
  variants = plan([3])
  summaries = run_experiment(cfg, str(root), variants, progress=False)
  return cfg, root, variants, summaries


def _flat(model, layer):
  return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model.layers[layer]))}


def test_plan_names_and_order():
  names = [v.name for v in plan([8, 4])]
  assert names == ["mla8_smart", "mla4_smart", "mla8_uniform", "mla8_smart_no_ild"]
  with pytest.raises(ValueError, match="repeat"):
    plan([8, 8])
  with pytest.raises(ValueError, match="SMART variant"):
    variant_config(_tiny(), Variant(3, "smart", ild=False))


def test_kd_ablations_set_kd_freeze_and_refuse_a_copy_of_the_main_variant():
  """kd_all trains everything, kd_freeze freezes embeddings and MLPs (MambaInLlama); the one that
  equals the config's own kd.freeze would train the main variant twice and is refused."""
  cfg = _tiny()
  cfg.kd.freeze = ()
  names = [v.name for v in plan([3], ablations=["kd_freeze"])]
  assert names == ["mla3_smart", "mla3_smart_kd_freeze"]
  frozen = variant_config(cfg, plan([3], ablations=["kd_freeze"])[1])
  assert tuple(frozen.kd.freeze) == ("embed", "mlp")
  assert tuple(cfg.kd.freeze) == ()  # the base config is not modified
  with pytest.raises(ValueError, match="kd_all.*already has kd.freeze"):
    variant_config(cfg, plan([3], ablations=["kd_all"])[1])
  cfg.kd.freeze = ("embed", "mlp")
  assert tuple(variant_config(cfg, plan([3], ablations=["kd_all"])[1]).kd.freeze) == ()
  with pytest.raises(ValueError, match="kd_freeze.*already has kd.freeze"):
    variant_config(cfg, plan([3], ablations=["kd_freeze"])[1])


def test_kd_sweeps_change_one_kd_setting_of_the_main_variant():
  """`--ablation_list=kd:ce_weight=0.1,kd:lr_scale.mixer=2`: one student per setting next to the
  main one (same budget and placement rule), the field set in its config only; a field that does
  not exist, or a value equal to the config's, is refused by name."""
  cfg = _tiny()
  variants = plan([3], ablations=["kd:ce_weight=0.1", "kd:lr_scale.mixer=2"])
  assert [v.name for v in variants] == [
    "mla3_smart",
    "mla3_smart_kd_ce_weight0p1",
    "mla3_smart_kd_lr_scale_mixer2",
  ]
  assert variants[1].kind == "sweep: kd.ce_weight=0.1"
  ce = variant_config(cfg, variants[1])
  assert ce.kd.ce_weight == 0.1 and cfg.kd.ce_weight == 0.0  # the base config is not modified
  assert ce.kd.lr_scale.mixer == 1.0 and tuple(ce.stages[-3:]) == ("select", "assemble", "kd")
  mixer = variant_config(cfg, variants[2])
  assert mixer.kd.lr_scale.mixer == 2 and mixer.kd.lr_scale.mlp == 1.0
  with pytest.raises(ValueError, match="no field kd.ce_wieght"):
    variant_config(cfg, plan([3], ablations=["kd:ce_wieght=0.1"])[1])
  with pytest.raises(ValueError, match="kd.ce_weight is already 0.0"):
    variant_config(cfg, plan([3], ablations=["kd:ce_weight=0.0"])[1])
  with pytest.raises(ValueError, match="expected kd:<field>=<value>"):
    plan([3], ablations=["kd:ce_weight"])
  with pytest.raises(ValueError, match="repeat a variant"):
    plan([3], ablations=["kd:ce_weight=0.1", "kd:ce_weight=0.1"])


def test_a_sweep_value_of_another_type_and_a_budget_that_is_no_number_are_one_line():
  """A hostile pass (2026-12-07): `--ablation_list=kd:lr=abc` and `--budgets=abc` (or 2.5) ended
  in a TypeError / ValueError traceback from ml_collections and int()."""
  with pytest.raises(ValueError) as e:
    variant_config(_tiny(), plan([3], ablations=["kd:lr=abc"])[1])
  assert str(e.value) == "sweep mla3_smart_kd_lrabc: kd.lr takes a float, got 'abc'"
  with pytest.raises(ValueError, match=r"kd.lr_scale.mixer takes a float, got 'x'"):
    variant_config(_tiny(), plan([3], ablations=["kd:lr_scale.mixer=x"])[1])
  for budgets in (["abc"], ["2.5"]):
    with pytest.raises(ValueError) as e:
      plan(budgets)
    assert str(e.value) == f"budgets {budgets}: each must be an MLA layer count (a whole number)"


def test_shared_stages_run_once_and_are_linked(experiment):
  cfg, root, variants, summaries = experiment
  assert (root / "shared" / "ild_mla" / "model").exists()
  for v in variants:
    wd = root / v.name
    assert (wd / "kd" / "model").exists(), v.name
    assert os.path.islink(wd / "teacher")
    if v.ild:
      assert os.path.islink(wd / "ild_mla") and os.path.islink(wd / "ild_mamba")
      assert os.path.realpath(wd / "ild_mla") == str(root / "shared" / "ild_mla")
    else:
      assert not os.path.exists(wd / "ild_mla")
    ran = [s for s, _ in summaries[v.name]["stages_run"]]
    assert ran == ["select", "assemble", "kd"], (v.name, ran)


def test_shared_from_links_a_finished_root_and_refuses_other_settings(experiment, tmp_path):
  """A KD sweep: a second root borrows the first one's shared stages (nothing there reruns or
  changes) and runs only select / assemble / kd with its own KD settings; a config that differs
  in a setting the shared stages read (ild.lr) is refused before anything is created."""
  cfg, root, _, _ = experiment
  shared = root / "shared"
  before = {p: os.path.getmtime(p) for p in shared.rglob("*") if p.is_file()}
  sweep = _tiny()
  sweep.kd.lr = cfg.kd.lr * 3
  out = run_experiment(
    sweep, str(tmp_path / "lr3x"), plan([2], ablations=False), progress=False, shared_from=str(root)
  )
  assert os.path.islink(tmp_path / "lr3x" / "shared")
  assert os.path.realpath(tmp_path / "lr3x" / "shared") == str(shared)
  assert [s for s, _ in out["mla2_smart"]["stages_run"]] == ["select", "assemble", "kd"]
  assert len(out["mla2_smart"]["mla_layers"]) == 2  # the other budget, on the same shared stages
  assert (tmp_path / "lr3x" / "mla2_smart" / "kd" / "model").exists()
  assert {p: os.path.getmtime(p) for p in shared.rglob("*") if p.is_file()} == before

  other = _tiny()
  other.ild.lr = cfg.ild.lr * 2
  with pytest.raises(ValueError, match=r"ild\.lr"):
    run_experiment(
      other, str(tmp_path / "bad"), plan([2], ablations=False), progress=False, shared_from=str(root)
    )
  assert not os.path.lexists(tmp_path / "bad" / "shared")
  with pytest.raises(FileNotFoundError, match="not finished"):
    run_experiment(
      sweep,
      str(tmp_path / "c"),
      plan([2], ablations=False),
      progress=False,
      shared_from=str(tmp_path / "nothing_here"),
    )


def test_shared_settings_diff_ignores_only_what_the_shared_stages_never_read():
  a = {
    "name": "x",
    "kd": {"lr": 1.0},
    "model": {"n_mla": 9, "kv_lora_rank": 16},
    "samples": {"temperature": 1.0},
    "select": {"method": "smart"},
  }
  b = {
    "name": "y",
    "kd": {"lr": 2.0},
    "model": {"n_mla": 4, "kv_lora_rank": 16},
    "samples": {"temperature": 1.0},
    "select": {"method": "uniform"},
  }
  assert shared_settings_diff(a, b) == []
  b["samples"]["temperature"] = 0.7
  b["model"]["kv_lora_rank"] = 32
  assert shared_settings_diff(a, b) == ["model.kv_lora_rank: 16 != 32", "samples.temperature: 1.0 != 0.7"]


def test_placements(experiment):
  cfg, root, variants, summaries = experiment
  L = cfg.teacher.overrides["num_hidden_layers"]
  smart = summaries["mla3_smart"]["mla_layers"]
  assert summaries["mla3_uniform"]["mla_layers"] == list(uniform_placement(L, 3))
  assert summaries["mla3_smart_no_ild"]["mla_layers"] == smart


def test_blocks_come_from_ild_students_or_the_initialisers(experiment):
  cfg, root, variants, _ = experiment
  teacher = load_model(str(root / "shared" / "teacher" / "model"), dtype="float32")
  ild_mla = load_model(str(root / "shared" / "ild_mla" / "model"), dtype="float32")
  ild_mamba = load_model(str(root / "shared" / "ild_mamba" / "model"), dtype="float32")
  with_ild = load_model(str(root / "mla3_smart" / "assemble" / "model"), dtype="float32")
  no_ild = load_model(str(root / "mla3_smart_no_ild" / "assemble" / "model"), dtype="float32")
  # The initialisers on the all-MLA / all-Mamba2 shapes of the ILD students (random parts such as
  # A_log are drawn per model shape, so the reference uses those shapes).
  init = {
    "mla": init_hybrid(teacher, ild_mla.config, seed=cfg.seed),
    "mamba2": init_hybrid(teacher, ild_mamba.config, seed=cfg.seed),
  }
  for i, kind in enumerate(with_ild.config.layer_types()):
    src = _flat(ild_mla if kind == "mla" else ild_mamba, i)
    for p, v in _flat(with_ild, i).items():
      np.testing.assert_array_equal(v, src[p], err_msg=f"layer {i} {p}")
    ref, got, trained = _flat(init[kind], i), _flat(no_ild, i), src
    for p, v in got.items():
      np.testing.assert_allclose(v, ref[p], rtol=0, atol=1e-6, err_msg=f"no-ILD layer {i} {p}")
    assert any(not np.array_equal(got[p], trained[p]) for p in got), f"layer {i}: ILD weights used"


def test_evaluation_rows(experiment):
  cfg, root, variants, _ = experiment
  tok = ByteTokenizer()
  heldout = heldout_sequences(cfg, tok, limit_tokens=300)
  assert heldout and sum(map(len, heldout)) >= 300
  teacher = load_model(str(root / "shared" / "teacher" / "model"), dtype="float32")
  student = load_model(str(root / "mla3_smart" / "kd" / "model"), dtype="float32")
  kw = dict(
    seq_len=cfg.data.seq_len,
    decode_batch=2,
    contexts=[16],
    decode_steps=2,
    sample_tokens=3,
    prompts=REPORT_PROMPTS[:2],
  )
  t = report.evaluate_model(teacher, teacher, tok, heldout, **kw)
  draw = dict(temperature=0.7, top_p=0.9, seed=0)
  s = report.evaluate_model(student, teacher, tok, heldout, sampling=draw, **kw)
  assert "sampled" not in t and s["sampled"]["settings"] == draw
  ids = [prompt_ids(tok, p) for p in REPORT_PROMPTS[:2]]
  from zebra_jax.infer.generation import generate

  assert [x["completion"] for x in s["sampled"]["samples"]] == [
    tok.decode(g) for g in generate(student, ids, 3, **draw)
  ]
  assert t["top1"] == 1.0 and abs(t["kl"]) < 1e-6 and t["kv_fraction"] == 1.0
  assert t["perplexity"] == pytest.approx(s["teacher_perplexity"], rel=1e-6)
  # cache formula: an MLA layer caches kv_lora_rank + qk_rope_head_dim values per token, an
  # attention layer 2 * kv_heads * head_dim, a Mamba2 layer nothing that grows with the context.
  c = student.config
  n_mla = sum(t_ == "mla" for t_ in c.layer_types())
  o = cfg.teacher.overrides
  want = (
    n_mla
    * (c.kv_lora_rank + c.qk_rope_head_dim)
    / (o["num_hidden_layers"] * 2 * o["num_key_value_heads"] * o["head_dim"])
  )
  assert s["kv_fraction"] == pytest.approx(want)
  assert s["decode"][0]["tokens_per_s"] > 0 and len(s["samples"]) == 2
  assert 0.0 <= s["top1"] <= 1.0 and s["kl"] > 0


def test_markdown_shows_greedy_and_drawn_samples_for_every_model():
  def row(ppl, tag, drawn=True):
    r = {
      "perplexity": ppl,
      "teacher_perplexity": 10.0,
      "top1": 0.5,
      "kl": 0.1,
      "kv_fraction": 0.04,
      "heldout_tokens": 100,
      "decode": [],
      "eval_seconds": 1.0,
      "samples": [{"prompt": "P1", "completion": f"greedy {tag}"}],
    }
    if drawn:
      r["sampled"] = {
        "settings": {"temperature": 0.7, "top_p": 0.9, "seed": 0},
        "samples": [{"prompt": "P1", "completion": f"drawn {tag}\nline 2"}],
      }
    return r

  results = {
    "environment": {"device": "cpu", "date": "d", "jax": "j", "flax": "f"},
    "meta": {"command": "c", "decode_batch": 2, "contexts": [16]},
    "models": {"teacher": row(10.0, "T"), "mla1": row(12.0, "S"), "ablation": row(13.0, "X", drawn=False)},
    "variants": {"mla1": {"kind": "main"}, "ablation": {"kind": "ablation"}},
    "timings": {"train": 1.0},
  }
  md = report.markdown(results)
  greedy, drawn = md.split("Samples drawn with temperature 0.7, top_p 0.9, seed 0")
  assert "- *teacher*: greedy T" in greedy and "- *mla1*: greedy S" in greedy
  assert "- *teacher*: drawn T / line 2" in drawn and "- *mla1*: drawn S / line 2" in drawn
  assert "drawn X" not in md and "greedy X" in greedy


def test_markdown_without_decode_contexts_is_a_quality_only_table():
  """`--contexts ''` (quality only, e.g. a learning-rate sweep): no decode or speed-up columns,
  and every row has as many cells as the header (the first version indexed contexts[-1])."""

  def row(ppl):
    return {
      "perplexity": ppl,
      "teacher_perplexity": 10.0,
      "top1": 0.5,
      "kl": 0.1,
      "kv_fraction": 0.04,
      "heldout_tokens": 100,
      "decode": [],
      "eval_seconds": 1.0,
      "samples": [],
    }

  results = {
    "environment": {"device": "cpu", "date": "d", "jax": "j", "flax": "f"},
    "meta": {"command": "c", "decode_batch": 2, "contexts": []},
    "models": {"teacher": row(10.0), "mla1": row(12.5)},
    "variants": {"mla1": {"kind": "main"}},
    "timings": {"train": 1.0},
  }
  md = report.markdown(results)
  table = [
    line
    for line in md.splitlines()
    if line.startswith("| ")
    and "held-out ppl" in line
    or line.startswith("| teacher |")
    or line.startswith("| mla1 |")
  ]
  assert len(table) == 3 and "decode" not in table[0] and "speed-up" not in table[0]
  assert {line.count("|") for line in table} == {9}
  assert "| 12.50 | +25.0% |" in table[2]


def test_write_doc_keeps_prose(tmp_path):
  doc = tmp_path / "results.md"
  doc.write_text(f"# R\n\nintro\n\n{report.BEGIN}\nold\n{report.END}\n\noutro\n")
  report.write_doc(str(doc), "new table")
  text = doc.read_text()
  assert "intro" in text and "outro" in text and "new table" in text and "old" not in text
