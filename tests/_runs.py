"""Helpers shared by the tests that run scripts/distill.py as subprocesses or load scripts and config
files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str):
  """scripts/<name>.py as a module (its `main(argv)` runs in this process; each call loads it anew)."""
  spec = importlib.util.spec_from_file_location(
    f"_script_{name}", os.path.join(ROOT, "scripts", f"{name}.py")
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def load_config_file(name: str, arg: str | None = None):
  """configs/<name>.py's get_config([arg]), as `--config configs/<name>.py[:arg]` would build it."""
  spec = importlib.util.spec_from_file_location(
    f"_config_{name}", os.path.join(ROOT, "configs", f"{name}.py")
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()


def metrics_rows(workdir, stage) -> list[dict]:
  """The rows of <workdir>/<stage>/metrics.jsonl so far ([] before the first)."""
  path = os.path.join(str(workdir), stage, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass  # a line being written right now
  return out


def signal_at_step(cmd, env, workdir, stage, step, sig, timeout) -> tuple[int, str]:
  """Starts `cmd`, sends `sig` once `stage` has logged `step`; returns (returncode, output)."""
  p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline:
      if p.poll() is not None:
        raise AssertionError(
          f"run ended (rc {p.returncode}) before {stage} logged step {step}:\n{p.stdout.read()[-4000:]}"
        )
      r = metrics_rows(workdir, stage)
      if r and r[-1]["step"] >= step:
        p.send_signal(sig)
        break
      time.sleep(0.02)
    out, _ = p.communicate(timeout=timeout)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  return p.returncode, out
