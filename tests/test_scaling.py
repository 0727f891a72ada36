"""scripts/scaling.py: the stage runs on 1 and 2 simulated CPU devices (a smoke run of the GPU
procedure), the table's numbers recomputed here from the metrics files the trainer wrote, the GPU
commands of a dry run, and the summary arithmetic on constructed rows."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "scaling.py")


def _module():
  spec = importlib.util.spec_from_file_location("scaling_script", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  return env


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_cpu_smoke_run_measures_both_device_counts_and_appends_the_table(tmp_path):
  work, doc = tmp_path / "scal", tmp_path / "bench.md"
  doc.write_text("# Benchmarks\n")
  r = subprocess.run(
    [
      sys.executable,
      SCRIPT,
      "--config",
      os.path.join(ROOT, "configs", "tiny.py"),
      "--devices",
      "1,2",
      "--stage",
      "ild_mla",
      "--steps",
      "3",
      "--platform",
      "cpu",
      "--workdir",
      str(work),
      "--append",
      str(doc),
    ],
    capture_output=True,
    text=True,
    env=_env(),
    timeout=600,
    cwd=ROOT,
  )
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  rec = json.loads((work / "scaling.json").read_text())
  s = {row["devices"]: row for row in rec["summary"]}
  assert sorted(s) == [1, 2] and s[1]["mesh"] == [1, 1, 1] and s[2]["mesh"] == [2, 1, 1]
  # prerequisites ran once; each count trained the stage alone from them
  assert (work / "prep" / "teacher" / "model").is_dir()
  for n in (1, 2):
    assert os.path.islink(work / f"n{n}" / "teacher")
    assert (work / f"n{n}" / "ild_mla" / "model").is_dir()
  # the numbers, recomputed from the trainer's metrics files
  m = {n: _rows(work / f"n{n}" / "ild_mla" / "metrics.jsonl") for n in (1, 2)}
  assert [x["step"] for x in m[1]] == [x["step"] for x in m[2]] == [1, 2, 3]
  tok = {n: (m[n][1]["tokens_per_s"] + m[n][2]["tokens_per_s"]) / 2 for n in (1, 2)}
  assert tok[1] > 0 and s[1]["tokens_per_s"] == pytest.approx(tok[1], rel=1e-12)
  assert s[2]["efficiency"] == pytest.approx(tok[2] / (2 * tok[1]), rel=1e-12)
  assert s[1]["efficiency"] == pytest.approx(1.0)
  assert s[2]["final_loss"] == m[2][-1]["loss"] and s[1]["final_loss"] == m[1][-1]["loss"]
  # same weights and batches on 1 and 2 devices: the loss agrees up to summation order
  assert abs(s[2]["loss_rel_diff"]) < 1e-5
  assert s[1]["mfu"] is None  # no peak FLOP/s for a CPU
  text = doc.read_text()
  assert text.startswith("# Benchmarks\n") and "### tiny: ild_mla, 3 steps on 1, 2 x cpu" in text
  assert "| devices | mesh (data x fsdp x tensor) | tokens/s | MFU |" in text
  assert "| 2 | 2x1x1 | " in text and "python scripts/scaling.py --config" in text


def test_dry_run_prints_the_gpu_commands_and_runs_nothing(tmp_path):
  work = tmp_path / "dry"
  r = subprocess.run(
    [
      sys.executable,
      SCRIPT,
      "--config",
      os.path.join(ROOT, "configs", "smollm2_135m.py"),
      "--devices",
      "1,2,4",
      "--stage",
      "ild_mla",
      "--steps",
      "30",
      "--mesh",
      "1,-1,1",
      "--platform",
      "gpu",
      "--dry-run",
      "--workdir",
      str(work),
      "--config.samples.num_samples=64",
    ],
    capture_output=True,
    text=True,
    env=_env(),
    timeout=120,
    cwd=ROOT,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  cmds = [line for line in r.stdout.splitlines() if line.startswith("$ ")]
  assert len(cmds) == 4  # the prep (teacher, samples) and one run per count
  assert "CUDA_VISIBLE_DEVICES=0,1,2,3 NCCL_NVLS_ENABLE=0" in cmds[0]
  assert '\'--config.stages=("teacher", "samples")\'' in cmds[0]
  for cmd, n in zip(cmds[1:], (1, 2, 4)):
    assert f"CUDA_VISIBLE_DEVICES={','.join(map(str, range(n)))} NCCL_NVLS_ENABLE=0" in cmd
    assert f"--config.mesh.fsdp={n}" in cmd and "--config.mesh.data=1" in cmd
    assert "--config.ild.steps=30" in cmd and "--config.samples.num_samples=64" in cmd
    assert '"ild_mla")' in cmd
  assert not work.exists()


def test_summary_arithmetic_and_argument_errors():
  sc = _module()
  rows = lambda toks, loss: [{"step": i + 1, "tokens_per_s": t, "loss": loss} for i, t in enumerate(toks)]
  # the first interval (compilation) is left out; the smallest count is the baseline
  out = sc.summarize(
    {
      2: {"rows": rows([5.0, 100.0, 100.0], 2.0), "mesh": (2, 1, 1)},
      4: {"rows": rows([1.0, 170.0, 190.0], 2.002), "mesh": (2, 2, 1)},
    }
  )
  assert out[0]["tokens_per_s"] == 100.0 and out[1]["tokens_per_s"] == 180.0
  assert out[1]["efficiency"] == pytest.approx(180.0 / (2 * 100.0))
  assert out[1]["loss_rel_diff"] == pytest.approx(0.001)
  assert "| 4 | 2x2x1 | 180 | - | 90.0% | 2.002 | +1.0e-03 |" in sc.table(out)
  assert sc.resolve_mesh((1, -1, 2), 8) == (1, 4, 2)
  from zebra_jax.cli import ScriptError

  with pytest.raises(ScriptError, match="needs 2 devices, not 1"):
    sc.resolve_mesh((2, 1, 1), 1)
  with pytest.raises(ScriptError, match="not a training stage"):
    sc.prerequisites(("teacher", "select", "kd"), "select")
  assert sc.prerequisites(("teacher", "samples", "ild_mla", "kd"), "ild_mla") == ["teacher", "samples"]
