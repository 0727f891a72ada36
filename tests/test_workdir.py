"""Workdir guards (distill/workdir.py, issue 18 items 2-3): one run per workdir, and no silent change
of settings under stages that already hold state. Each case sets the workdir up by hand (a lock
file of a live or dead process, a config.json and a stage directory as an interrupted run leaves
them), so the pipeline stops before it loads or compiles anything."""

import json
import os
import socket
import subprocess
import sys

import pytest
from _runs import ROOT, load_config_file

from zebra_jax.distill import workdir as workdir_lib
from zebra_jax.distill.config import RunConfigError
from zebra_jax.distill.experiment import shared_settings_diff
from zebra_jax.distill.pipeline import run_pipeline


def _cfg(**ild):
  c = load_config_file("tiny")
  c.stages = ("teacher",)
  c.ild.update(**ild)
  return c


def _write_lock(wd, pid, host=None):
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, ".lock"), "w") as f:
    json.dump({"pid": pid, "host": host or socket.gethostname(), "since": "2026-12-03T10:00:00"}, f)


def _interrupted_ild(wd, cfg):
  """What a run stopped inside ild_mla leaves: its config.json and a stage directory."""
  os.makedirs(os.path.join(wd, "ild_mla", "checkpoints", "20"), exist_ok=True)
  old = cfg.copy_and_resolve_references()
  old.stages = ("teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd")
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write(old.to_json(indent=2))


def test_a_live_run_holds_the_workdir(tmp_path):
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, live.pid)
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"in use by pid {live.pid} on this host"):
      run_pipeline(_cfg(), str(tmp_path), progress=False)
    _write_lock(tmp_path, 1, host="another-host")
    with pytest.raises(workdir_lib.WorkdirBusy, match="host another-host"):
      run_pipeline(_cfg(), str(tmp_path), progress=False)
    assert not os.path.exists(tmp_path / "config.json")  # nothing was written
  finally:
    live.kill()
    live.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_lock(tmp_path, dead.pid)
  logs = []
  cfg = _cfg()
  with workdir_lib.WorkdirLock(str(tmp_path), log=logs.append) as lock:
    assert lock.held
    with open(tmp_path / ".lock") as f:
      assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(workdir_lib.WorkdirBusy, match="in use by pid"):  # our own live pid
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  assert any(f"stale lock of pid {dead.pid}" in m for m in logs)
  assert not os.path.exists(tmp_path / ".lock")
  assert cfg  # the config is untouched by the lock


def test_changed_settings_under_an_interrupted_stage_are_refused(tmp_path):
  wd = str(tmp_path)
  _interrupted_ild(wd, _cfg(lr=3e-3))
  before = open(os.path.join(wd, "config.json")).read()
  with pytest.raises(
    RunConfigError,
    match=r"ild_mla.*ild\.lr: 0\.003 -> 0\.001.*"
    r"accept_config_changes",
  ):
    run_pipeline(_cfg(lr=1e-3), wd, progress=False)
  assert open(os.path.join(wd, "config.json")).read() == before  # the record is kept
  assert not os.path.exists(os.path.join(wd, ".lock"))  # and the lock released


def test_settings_no_finished_stage_read_may_change(tmp_path):
  wd = str(tmp_path)
  _interrupted_ild(wd, _cfg(lr=3e-3))
  c = _cfg(lr=3e-3)
  c.kd.lr = 5e-4  # kd has not started
  c.model.n_mla = 3  # the placement: read by select / assemble, not by the ILD students
  c.train.log_every = 1  # bookkeeping
  c.train.prefetch = 0  # bookkeeping too: read ahead or not, the same batches
  with open(os.path.join(wd, "config.json")) as f:
    old = json.load(f)
  fields = workdir_lib.changed_fields(old, json.loads(c.to_json()))
  assert set(fields) == {"kd.lr", "model.n_mla"}
  assert workdir_lib.affected_stages(fields, old["stages"], lambda s: s == "ild_mla") == []
  # the same fields under a started select stage: select and everything after it
  assert workdir_lib.affected_stages(fields, old["stages"], lambda s: True) == ["select", "assemble", "kd"]
  run_pipeline(c, wd, progress=False)  # runs the teacher stage
  assert json.load(open(os.path.join(wd, "config.json")))["kd"]["lr"] == 5e-4


def test_a_field_added_since_the_run_is_a_change_only_off_its_default():
  """A workdir's config.json from before a field existed (samples.max_repetition was added on
  2026-12-07): the field at its default is the behaviour that run had, so no change; set to
  anything else, it is one."""
  c = _cfg(lr=3e-3)
  old = json.loads(c.to_json())
  del old["samples"]["max_repetition"]
  assert workdir_lib.changed_fields(old, json.loads(c.to_json())) == {}
  c.samples.max_repetition = 0.3
  assert workdir_lib.changed_fields(old, json.loads(c.to_json())) == {
    "samples.max_repetition": ("<unset>", 0.3)
  }


def test_accept_config_changes_keeps_the_earlier_config(tmp_path):
  wd = str(tmp_path)
  _interrupted_ild(wd, _cfg(lr=3e-3))
  c = _cfg(lr=1e-3)
  c.accept_config_changes = True
  logs = []
  workdir_lib.check_settings(wd, c.to_json(), list(c.stages), accept=True, log=logs.append)
  assert json.load(open(os.path.join(wd, "config.1.json")))["ild"]["lr"] == 3e-3
  assert not os.path.exists(os.path.join(wd, "config.json"))
  assert "config.1.json" in logs[0] and "ild.lr" in logs[0]


def test_the_shared_stages_read_what_the_pipeline_check_says_they_read():
  a = {"kd": {"lr": 1.0}, "model": {"n_mla": 9, "kv_lora_rank": 16}, "train": {"log_every": 10}}
  b = {"kd": {"lr": 2.0}, "model": {"n_mla": 4, "kv_lora_rank": 32}, "train": {"log_every": 1}}
  assert shared_settings_diff(a, b) == ["model.kv_lora_rank: 16 != 32"]


# scripts/distill.py on the tiny config, as its own process (the CPU, the repository importable)
TINY_ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


def tiny_distill_cmd(workdir, *flags) -> list[str]:
  script, config = os.path.join(ROOT, "scripts", "distill.py"), os.path.join(ROOT, "configs", "tiny.py")
  return [sys.executable, script, "--config", config, "--workdir", str(workdir), "--no_progress", *flags]


def test_distill_script_prints_one_line_and_exits_2_on_a_busy_workdir(tmp_path):
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    _write_lock(tmp_path, live.pid)
    p = subprocess.run(
      tiny_distill_cmd(tmp_path, "--config.stages=('teacher',)"),
      env=TINY_ENV,
      capture_output=True,
      text=True,
      timeout=300,
    )
  finally:
    live.kill()
    live.wait()
  assert p.returncode == 2, p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert f"error: {tmp_path} is in use by pid {live.pid}" in p.stderr


def test_sigterm_while_the_script_starts_exits_143_with_a_message(tmp_path):
  """A SIGTERM while distill.py still imports jax (before the pipeline's handler exists) used to end
  the process with -15 and no word (found by tests/resume_trials.py, 2026-12-07)."""
  import signal
  import time

  p = subprocess.Popen(
    tiny_distill_cmd(tmp_path / "w"),
    env=TINY_ENV,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    time.sleep(1.0)  # the interpreter is up, jax and the project are still importing
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  assert p.returncode == 143, out[-3000:]
  assert "SIGTERM while starting the run: stopped before any stage ran" in out and "Traceback" not in out


def test_sigterm_during_a_stages_setup_exits_143_with_a_message(tmp_path):
  """Issue 18 item 8: SIGTERM while ild_mla loads and compiles (before its first step, where the
  trainer's own handler is not installed yet) used to kill the run with -15 and no word."""
  import signal
  import time

  p = subprocess.Popen(
    tiny_distill_cmd(tmp_path, "--config.stages=('teacher', 'ild_mla')"),
    env=TINY_ENV,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  out = []
  try:
    for line in p.stdout:
      out.append(line)
      if "[ild_mla] starting" in line:
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        break
    rest, _ = p.communicate(timeout=300)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  text = "".join(out) + rest
  assert p.returncode == 143, text[-3000:]
  assert "SIGTERM while in stage 'ild_mla'" in text and "Traceback" not in text
  assert not os.path.exists(tmp_path / "ild_mla" / "model")
  assert not os.path.exists(tmp_path / ".lock")  # the lock is released on the way out
