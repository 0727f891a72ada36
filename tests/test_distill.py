"""The distillation pipeline end to end on CPU (configs/tiny.py), resume after kills, the NaN stop,
invalid configs failing before anything compiles, the same steps on 8 simulated devices and in
2 processes, the whole pipeline in 2 processes, the disjoint ILD / KD data split, summaries merged
over reruns and batch fields of any rank.

Runs of scripts/distill.py are subprocesses sharing one persistent compilation cache, so only the
first run of each step compiles. The same file is the worker script of the multi-device and
multi-process checks (`python tests/test_distill.py devices|proc ...`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from _runs import load_script, metrics_rows, signal_at_step
from zebra_jax.train.trainer import TIMING_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.join(ROOT, "scripts", "distill.py")
TRAINED = ("ild_mla", "ild_mamba", "kd", "dpo")
ALL_STAGES = ["teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd", "dpo"]
# configs/tiny.py, shortened; log every step so the first row is the initial model's loss. Two data
# shards: the batches of a 2-process run, so the 1-process runs here are also its reference.
FAST = dict(ild_steps=16, kd_steps=16, dpo_steps=4)
FAST_FLAGS = [
  "--config.ild.steps=16",
  "--config.kd.steps=16",
  "--config.dpo.steps=4",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=4",
  "--config.data.num_shards=2",
]
TIMEOUT = 600


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _env(cache: str | None = None, **extra) -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  if cache:
    env.update(
      JAX_COMPILATION_CACHE_DIR=cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
  env.update(extra)
  return env


def _cmd(workdir, *flags):
  return [
    sys.executable,
    DISTILL,
    "--config",
    os.path.join(ROOT, "configs", "tiny.py"),
    "--workdir",
    str(workdir),
    "--no_progress",
    *FAST_FLAGS,
    *flags,
  ]


def distill(workdir, cache, *flags, check=True) -> subprocess.CompletedProcess:
  r = subprocess.run(
    _cmd(workdir, *flags), env=_env(cache), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
  )
  if check and r.returncode != 0:
    raise AssertionError(f"distill.py exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
  return r


def rows(workdir, stage) -> list[dict]:
  return metrics_rows(workdir, stage)


def curve(workdir, stage):
  """The metric rows without the timing-dependent throughput."""
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows(workdir, stage)]


def kill_when(workdir, cache, stage, step, sig, *flags):
  """Starts distill.py, sends `sig` once `stage` has logged `step`; returns (returncode, output)."""
  return signal_at_step(_cmd(workdir, *flags), _env(cache), workdir, stage, step, sig, TIMEOUT)


def load_params(path) -> dict:
  from flax import nnx

  from zebra_jax.convert.orbax_io import load_model

  m = load_model(path)
  return {
    ".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))
  }


def assert_same_params(a_path, b_path):
  a, b = load_params(a_path), load_params(b_path)
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(a[k], b[k]), f"{k} differs: max |diff| {np.abs(a[k] - b[k]).max()}"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# -- 1. the tiny config end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def devices_worker(tmp_path_factory, jax_cache):
  """The simulated-devices worker (see `simulated_devices`), started in the background as soon as
  the tiny run starts, so the two single-process runs share CI's two cores: (process, log, outs)."""
  tmp = tmp_path_factory.mktemp("devices")
  outs = {name: tmp / f"{name}.json" for name in ("mesh", "ranks")}
  log = open(tmp / "worker.log", "w+")
  p = subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), "devices", str(tmp), str(outs["mesh"]), str(outs["ranks"])],
    env=_env(jax_cache, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    stdout=log,
    stderr=subprocess.STDOUT,
    text=True,
    cwd=ROOT,
  )
  yield p, log, outs
  if p.poll() is None:
    p.kill()
  p.wait()
  log.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, jax_cache, devices_worker):
  """One uninterrupted run of every stage: the subject of the end-to-end test and the reference of
  the resume test. (Runs while the simulated-devices worker runs.)"""
  workdir = tmp_path_factory.mktemp("tiny_ref")
  t0 = time.time()
  r = distill(workdir, jax_cache)
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  return workdir, summary, r, time.time() - t0


def test_tiny_config_runs_every_stage_and_losses_fall(tiny_run):
  workdir, summary, _, _ = tiny_run
  for stage in ALL_STAGES:
    name = "placement.json" if stage == "select" else "model"
    assert os.path.exists(workdir / stage / name), f"{stage} artifact missing"
  for stage in TRAINED:
    png = workdir / stage / "loss_curve.png"
    assert png.exists(), f"{stage}: no loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = rows(workdir, stage)
    steps = {"ild_mla": 16, "ild_mamba": 16, "kd": 16, "dpo": 4}[stage]
    assert [x["step"] for x in r] == list(range(1, steps + 1)), stage
    assert all(math.isfinite(x["loss"]) for x in r)

  # ILD: the summed block + mixer distances fall clearly.
  for stage in ("ild_mla", "ild_mamba"):
    r = rows(workdir, stage)
    assert r[-1]["loss"] < 0.8 * r[0]["loss"], (stage, r[0]["loss"], r[-1]["loss"])
  # KD: the random teacher is close to uniform, so KL starts small (~1e-2) and CE stays near
  # log(vocab) and is no signal; KL itself must fall. Rows are single steps, so compare the mean
  # of the first three with the mean of the last three.
  kd = rows(workdir, "kd")
  first, last = np.mean([x["kl"] for x in kd[:3]]), np.mean([x["kl"] for x in kd[-3:]])
  assert last < 0.8 * first, (first, last)
  # DPO starts from policy == reference: the sigmoid loss is exactly log 2 at the first step.
  assert abs(rows(workdir, "dpo")[0]["loss"] - math.log(2)) < 1e-5

  with open(workdir / "select" / "placement.json") as f:
    placement = json.load(f)
  assert placement["method"] == "smart" and len(placement["scores"]) == 4
  assert placement["mla_layers"][0] == 0 and placement["mla_layers"][-1] == 2  # terminal layers


def test_summary_reports_cache_params_tokens_and_time(tiny_run):
  workdir, summary, _, seconds = tiny_run
  assert [s for s, _ in summary["stages_run"]] == ALL_STAGES
  assert 0 < summary["wall_time_s"] <= seconds + 1
  with open(workdir / "dpo" / "model" / "config.json") as f:
    final = json.load(f)
  # KV% = N_MLA (r_kv + d_r) / (L 2 n_kv d_h), reference 9.2, from the final model's own config.
  n_mla = len(final["mla_layers"])
  want = (
    n_mla
    * (final["kv_lora_rank"] + final["qk_rope_head_dim"])
    / (final["num_hidden_layers"] * 2 * final["num_key_value_heads"] * final["head_dim"])
  )
  assert summary["kv_cache_fraction"] == pytest.approx(want, rel=1e-12)
  assert summary["mla_layers"] == final["mla_layers"]
  params = load_params(workdir / "dpo" / "model")
  assert summary["params"] == sum(v.size for v in params.values())
  seq = 64
  assert summary["training"]["kd"]["tokens_seen"] == 16 * 8 * seq
  assert summary["training"]["ild_mla"]["tokens_seen"] == 16 * 8 * seq
  assert summary["training"]["dpo"]["tokens_seen"] == 4 * 4 * 2 * 64
  assert summary["tokens_seen"] == sum(t["tokens_seen"] for t in summary["training"].values())
  # Finished stages keep their model, not their optimizer-state checkpoints; the disk each stage's
  # directory holds is reported.
  for stage in ALL_STAGES:
    assert not (workdir / stage / "checkpoints").exists(), stage
    on_disk = sum(p.stat().st_size for p in (workdir / stage).rglob("*") if p.is_file())
    assert summary["disk_bytes"][stage] == on_disk > 0, stage
  assert summary["disk_bytes_total"] >= sum(summary["disk_bytes"].values())
  # each ILD / KD stage records how many passes it made over the distinct tokens of its part
  for stage, part in (("ild_mla", "ild"), ("ild_mamba", "ild"), ("kd", "kd")):
    with open(workdir / stage / "data_budget.json") as f:
      budget = json.load(f)
    assert budget["tokens_read"] == summary["training"][stage]["tokens_seen"]
    assert budget["passes"] == pytest.approx(budget["tokens_read"] / budget["distinct_tokens"], abs=1e-3)
    assert 0 < budget["distinct_tokens"] <= budget["tokens"]


MODEL_STAGES = ("teacher", "ild_mla", "ild_mamba", "assemble", "kd", "dpo")


def test_every_model_carries_its_tokenizer_generation_config_and_provenance(tiny_run, tmp_path, capsys):
  """Each stage's model holds HF tokenizer files that plain transformers loads (the byte tokenizer
  of configs/tiny.py: ids are the UTF-8 bytes), generation_config.json and provenance.json; the
  tools then need no --tokenizer: generate.py, evaluate.py perplexity, export.py (whose directory
  holds the tokenizer too)."""
  from tokenizers import Tokenizer
  from transformers import AutoTokenizer

  workdir, summary, _, _ = tiny_run
  text = "Zebra: héllo wörld\n  🙂"
  commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
  for stage in MODEL_STAGES:
    d = workdir / stage / "model"
    tok = AutoTokenizer.from_pretrained(d)
    assert tok(text)["input_ids"] == list(text.encode("utf-8")), stage
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|user|>\nhi\n"
    assert json.loads((d / "generation_config.json").read_text())["eos_token_id"] == 257
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["teacher"]["path"] == "random:smollm2-135m" and prov["config"] == "tiny"
    assert prov["stage"] == stage and prov["data"] == {"source": "default", "mix": ""}
    assert prov["tokenizer"] == "byte"
    if commit.returncode == 0:
      assert prov["git_commit"].startswith(commit.stdout.strip())
  assert prov["kv_cache_fraction"] == summary["kv_cache_fraction"]  # dpo: the final model
  assert (
    json.loads((workdir / "teacher" / "model" / "provenance.json").read_text())["kv_cache_fraction"] == 1.0
  )

  final = str(workdir / "dpo" / "model")
  capsys.readouterr()
  assert (
    load_script("generate").main(["--checkpoint", final, "--prompt", "The", "--max-new-tokens", "3"]) == 0
  )
  (tmp_path / "doc.txt").write_text(text * 3)
  assert (
    load_script("evaluate").main(
      ["perplexity", "--checkpoint", final, "--files", str(tmp_path / "doc.txt"), "--max-length", "32"]
    )
    == 0
  )
  assert f"over {len(text.encode()) * 3} tokens" in capsys.readouterr().out
  out = tmp_path / "export"
  assert load_script("export").main(["--checkpoint", final, "--out", str(out)]) == 0
  assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == list(text.encode())
  assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 257


def test_each_training_stage_says_where_its_time_went(tiny_run):
  """The log line and summary.json split a training stage's wall time into its phases; they add
  up to the stage's time (setup is the remainder, never negative)."""
  _, summary, r, _ = tiny_run
  ran = dict(summary["stages_run"])
  phases = summary["stage_phases_s"]
  assert set(phases) == set(TRAINED), phases
  for stage in TRAINED:
    p = phases[stage]
    want = (
      ["setup"]
      + (["counting data"] if stage != "dpo" else [])
      + ["checkpointer", "compile", "steps", "saving"]
    )
    assert list(p) == want, (stage, p)
    assert all(v >= 0 for v in p.values()) and p["compile"] > 0 and p["steps"] > 0
    assert abs(sum(p.values()) - ran[stage]) <= 0.1 * len(p), (stage, p, ran[stage])
    line = [x for x in r.stdout.splitlines() if x.startswith(f"[{stage}] done in")][0]
    assert f"(setup {p['setup']:.1f}, " in line and f"compile {p['compile']:.1f}" in line, line


def test_rerun_skips_every_stage_and_keeps_the_stage_timings(tiny_run, jax_cache):
  workdir, first, _, _ = tiny_run
  before = {s: os.path.getmtime(workdir / s) for s in ALL_STAGES}
  t0 = time.time()
  r = distill(workdir, jax_cache)
  rerun_seconds = time.time() - t0
  for stage in ALL_STAGES:
    assert f"[{stage}] artifact exists, skipping" in r.stdout
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  assert summary["stages_run"] == [] and summary["stages_skipped"] == ALL_STAGES
  assert {s: os.path.getmtime(workdir / s) for s in ALL_STAGES} == before
  # Every stage keeps the seconds it took in the first run; wall time adds this run's.
  ran = {s: t for s, t in first["stages_run"]}
  assert summary["stage_time_s"] == first["stage_time_s"] == ran
  assert summary["stage_phases_s"] == first["stage_phases_s"] != {}
  assert sum(ran.values()) > 1.0
  extra = summary["wall_time_s"] - first["wall_time_s"]
  assert 0 <= extra <= rerun_seconds + 0.1, (first["wall_time_s"], summary["wall_time_s"])
  assert first["runs"] == 1 and summary["runs"] == 2
  # The rest of the summary describes the same final model.
  for k in ("final_model", "mla_layers", "kv_cache_fraction", "params", "training", "tokens_seen"):
    assert summary[k] == first[k], k


def test_finished_stages_drop_their_checkpoints_unless_kept(tmp_path):
  """train.keep_checkpoints=False (the default) deletes <stage>/checkpoints (stepwise: also each
  phase's) once the stage's model is saved; True keeps them."""
  from zebra_jax.distill import pipeline
  from zebra_jax.distill.context import RunContext

  for keep in (False, True):
    cfg = _tiny()
    cfg.train.keep_checkpoints = keep
    cfg.stepwise.schedule = ((0, 1), (0,))
    ctx = RunContext(cfg, str(tmp_path / str(keep)))
    made = [tmp_path / str(keep) / d / "checkpoints" / "4" for d in ("kd", "stepwise_0", "stepwise_1")]
    for d in made:
      d.mkdir(parents=True)
      (d / "state").write_bytes(b"0" * 10)
    pipeline.drop_checkpoints(ctx, "kd")
    pipeline.drop_checkpoints(ctx, "stepwise")
    assert [d.exists() for d in made] == [keep] * 3
    assert (tmp_path / str(keep) / "kd").is_dir()


def test_summary_merge_keeps_skipped_stages_and_replaces_rerun_ones(tmp_path):
  """A stage that runs again (its artifact was deleted) gets its new time, the others keep theirs,
  a summary from before stage_time_s existed is read from its stages_run, and wall time adds up."""
  from zebra_jax.distill import pipeline
  from zebra_jax.distill.context import RunContext

  cfg = _tiny()
  ctx = RunContext(cfg, str(tmp_path))
  old = {
    "stages_run": [["teacher", 1.0], ["ild_mla", 20.0], ["ild_mamba", 21.0]],
    "stages_skipped": [],
    "wall_time_s": 42.0,
  }
  s1 = pipeline._summary(ctx, cfg, [("select", 3.0), ("assemble", 0.5)], ["teacher", "ild_mla"], 4.0, old)
  assert s1["stage_time_s"] == {
    "teacher": 1.0,
    "ild_mla": 20.0,
    "ild_mamba": 21.0,
    "select": 3.0,
    "assemble": 0.5,
  }
  assert list(s1["stage_time_s"]) == ["teacher", "ild_mla", "ild_mamba", "select", "assemble"]
  assert s1["wall_time_s"] == 46.0 and s1["runs"] == 2
  s2 = pipeline._summary(ctx, cfg, [("ild_mla", 7.5)], [], 8.0, json.loads(json.dumps(s1)))
  assert s2["stage_time_s"]["ild_mla"] == 7.5 and s2["stage_time_s"]["select"] == 3.0
  assert s2["wall_time_s"] == 54.0 and s2["runs"] == 3
  fresh = pipeline._summary(ctx, cfg, [("teacher", 2.0)], [], 2.5, {})
  assert fresh["stage_time_s"] == {"teacher": 2.0} and fresh["wall_time_s"] == 2.5
  assert fresh["runs"] == 1


# -- 2. resume after kills, across stage boundaries ------------------------------------------------
def test_killed_runs_resume_to_the_uninterrupted_result(tiny_run, jax_cache, tmp_path):
  ref, _, _, _ = tiny_run
  work = tmp_path / "killed"
  # A hard kill mid-ILD (no chance to save): resumes from the step-4 checkpoint and replays.
  rc, out = kill_when(work, jax_cache, "ild_mla", 6, signal.SIGKILL)
  assert rc == -signal.SIGKILL, out[-3000:]
  assert not (work / "ild_mla" / "model").exists()
  # SIGTERM in a later stage (kd, after select and assemble): saves that step and exits 143.
  rc, out = kill_when(work, jax_cache, "kd", 5, signal.SIGTERM)
  assert rc == 143, out[-3000:]
  assert "SIGTERM: saved step" in out
  assert not (work / "kd" / "model").exists()
  killed_at = max(int(d) for d in os.listdir(work / "kd" / "checkpoints") if d.isdigit())
  assert 5 <= killed_at < 16 and killed_at == rows(work, "kd")[-1]["step"]
  assert (work / "assemble" / "model").exists()
  # Finish.
  r = distill(work, jax_cache)
  assert "[kd] resumed from step" in r.stdout and "[ild_mla] artifact exists, skipping" in r.stdout

  for stage in TRAINED:
    assert curve(work, stage) == curve(ref, stage), f"{stage} loss curve differs"
  for stage in ("teacher", "ild_mla", "ild_mamba", "assemble", "kd", "dpo"):
    assert_same_params(work / stage / "model", ref / stage / "model")
  with open(work / "select" / "placement.json") as a, open(ref / "select" / "placement.json") as b:
    assert json.load(a) == json.load(b)


# -- 3. NaN stops the run, the last good checkpoint survives ---------------------------------------
def test_exploding_lr_stops_with_exit_3_and_keeps_the_good_checkpoint(tmp_path, jax_cache):
  """Warmup over 8 steps: update 1 uses lr 0 (checkpoint 1 = the initial weights), update 2 uses
  1.25e29 and blows the weights up."""
  work = tmp_path / "nan"
  r = distill(
    work,
    jax_cache,
    "--config.stages=('teacher', 'ild_mla', 'ild_mamba')",
    "--config.ild.lr=1e30",
    "--config.train.warmup_frac=0.5",
    "--config.train.checkpoint_every=1",
    check=False,
  )
  assert r.returncode == 3, r.stderr[-3000:]
  assert "non-finite metrics at step 2" in r.stderr, r.stderr[-3000:]
  assert "last good checkpoint is step 1" in r.stderr
  assert not (work / "ild_mla" / "model").exists() and not (work / "ild_mamba").exists()
  ckdir = work / "ild_mla" / "checkpoints"
  assert sorted(int(d) for d in os.listdir(ckdir) if d.isdigit()) == [1]
  # Checkpoint 1 holds finite, sane weights (the teacher-initialised student, as lr(0) = 0).
  import orbax.checkpoint as ocp

  with ocp.CheckpointManager(str(ckdir), item_names=("state", "data")) as mgr:
    state = mgr.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(state["trainable"])]
  assert leaves and all(np.all(np.isfinite(x)) and np.abs(x).max() < 1e3 for x in leaves)
  assert all(math.isfinite(x["loss"]) for x in rows(work, "ild_mla"))


# -- 6. invalid configs fail before anything runs --------------------------------------------------
def _tiny(**changes):
  sys.path.insert(0, ROOT)
  from configs.tiny import get_config

  c = get_config()
  for key, value in changes.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize(
  "changes,match",
  [
    (
      {
        "kd_teacher.path": "random:smollm2-135m",
        "kd_teacher.overrides": dict(
          vocab_size=256,
          hidden_size=64,
          intermediate_size=128,
          num_hidden_layers=2,
          num_attention_heads=4,
          num_key_value_heads=2,
        ),
      },
      r"kd_teacher: vocab_size=256 differs from the student's 320",
    ),
    (
      {"select.method": "explicit", "model.mla_layers": (0, 7)},
      r"model.mla_layers.*\[7\] out of range \[0, 4\)",
    ),
    ({"model.n_mla": 4}, r"model.n_mla"),
    ({"stages": ["teacher", "ild_mla", "distill"]}, r"stages: unknown stage\(s\) \['distill'\]"),
    ({"data.dpo_path": None}, r"data.dpo_path"),
    ({"data.dpo_path": "/nonexistent/prefs.jsonl"}, r"data.dpo_path=.*does not exist"),
    (
      {"stages": ["teacher", "stepwise", "kd"], "stepwise.schedule": ((1, 5),)},
      r"stepwise.schedule\[0\].*attn_layers.*\[5\] out of range",
    ),
    ({"model.kv_lora_rank": 12}, r"kv_lora_rank=12 is not a multiple"),
    ({"kd.batch_size": 6, "kd.grad_accum": 4}, r"kd.batch_size=6.*kd.grad_accum=4"),
    ({"kd.lr": float("inf")}, r"kd.lr must be a positive finite number, got inf"),
    ({"kd.lr_scale.embed": -0.5}, r"kd.lr_scale.embed must be a finite number >= 0, got -0.5"),
    # a hostile pass (2026-12-07): each of these was accepted, or failed later with a traceback
    (
      {"kd.freeze": ("mixer",), "kd.lr_scale.mixer": 2.0},
      r"kd.lr_scale.mixer=2.0 scales a group that kd.freeze freezes; drop one of the two",
    ),
    (
      {"kd.freeze": ("embed", "mlp", "norm"), "kd.lr_scale.mixer": 0.0},
      r"kd.freeze and kd.lr_scale \(0\) leave no parameter group training",
    ),
    ({"model.n_mla": 0}, r"model.n_mla \(the MLA layer budget\) must be a positive layer count .*got 0"),
    ({"data.mix": "shakespeare=inf"}, r"data.mix\['shakespeare'\] = inf: a weight must be a finite number"),
    ({"data.mix": ","}, r"data.mix ',' names no source"),
    ({"data.mix": "shakespeare=1,source:shakespeare=2"}, r"data.mix names 'shakespeare' twice"),
    # 781 scenes, 766 train: a 1e-4 fraction puts none in the ILD part (a KD part too small
    # would only come after hours of ILD: both are checked before anything runs).
    ({"data.ild_fraction": 1e-4}, r"data.ild_fraction=0.0001 leaves the ILD part .* empty"),
    ({"data.ild_fraction": 0.99999}, r"data.ild_fraction=0.99999 leaves the KD part .* empty"),
    ({"data.ild_fraction": 1.5}, r"data.ild_fraction=1.5 must be in \[0, 1\]"),
    (
      {"data.num_shards": 3},
      r"ild.batch_size=8 is not divisible by the 3 data shards "
      r"\(data.num_shards\)",
    ),
  ],
)
def test_invalid_config_fails_before_any_stage_runs(tmp_path, monkeypatch, changes, match):
  from zebra_jax.distill import pipeline, stages
  from zebra_jax.distill.config import RunConfigError

  def must_not_run(ctx):
    raise AssertionError("a stage started although the config is invalid")

  for name in list(stages.RUNNERS):
    monkeypatch.setitem(stages.RUNNERS, name, must_not_run)
  with pytest.raises(RunConfigError, match=match):
    pipeline.run_pipeline(_tiny(**changes), str(tmp_path / "w"), progress=False)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "content,match",
  [
    (
      b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n',
      r"prefs.jsonl:2: expected JSON with 'prompt', 'chosen', 'rejected' \(KeyError",
    ),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n', r"prefs.jsonl:2: expected JSON"),
    (b'{"prompt": "a", "chosen": 3, "rejected": "c"}\n', r"prefs.jsonl:1: 'prompt' must be text"),
    (b"\x80\x81\x00\xff" * 64, r"prefs.jsonl: not UTF-8 text"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n', r"dpo batch_size=4 exceeds the 1 "),
  ],
)
def test_a_malformed_dpo_file_or_unreadable_kd_teacher_fails_before_any_stage(
  tmp_path, monkeypatch, content, match
):
  from zebra_jax.distill import pipeline, stages
  from zebra_jax.distill.config import RunConfigError

  for name in list(stages.RUNNERS):
    monkeypatch.setitem(stages.RUNNERS, name, lambda ctx: pytest.fail("a stage started"))
  prefs = tmp_path / "prefs.jsonl"
  prefs.write_bytes(content)
  with pytest.raises(RunConfigError, match=r"data.dpo_path: .*" + match):
    pipeline.run_pipeline(
      _tiny(**{"data.dpo_path": str(prefs), "dpo.batch_size": 4}), str(tmp_path / "w"), progress=False
    )
  # a KD teacher that cannot be read (and no preset to check against) fails first too
  with pytest.raises(RunConfigError, match=r"kd_teacher.path: .*missing.gguf"):
    pipeline.run_pipeline(
      _tiny(**{"kd_teacher.path": str(tmp_path / "missing.gguf")}), str(tmp_path / "w"), progress=False
    )
  assert not (tmp_path / "w").exists()


def test_a_kd_teacher_with_the_same_vocabulary_passes_preflight(tmp_path, monkeypatch):
  from zebra_jax.distill import pipeline, stages

  ran = []
  for name in list(stages.RUNNERS):
    monkeypatch.setitem(stages.RUNNERS, name, lambda ctx, name=name: ran.append(name))
  monkeypatch.setattr(pipeline, "_summary", lambda *a: {})
  c = _tiny(
    **{
      "kd_teacher.path": "random:smollm2-135m",
      "kd_teacher.overrides": dict(
        vocab_size=320,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
      ),
    }
  )
  pipeline.run_pipeline(c, str(tmp_path / "w"), progress=False)
  assert ran == ALL_STAGES


def test_preference_batches_are_split_by_process():
  """Each of P processes yields its slice of the global DPO batch (not a copy of the whole)."""
  from zebra_jax.data import ByteTokenizer
  from zebra_jax.distill.preferences import preference_iterator

  kw = dict(batch_size=4, max_len=64, max_prompt_len=32, seed=3)
  path = os.path.join(ROOT, "configs", "data", "tiny_preferences.jsonl")
  full = preference_iterator(path, ByteTokenizer(), **kw)
  parts = [preference_iterator(path, ByteTokenizer(), process_index=p, process_count=2, **kw) for p in (0, 1)]
  for _ in range(7):  # crosses epoch boundaries
    f, a, b = next(full), next(parts[0]), next(parts[1])
    for k in f:
      assert a[k].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), f[k])
  assert parts[0].get_state() == parts[1].get_state() == full.get_state()


# -- 4. 8 simulated devices = 1 device -------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated_devices(devices_worker):
  """One subprocess with 8 simulated CPU devices runs both multi-device workers (`mesh`: KD on a
  2x2x2 mesh vs 1 device; `ranks`: batch fields of rank 1 and 2 on a 2x2x1 mesh of 4 of those
  devices vs 1 device): {"mesh": ..., "ranks": ...}, what each wrote. (Started by
  `devices_worker`, alongside the tiny run.)"""
  p, log, outs = devices_worker
  try:
    p.wait(timeout=TIMEOUT)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  log.seek(0)
  text = log.read()
  assert p.returncode == 0, text[-8000:]
  return {name: json.loads(out.read_text()) for name, out in outs.items()}


def test_eight_device_mesh_gives_the_losses_of_one_device(simulated_devices):
  res = simulated_devices["mesh"]
  assert res["devices"] == 8
  assert {"tensor", "fsdp"} <= set(res["sharded_axes"]), res["sharded_axes"]
  one, eight = res["losses"]["1"], res["losses"]["8"]
  assert len(one) == len(eight) == 3
  for a, b in zip(one, eight):
    for k in ("loss", "kl", "ce", "grad_norm"):
      assert b[k] == pytest.approx(a[k], rel=1e-5), (k, a, b)
  # Adam's step g / (|g| + eps) amplifies rounding where |g| ~ eps: a handful of weights differ by a
  # few 1e-6 (lr = 1e-3); a wrong gradient would move many weights by ~lr.
  np.testing.assert_allclose(res["params"]["8"], res["params"]["1"], rtol=0, atol=5e-5)
  assert "kd.batch_size=6" in res["preflight_error"] and "mesh.data" in res["preflight_error"]


# -- 5. 2 processes (jax.distributed, CPU collectives): crash and resume ----------------------------
def test_two_processes_resume_to_the_uninterrupted_losses(tmp_path, jax_cache):
  """2 jax.distributed processes train KD uninterrupted, then again with a crash while fetching
  step 5's batch and a resume from checkpoint 4 (each process restores its own data position):
  the resumed run logs the uninterrupted run's losses and ends with its weights. That 2 processes
  give the losses and weights of 1 process is checked stage by stage (KD included) by
  test_whole_pipeline_in_two_processes_matches_one_process, so no 1-process run is repeated here."""
  port = free_port()
  outs = [tmp_path / f"proc{pid}.json" for pid in range(2)]
  logs = [tmp_path / f"proc{pid}.log" for pid in range(2)]
  cmds = [
    [
      sys.executable,
      os.path.abspath(__file__),
      "proc",
      str(tmp_path / "two"),
      str(out),
      str(pid),
      "2",
      str(port),
    ]
    for pid, out in enumerate(outs)
  ]
  codes = _run_processes(cmds, logs, _env(jax_cache))
  for code, log in zip(codes, logs):
    assert code == 0, _log_text(log)[-5000:]
  two = [json.loads(o.read_text()) for o in outs]
  assert two[0]["process_count"] == 2
  assert two[0]["resumed_from"] == two[1]["resumed_from"] == 4
  ref, resumed = two[0]["uninterrupted_rows"], two[0]["rows"]
  assert len(ref) == len(resumed) == 6
  for a, b in zip(ref, resumed):
    assert a["step"] == b["step"]
    for k in ("loss", "kl", "grad_norm"):
      assert b[k] == pytest.approx(a[k], rel=1e-5), (k, a, b)
  for p in two:  # see 8 devices for the tolerance
    np.testing.assert_allclose(p["params"], p["uninterrupted_params"], rtol=0, atol=5e-5)
  np.testing.assert_array_equal(two[0]["params"], two[1]["params"])


def _run_processes(cmds, logs, env, timeout=TIMEOUT):
  """Starts one process per command (output to its log file) and waits for all; a failed one
  leaves its peers waiting at a barrier for minutes, so they are stopped at once. Returns the
  return codes."""
  procs = []
  for cmd, log in zip(cmds, logs):
    with open(log, "w") as f:  # a file, not a pipe nobody reads while we wait
      procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT))
  deadline = time.time() + timeout
  while time.time() < deadline and any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):
      break
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
  return [p.wait() for p in procs]


def _log_text(path) -> str:
  return "\n".join(l for l in open(path).read().splitlines() if "Gloo" not in l)


# -- 5b. the whole pipeline in 2 processes = 1 process ---------------------------------------------
def test_whole_pipeline_in_two_processes_matches_one_process(tiny_run, tmp_path, jax_cache):
  """scripts/distill.py --config configs/tiny.py as 2 jax.distributed processes (CPU collectives,
  one device each) against the 1-process tiny_run with the same flags. Both read the same batches
  (data.num_shards=2: the global batch depends on the shard count, not the process count), so they
  differ only in float summation order: with 2 processes each micro-batch is split over 2 devices,
  every device sums its rows and the gradients are all-reduced, where 1 device sums all rows at
  once. Losses must agree to 1e-5 relative (measured: ~2e-7); weights as in the 8-device test."""
  one = tiny_run[0]
  two = tmp_path / "two"
  port = free_port()
  # One checkpoint per stage (fewer collective saves; checkpoints do not change the numbers).
  cmds = [
    _cmd(
      two,
      "--config.train.checkpoint_every=16",
      "--coordinator",
      f"127.0.0.1:{port}",
      "--num_processes",
      "2",
      "--process_id",
      str(pid),
    )
    for pid in range(2)
  ]
  logs = [tmp_path / f"distill{pid}.log" for pid in range(2)]
  codes = _run_processes(cmds, logs, _env(jax_cache))
  for code, log in zip(codes, logs):
    assert code == 0, _log_text(log)[-6000:]

  # Every artifact, written once, nothing half-written left behind.
  for stage in ALL_STAGES:
    name = "placement.json" if stage == "select" else "model"
    assert (two / stage / name).exists(), f"{stage} artifact missing"
  for stage in ("teacher", "ild_mla", "ild_mamba", "assemble", "kd", "dpo"):
    assert (two / stage / "model" / "config.json").exists()
    assert (two / stage / "model" / "params").is_dir()
  for stage in TRAINED:
    assert (two / stage / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stage
    steps = {"ild_mla": 16, "ild_mamba": 16, "kd": 16, "dpo": 4}[stage]
    assert [r["step"] for r in rows(two, stage)] == list(range(1, steps + 1)), stage
    assert not (two / stage / "checkpoints").exists(), stage  # dropped once the model is saved
  leftovers = [
    os.path.join(d, n)
    for d, dirs, files in os.walk(two)
    for n in dirs + files
    if ".tmp" in n or "orbax-checkpoint-tmp" in n
  ]
  assert not leftovers, leftovers
  with open(two / "config.json") as f:
    assert json.load(f)["data"]["num_shards"] == 2
  with open(two / "summary.json") as f:
    summary = json.load(f)
  assert summary["processes"] == 2 and [s for s, _ in summary["stages_run"]] == ALL_STAGES
  assert '"wall_time_s"' in _log_text(logs[0]) and '"wall_time_s"' not in _log_text(logs[1])

  # The same run as 1 process: every loss, the placement, the final weights.
  for stage in TRAINED:
    for a, b in zip(rows(one, stage), rows(two, stage)):
      assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (stage, a, b)
  kd_one, kd_two = rows(one, "kd")[-1], rows(two, "kd")[-1]
  assert kd_two["kl"] == pytest.approx(kd_one["kl"], rel=1e-5), (kd_one, kd_two)
  with open(one / "select" / "placement.json") as a, open(two / "select" / "placement.json") as b:
    pa, pb = json.load(a), json.load(b)
  assert pa["mla_layers"] == pb["mla_layers"]
  np.testing.assert_allclose(pb["scores"], pa["scores"], rtol=1e-3, atol=1e-8)
  for stage in ("ild_mla", "kd", "dpo"):
    a, b = load_params(one / stage / "model"), load_params(two / stage / "model")
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=0, atol=5e-5, err_msg=f"{stage} {k}")
  assert_same_params(one / "teacher" / "model", two / "teacher" / "model")


# -- 7. disjoint ILD / KD data ----------------------------------------------------------------------
_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
  """splitmix64's finaliser on a python int (an independent copy of the documented hash)."""
  x = (x + 0x9E3779B97F4A7C15) & _M64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
  return x ^ (x >> 31)


def _unit(i: int, salt: int) -> float:
  return (_splitmix64(i ^ _splitmix64(salt)) >> 11) / float(1 << 53)


def _expected_parts(n: int, heldout: float, ild: float, split_seed: int = 0):
  """(held-out, ILD, KD) document ids as docs/data.md defines them."""
  held = {i for i in range(n) if _unit(i, split_seed) < heldout}
  train = [i for i in range(n) if i not in held]
  ild_ids = {i for i in train if _unit(i, split_seed ^ 0x494C44) < ild}
  return held, ild_ids, set(train) - ild_ids


def _ids_seen(it, max_batches=None) -> set:
  seen, count = set(), 0
  for batch in it:
    seen |= set(batch["tokens"][batch["segment_ids"] > 0].tolist())
    count += 1
    if max_batches is not None and count >= max_batches:
      break
  return seen


def test_ild_and_kd_parts_are_disjoint_deterministic_and_keep_out_held_out_documents():
  from zebra_jax.data import ListSource
  from zebra_jax.data.pipeline import make_iterator

  n = 2000
  src = ListSource([np.full(3, i, np.int32) for i in range(n)])  # every token is its document id
  held, ild, kd = _expected_parts(n, 0.05, 0.2)
  assert abs(len(ild) / (len(ild) + len(kd)) - 0.2) < 0.03  # the fraction, met on average
  # One epoch, one row per batch: every document of the part is seen (the last row padded).
  kw = dict(
    seq_len=4,
    global_batch=1,
    split="train",
    heldout_fraction=0.05,
    ild_fraction=0.2,
    num_epochs=1,
    process_index=0,
    process_count=1,
  )
  seen = {part: _ids_seen(make_iterator(src, None, part=part, seed=5, **kw)) for part in ("ild", "kd")}
  assert seen["ild"] == ild and seen["kd"] == kd
  assert not seen["ild"] & seen["kd"] and not (seen["ild"] | seen["kd"]) & held
  # The same parts on every process layout and shuffle seed (a hash of the index, nothing else).
  for part, want in (("ild", ild), ("kd", kd)):
    per_process = [
      _ids_seen(
        make_iterator(
          src, None, part=part, seed=9, **{**kw, "global_batch": 2, "process_index": p, "process_count": 2}
        )
      )
      for p in range(2)
    ]
    assert not per_process[0] & per_process[1]
    # Two rows per batch: a process's last odd row may be dropped, nothing else.
    assert per_process[0] | per_process[1] <= want
    assert len(want - (per_process[0] | per_process[1])) <= 4
  # 0 and 1 mean no split: both parts read every train document.
  for fraction in (0.0, 1.0):
    for part in ("ild", "kd"):
      got = _ids_seen(make_iterator(src, None, part=part, seed=5, **{**kw, "ild_fraction": fraction}))
      assert got == ild | kd, (fraction, part)
  # A split with an empty side is an error naming the config field, whichever part is asked for.
  for fraction, side in ((1e-6, "ILD"), (1 - 1e-6, "KD")):
    for part in ("ild", "kd"):
      with pytest.raises(ValueError, match=f"data.ild_fraction=.* leaves the {side} part"):
        make_iterator(src, None, part=part, seed=5, **{**kw, "ild_fraction": fraction})
  with pytest.raises(ValueError, match="split='heldout' has no parts"):
    make_iterator(src, None, part="ild", **{**kw, "split": "heldout"})


def test_stages_read_their_part_ild_kd_stepwise_and_calibration(tmp_path):
  """RunContext.batches: ild -> the ILD part, kd and stepwise phases -> the KD part; SMART
  calibration -> train documents of the KD part, never held-out ones; data.ild_fraction=0 lets ILD
  read every train document."""
  import re

  from zebra_jax.distill.context import RunContext

  n = 400
  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps({"text": f"doc{i:04d} " * 3}) + "\n" for i in range(n)))
  held, ild, kd = _expected_parts(n, 0.05, 0.2)

  def seen(ctx, purpose, batches, **kw):
    it = ctx.batches(purpose, 8, **kw)
    ids = set()
    for _ in range(batches):
      for row in next(it)["tokens"]:
        text = bytes(int(t) if t < 256 else 32 for t in row).decode()
        ids |= {int(m) for m in re.findall(r"doc(\d{4})", text)}
    return ids

  cfg = _tiny(**{"data.source": str(path), "data.heldout_fraction": 0.05, "data.ild_fraction": 0.2})
  ctx = RunContext(cfg, str(tmp_path / "w"))
  assert seen(ctx, "ild", 12) == ild  # ~3 epochs of the ILD part
  for purpose in ("kd", "stepwise_0"):
    got = seen(ctx, purpose, 12)
    assert got <= kd and len(got) > len(kd) // 2, purpose
  calib = set()
  for b in ctx.calibration_batches(6, 8):
    for row in b["tokens"]:
      text = bytes(int(t) if t < 256 else 32 for t in row).decode()
      calib |= {int(m) for m in re.findall(r"doc(\d{4})", text)}
  assert calib and calib <= kd and not calib & held
  cfg0 = _tiny(**{"data.source": str(path), "data.heldout_fraction": 0.05, "data.ild_fraction": 0.0})
  got = seen(RunContext(cfg0, str(tmp_path / "w0")), "ild", 12)
  assert got <= ild | kd and got & kd and got & ild


def test_a_sequence_longer_than_the_stage_data_is_refused(tmp_path):
  """data.seq_len above the distinct tokens of a stage's part would train on the same text wrapped
  around: refused with a line naming the field and the count; a normal length is logged."""
  from zebra_jax.distill.config import RunConfigError
  from zebra_jax.distill.context import RunContext
  from zebra_jax.train.trainer import TrainSpec

  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps({"text": f"doc{i:04d} "}) + "\n" for i in range(40)))
  cfg = _tiny(**{"data.source": str(path), "data.heldout_fraction": 0.05, "data.ild_fraction": 0.2})
  logged = []
  ctx = RunContext(cfg, str(tmp_path / "w"))
  ctx.log = logged.append
  with pytest.raises(
    RunConfigError,
    match=r"data.seq_len=4096 is longer than the \d+ distinct "
    r"tokens of the ild_mla stage's data \(ild part\)",
  ):
    ctx.data_budget("ild_mla", "ild", TrainSpec(steps=2, lr=1e-3, batch_size=2, seq_len=4096))
  got = ctx.data_budget("kd", "kd", TrainSpec(steps=50, lr=1e-3, batch_size=2, seq_len=16))
  assert got["passes"] > 4 and "warning: many repeats" in logged[-1]


# -- 8. batch fields of any rank ---------------------------------------------------------------------
def test_trainer_shards_each_batch_field_by_its_rank(simulated_devices):
  """A per-row `lengths` field (rank 1) next to the (rows, T) tokens, on 4 simulated devices with
  grad accumulation: same losses and weights as 1 device, and the first loss equals a float64
  numpy evaluation of the masked loss on the initial model."""
  res = simulated_devices["ranks"]
  assert res["lengths_spec"] == [None, ["data", "fsdp"]] and res["tokens_spec"] == [
    None,
    ["data", "fsdp"],
    None,
  ]
  one, four = res["losses"]["1"], res["losses"]["4"]
  assert len(one) == len(four) == 3
  for a, b in zip(one, four):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
  assert one[0]["loss"] == pytest.approx(res["reference_loss"], rel=1e-5)
  assert abs(res["unmasked_loss"] - res["reference_loss"]) > 1e-3  # the lengths matter
  np.testing.assert_allclose(res["params"]["4"], res["params"]["1"], rtol=0, atol=5e-5)
  assert "needs the same leading row axis" in res["scalar_error"]


# -- workers ---------------------------------------------------------------------------------------
def _tiny_models(mla_layers=(0,)):
  """A small random Llama teacher and a hybrid student initialised from it (MLA + Mamba2)."""
  from flax import nnx

  from zebra_jax.config import HybridConfig, LlamaConfig
  from zebra_jax.init import init_hybrid
  from zebra_jax.models.hybrid import CausalLM

  tc = LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
  )
  teacher = CausalLM(tc, rngs=nnx.Rngs(0))
  sc = HybridConfig.from_llama(tc, mla_layers=mla_layers, kv_lora_rank=16, q_lora_rank=16, chunk_size=8)
  return teacher, init_hybrid(teacher, sc, seed=0)


def _global_batch(pos, batch, length=17):
  return np.random.default_rng([7, pos]).integers(0, 64, (batch, length)).astype(np.int32)


class _ProcessBatches:
  """Global batch `pos` split by process (process p gets rows [p*B/P, (p+1)*B/P)); the state names
  the process so restoring another process's position fails loudly."""

  def __init__(self, batch, pid, nproc, crash_at=None):
    self.batch, self.pid, self.nproc, self.pos, self.crash_at = batch, pid, nproc, 0, crash_at

  def __next__(self):
    if self.crash_at is not None and self.pos + 1 == self.crash_at:
      raise RuntimeError("injected failure")
    g = _global_batch(self.pos, self.batch)
    self.pos += 1
    n = self.batch // self.nproc
    return {"tokens": g[self.pid * n : (self.pid + 1) * n]}

  def get_state(self):
    return {"pos": self.pos, "process": self.pid}

  def set_state(self, s):
    if s["process"] != self.pid:
      raise ValueError(f"process {self.pid} was given process {s['process']}'s data state")
    self.pos = s["pos"]


def _flat_params(model):
  from flax import nnx

  leaves = [
    np.asarray(v.get_value(), np.float64).ravel() for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  ]
  return np.concatenate(leaves).tolist()


def _worker_mesh(workdir, out):
  import jax

  from zebra_jax.distill import objectives
  from zebra_jax.distill.config import RunConfigError
  from zebra_jax.distill.pipeline import run_pipeline
  from zebra_jax.parallel import make_mesh
  from zebra_jax.train.metrics import read_metrics
  from zebra_jax.train.trainer import StageTrainer, TrainSpec

  class Batches:
    def __init__(self):
      self.pos = 0

    def __next__(self):
      self.pos += 1
      return {"tokens": _global_batch(self.pos, 8)}

    def get_state(self):
      return {"pos": self.pos}

    def set_state(self, s):
      self.pos = s["pos"]

  res = {"devices": jax.device_count(), "losses": {}, "params": {}}
  meshes = {"1": make_mesh(1, 1, 1, devices=jax.devices()[:1]), "8": make_mesh(2, 2, 2)}
  for name, mesh in meshes.items():
    teacher, student = _tiny_models()
    spec = TrainSpec(
      steps=3,
      lr=1e-3,
      batch_size=8,
      seq_len=16,
      grad_accum=2,
      warmup_frac=0.0,
      log_every=1,
      checkpoint_every=100,
      async_checkpoint=False,
      progress=False,
    )
    tr = StageTrainer(
      name=f"kd_{name}",
      workdir=workdir,
      model=student,
      loss_fn=objectives.kd_loss_fn(1.0, 0.5, 1.0),
      spec=spec,
      mesh=mesh,
      teachers={"teacher": teacher},
    )
    if name == "8":
      res["sharded_axes"] = sorted(
        {
          a
          for leaf in jax.tree.leaves(tr.trainable)
          for part in leaf.sharding.spec
          if part
          for a in ((part,) if isinstance(part, str) else part)
        }
      )
    tr.run(Batches())
    res["losses"][name] = read_metrics(os.path.join(workdir, f"kd_{name}"))
    res["params"][name] = _flat_params(student)
  # Preflight sees the 2 x 2 x 2 mesh: a micro-batch of 6 / 1 rows does not split over 4.
  sys.path.insert(0, ROOT)
  from configs.tiny import get_config

  c = get_config()
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.kd.batch_size = 6
  try:
    run_pipeline(c, os.path.join(workdir, "bad"), progress=False)
    res["preflight_error"] = ""
  except RunConfigError as e:
    res["preflight_error"] = str(e)
  with open(out, "w") as f:
    json.dump(res, f)


def _worker_process(workdir, out, pid, nproc, port):
  import jax

  if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
  from zebra_jax.distill import objectives
  from zebra_jax.parallel import make_mesh
  from zebra_jax.train.metrics import read_metrics
  from zebra_jax.train.trainer import StageTrainer, TrainSpec

  assert jax.process_count() == nproc and jax.local_device_count() == 1
  mesh = make_mesh(-1, 1, 1)  # data axis over every process's device
  spec = TrainSpec(
    steps=6,
    lr=1e-3,
    batch_size=4,
    seq_len=16,
    warmup_frac=0.0,
    log_every=1,
    checkpoint_every=2,
    keep_last=3,
    async_checkpoint=True,
    progress=False,
  )

  from flax import nnx

  teacher, student0 = _tiny_models()

  def trainer(workdir):  # a fresh copy of the initial student each time
    student = nnx.clone(student0)
    return student, StageTrainer(
      name="kd",
      workdir=workdir,
      model=student,
      loss_fn=objectives.kd_loss_fn(1.0, 0.5, 1.0),
      spec=spec,
      mesh=mesh,
      teachers={"teacher": teacher},
    )

  # uninterrupted, in its own workdir: the reference of the resumed run below
  student, tr = trainer(os.path.join(workdir, "uninterrupted"))
  tr.run(_ProcessBatches(4, pid, nproc))
  res = {
    "process_count": jax.process_count(),
    "uninterrupted_rows": (
      read_metrics(os.path.join(workdir, "uninterrupted", "kd")) if pid == 0 else None
    ),  # process 0 writes the metrics
    "uninterrupted_params": _flat_params(student),
  }
  # crash while fetching step 5's batch (checkpoint 4 is the latest), then resume
  _, tr = trainer(workdir)
  try:
    tr.run(_ProcessBatches(4, pid, nproc, crash_at=5))
    raise AssertionError("the injected failure did not stop the run")
  except RuntimeError as e:
    assert "injected failure" in str(e), e
  ckdir = os.path.join(workdir, "kd", "checkpoints")
  res["resumed_from"] = max(int(d) for d in os.listdir(ckdir) if d.isdigit())
  student, tr = trainer(workdir)
  tr.run(_ProcessBatches(4, pid, nproc))
  res.update(
    rows=read_metrics(os.path.join(workdir, "kd")) if pid == 0 else None, params=_flat_params(student)
  )
  with open(out, "w") as f:
    json.dump(res, f)


def _masked_ce_loss(student, teachers, batch):
  """Mean over rows of the next-token CE over each row's first lengths[b] tokens."""
  import jax.numpy as jnp

  tokens, lengths = batch["tokens"], batch["lengths"]
  logits = student(tokens, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
  logp = jax_log_softmax(logits[:, :-1].astype(jnp.float32))
  tok_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  mask = (jnp.arange(tokens.shape[1] - 1)[None, :] < (lengths[:, None] - 1)).astype(jnp.float32)
  per_row = -(tok_logp * mask).sum(1) / mask.sum(1)
  return per_row.mean(), {}


def jax_log_softmax(x):
  import jax

  return jax.nn.log_softmax(x, axis=-1)


def _rank_batch(pos, rows=8, length=17):
  tokens = _global_batch(pos, rows, length)
  lengths = np.random.default_rng([11, pos]).integers(4, length + 1, rows).astype(np.int32)
  return {"tokens": tokens, "lengths": lengths}


def _worker_ranks(workdir, out):
  import jax

  from zebra_jax.parallel import make_mesh
  from zebra_jax.train.metrics import read_metrics
  from zebra_jax.train.trainer import StageTrainer, TrainSpec

  class Batches:
    def __init__(self):
      self.pos = 0

    def __next__(self):
      self.pos += 1
      return _rank_batch(self.pos)

    def get_state(self):
      return {"pos": self.pos}

    def set_state(self, s):
      self.pos = s["pos"]

  # The reference: the initial student's logits, the masked CE in float64 numpy.
  _, student = _tiny_models()
  b = _rank_batch(1)
  logits = np.asarray(student(b["tokens"], np.broadcast_to(np.arange(17), (8, 17))), np.float64)
  logits = logits[:, :-1]
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  tok = np.take_along_axis(logp, b["tokens"][:, 1:, None].astype(np.int64), -1)[..., 0]
  mask = np.arange(16)[None, :] < (b["lengths"][:, None] - 1)
  res = {
    "reference_loss": float(np.mean(-(tok * mask).sum(1) / mask.sum(1))),
    "unmasked_loss": float(np.mean(-tok.mean(1))),
    "losses": {},
    "params": {},
  }
  meshes = {
    "1": make_mesh(1, 1, 1, devices=jax.devices()[:1]),
    "4": make_mesh(2, 2, 1, devices=jax.devices()[:4]),
  }
  for name, mesh in meshes.items():
    _, student = _tiny_models()
    spec = TrainSpec(
      steps=3,
      lr=1e-3,
      batch_size=8,
      seq_len=17,
      grad_accum=2,
      warmup_frac=0.0,
      log_every=1,
      checkpoint_every=100,
      async_checkpoint=False,
      progress=False,
    )
    tr = StageTrainer(
      name=f"ranks_{name}",
      workdir=workdir,
      model=student,
      loss_fn=_masked_ce_loss,
      spec=spec,
      mesh=mesh,
      teachers={},
    )
    if name == "4":
      placed = tr._device_batch(_rank_batch(0))
      as_list = lambda spec: [list(a) if isinstance(a, tuple) else a for a in spec]
      res["lengths_spec"] = as_list(placed["lengths"].sharding.spec)
      res["tokens_spec"] = as_list(placed["tokens"].sharding.spec)
      try:
        tr._device_batch({**_rank_batch(0), "scale": np.float32(2.0)})
        res["scalar_error"] = ""
      except ValueError as e:
        res["scalar_error"] = str(e)
    tr.run(Batches())
    res["losses"][name] = read_metrics(os.path.join(workdir, f"ranks_{name}"))
    res["params"][name] = _flat_params(student)
  with open(out, "w") as f:
    json.dump(res, f)


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  if sys.argv[1] == "devices":  # both multi-device workers in one process (one start, one import)
    _worker_mesh(sys.argv[2], sys.argv[3])
    _worker_ranks(sys.argv[2], sys.argv[4])
  elif sys.argv[1] == "proc":
    _worker_process(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
  else:
    raise SystemExit(f"unknown worker {sys.argv[1]!r}")


# -- 9. every unset field can be set from the command line -------------------------------------------
def test_every_unset_config_field_can_be_set_from_the_command_line(tmp_path):
  """ml_collections refuses `--config.x=...` for a field whose default is a plain None; base_config
  declares each unset field with its type. Every unset leaf is overridden in one absl run here."""
  from ml_collections.config_dict import FieldReference

  from zebra_jax.distill.config import base_config

  DICT_FIELDS = {"model.mla_rope_scaling"}
  values = {int: "7", float: "0.5", str: "/some/path", tuple: "(0, 3)"}
  overrides, expect = [], {}

  def walk(d, prefix):
    for k in d.keys():
      v = d[k]
      if hasattr(v, "keys"):
        walk(v, f"{prefix}{k}.")
      elif v is None:
        if f"{prefix}{k}" in DICT_FIELDS:  # no command-line syntax for a dict: config files only
          continue
        field = d._fields[k]
        kind = field.get_type() if isinstance(field, FieldReference) else None
        assert kind in values, f"{prefix}{k}: unset with no type ({kind}); use _unset(type)"
        overrides.append(f"--config.{prefix}{k}={values[kind]}")
        expect[f"{prefix}{k}"] = kind(eval(values[kind])) if kind is tuple else kind(values[kind])

  walk(base_config(), "")
  assert len(expect) >= 15, expect
  script = tmp_path / "show.py"
  script.write_text(
    "import json\nfrom absl import app\nfrom ml_collections import config_flags\n"
    "C = config_flags.DEFINE_config_file('config')\n"
    f"def main(_):\n  print(json.dumps({{k: C.value[k.split('.')[0]][k.split('.', 1)[1]] "
    f"if '.' in k else C.value[k] for k in {sorted(expect)!r}}}))\n"
    "app.run(main)\n"
  )
  out = subprocess.run(
    [sys.executable, str(script), "--config", os.path.join(ROOT, "configs", "tiny.py"), *overrides],
    capture_output=True,
    text=True,
    env=_env(),
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert {k: tuple(v) if isinstance(v, list) else v for k, v in got.items()} == expect


def test_a_newcomers_path_from_a_run_to_transformers(tiny_run, tmp_path):
  """Issue 17's newcomer, in a fresh HOME with nothing of ours in it: the documented tiny run (the
  fixture, a subprocess of scripts/distill.py) -> `generate.py`, `evaluate.py perplexity` and
  `export.py` on its KD model as separate processes with no --tokenizer -> the export loads in
  plain transformers, whose logits match the saved model's (the JAX forward, float32)."""
  import torch
  import transformers

  from zebra_jax.convert.orbax_io import load_model

  workdir = tiny_run[0]
  model_dir = str(workdir / "kd" / "model")
  home = tmp_path / "home"
  home.mkdir()
  env = _env(None, HOME=str(home))
  env.pop("XDG_CACHE_HOME", None)

  def script(name, *args):
    r = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", f"{name}.py"), *args],
      env=env,
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
      cwd=str(tmp_path),
    )
    assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout

  out = script(
    "generate",
    "--checkpoint",
    model_dir,
    "--prompt",
    "To be",
    "--prompt",
    "Once upon",
    "--max-new-tokens",
    "4",
  )
  assert out.startswith("[0] ") and "\n[1] " in out, out  # one continuation per prompt
  (tmp_path / "doc.txt").write_text("To be, or not to be, that is the question.\n" * 4)
  out = script(
    "evaluate",
    "perplexity",
    "--checkpoint",
    model_dir,
    "--files",
    str(tmp_path / "doc.txt"),
    "--max-length",
    "64",
  )
  assert "all: ppl " in out and "over 172 tokens" in out, out  # the byte tokenizer: 4 x 43 bytes
  export_dir = tmp_path / "hf"
  script("export", "--checkpoint", model_dir, "--out", str(export_dir))
  assert not any(home.iterdir()) or all(p.name.startswith(".") for p in home.iterdir())

  tok = transformers.AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
  ids = tok("To be, or not")["input_ids"]
  hf = transformers.AutoModelForCausalLM.from_pretrained(
    export_dir, trust_remote_code=True, dtype=torch.float32
  )
  with torch.no_grad():
    hf_logits = hf(torch.tensor([ids])).logits[0].numpy()
  jax_model = load_model(model_dir)
  jax_logits = np.asarray(jax_model(np.asarray([ids], np.int32)), np.float32)[0]
  np.testing.assert_allclose(hf_logits, jax_logits, rtol=2e-3, atol=2e-3)
