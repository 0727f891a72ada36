"""The `pairs` stage: DPO pairs made by the run (distill/pairs.py), the teacher's answer chosen over
the student's own.

The answers are checked against a greedy loop (tests/_oracles.py) over each model's full forward (pairs
are generated with the cached decode loop), the prompts against the train split's documents and the
chat template, DPO's first loss against log 2 (policy = reference), and resume against part mtimes.
"""

import json
import math
import os

import pytest
from _oracles import greedy_by_full_forward
from _runs import load_config_file, metrics_rows

from zebra_jax.data import ByteTokenizer
from zebra_jax.distill import pairs as pairs_lib
from zebra_jax.distill.config import RunConfigError, validate
from zebra_jax.distill.pipeline import run_pipeline


def _tiny_config():
  c = load_config_file("tiny")
  c.ild.update(steps=2)
  c.select.method = "explicit"
  c.model.mla_layers = (0, 2)
  # instruction prompts only: a passage task (~1,200 bytes) is longer than the tiny model's 512 positions
  c.pairs.update(num_pairs=6, batch_size=4, max_new_tokens=8, temperature=0.0, passage_fraction=0.0)
  c.data.dpo_path = "pairs"
  c.dpo.update(steps=2, batch_size=2)
  c.train.log_every = 1
  c.stages = ("teacher", "ild_mla", "ild_mamba", "select", "assemble", "pairs", "dpo")
  return c


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("pairs_run")
  cfg = _tiny_config()
  run_pipeline(cfg, str(wd), progress=False)
  return cfg, wd


def test_pairs_are_the_teachers_and_the_students_greedy_answers_to_chat_prompts(pairs_run):
  from zebra_jax.convert.orbax_io import load_model

  cfg, wd = pairs_run
  rows = [json.loads(line) for line in (wd / pairs_lib.ARTIFACT).read_text().splitlines()]
  assert 1 <= len(rows) <= cfg.pairs.num_pairs
  teacher = load_model(str(wd / "teacher" / "model"), dtype="float32")
  student = load_model(str(wd / "assemble" / "model"), dtype="float32")  # no kd stage in this run
  tok = ByteTokenizer()
  for row in rows:
    assert set(row) == {"prompt", "chosen", "rejected"}
    prompt = list(tok.encode(row["prompt"]))
    # one user turn in the (byte) chat template: "<|user|>\n{message}\n"
    assert row["prompt"].startswith("<|user|>\n") and row["prompt"].endswith("\n")
    assert row["prompt"].count("<|") == 1
    assert row["chosen"] == tok.decode(greedy_by_full_forward(teacher, prompt, cfg.pairs.max_new_tokens))
    assert row["rejected"] == tok.decode(greedy_by_full_forward(student, prompt, cfg.pairs.max_new_tokens))
    assert row["chosen"] != row["rejected"]


def test_dpo_trains_on_the_pairs_and_starts_at_log_2(pairs_run):
  """Policy and reference start equal, so the first DPO loss is -log sigmoid(0) = log 2."""
  _, wd = pairs_run
  assert (wd / "dpo" / "model").exists()
  rows = metrics_rows(str(wd), "dpo")
  assert rows and abs(rows[0]["loss"] - math.log(2)) < 1e-3


def test_pairs_resume_regenerates_only_missing_parts(pairs_run):
  cfg, wd = pairs_run
  art = wd / pairs_lib.ARTIFACT
  first = art.read_text()
  parts = sorted((wd / "pairs" / "parts").glob("part-*.jsonl"))
  assert len(parts) == 2  # 6 prompts in batches of 4
  os.remove(art)
  os.remove(parts[1])
  kept = os.path.getmtime(parts[0])
  cfg.stages = ("teacher", "ild_mla", "ild_mamba", "select", "assemble", "pairs")
  run_pipeline(cfg, str(wd), progress=False)
  assert art.read_text() == first
  assert os.path.getmtime(parts[0]) == kept


@pytest.mark.parametrize(
  "change, needle",
  [
    (dict(stages=("teacher", "kd", "dpo")), "names the pairs stage's artifact, but stages has no 'pairs'"),
    (dict(stages=("teacher", "kd", "dpo", "pairs")), "'pairs' must come before 'dpo'"),
    (dict(stages=("teacher", "pairs", "kd", "dpo")), "'pairs' must come after 'kd'"),
    (dict(pairs=dict(num_pairs=0)), "pairs.num_pairs"),
    (dict(pairs=dict(temperature=-1.0)), "pairs.temperature"),
    (dict(pairs=dict(top_p=0.0)), "pairs.top_p"),
  ],
)
def test_impossible_pairs_settings_are_refused(change, needle):
  cfg = load_config_file("tiny")
  cfg.data.dpo_path = "pairs"
  cfg.stages = ("teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd", "pairs", "dpo")
  for k, v in change.items():
    if isinstance(v, dict):
      cfg[k].update(v)
    else:
      cfg[k] = v
  with pytest.raises(RunConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    validate(cfg)
