"""Resuming a stage on a different device count: the checkpoint of a run on 4 simulated devices is
restored onto 2 and onto 8 (resharding parameters and Adam state on restore) and the loss curve
continues as if the run had never stopped.

`scripts/distill.py --config configs/tiny.py` (teacher + ild_mla, 12 steps, a row per step) runs as
subprocesses with XLA_FLAGS=--xla_force_host_platform_device_count=N:
  reference  4 devices, mesh data=2 x fsdp=2, uninterrupted;
  killed     the same command, SIGTERM once ild_mla logged step 5: the trainer saves the step it is
             at and exits 143;
  resumed    copies of the killed workdir, rerun on 2 devices (fsdp=2) and on 8 (fsdp=4 x tensor=2):
             every parameter and optimiser array gets a different layout than the one saved.
The rows up to the kill are the killed run's own (bit-identical to the reference: same devices);
the rows after it must equal the reference within rel 1e-5 (loss, block / mixer loss, grad and
param norms), and the final weights within 1e-5 absolute (weights are O(1)): a different device
count changes only the summation order of the reductions (measured: metrics <= 2.1e-7 relative,
weights <= 6e-8 absolute on both 2 and 8 devices). A resume that restarted from scratch, lost the
optimiser state or replayed other batches would be off by far more: the loss changes by more than
100x the tolerance from every step to the next (checked below).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from _runs import metrics_rows, signal_at_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.join(ROOT, "scripts", "distill.py")
STEPS = 12
KILL_AT = 5
FLAGS = [
  "--config.stages=('teacher', 'ild_mla')",
  f"--config.ild.steps={STEPS}",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=4",
  "--config.train.async_checkpoint=False",
]
MESHES = {4: (2, 2, 1), 2: (1, 2, 1), 8: (1, 4, 2)}  # devices -> (data, fsdp, tensor)
COMPARED = ("loss", "block_loss", "mixer_loss", "grad_norm", "param_norm")
TIMEOUT = 600


def _env(devices: int, cache: str) -> dict:
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  return env


def _cmd(workdir, devices: int):
  d, f, t = MESHES[devices]
  return [
    sys.executable,
    DISTILL,
    "--config",
    os.path.join(ROOT, "configs", "tiny.py"),
    "--workdir",
    str(workdir),
    "--no_progress",
    *FLAGS,
    f"--config.mesh.data={d}",
    f"--config.mesh.fsdp={f}",
    f"--config.mesh.tensor={t}",
  ]


def _run(workdir, devices, cache) -> subprocess.CompletedProcess:
  r = subprocess.run(
    _cmd(workdir, devices),
    env=_env(devices, cache),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    cwd=ROOT,
  )
  assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
  return r


def _rows(workdir) -> list[dict]:
  return metrics_rows(workdir, "ild_mla")


def _kill_at(workdir, devices, cache, step):
  """Runs distill.py and sends SIGTERM once ild_mla has logged `step`: (returncode, output)."""
  return signal_at_step(
    _cmd(workdir, devices), _env(devices, cache), workdir, "ild_mla", step, signal.SIGTERM, TIMEOUT
  )


def _params(path) -> dict:
  from flax import nnx

  from zebra_jax.convert.orbax_io import load_model

  m = load_model(path)
  return {
    ".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(m, nnx.Param))
  }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("reshard")
  cache = str(base / "jax_cache")
  ref = base / "ref4"
  _run(ref, 4, cache)
  killed = base / "killed4"
  rc, out = _kill_at(killed, 4, cache, KILL_AT)
  assert rc == 143, out[-3000:]
  assert "SIGTERM: saved step" in out
  assert not (killed / "ild_mla" / "model").exists()
  saved = max(int(d) for d in os.listdir(killed / "ild_mla" / "checkpoints") if d.isdigit())
  assert KILL_AT <= saved < STEPS and _rows(killed)[-1]["step"] == saved
  # Both resumes (2 and 8 devices: different programs, nothing to share in the cache) run at once,
  # on CI's two cores; their tests check what they did.
  resumed = {}
  for devices in (2, 8):
    work = base / f"resumed{devices}"
    shutil.copytree(killed, work)
    out, err = open(base / f"resumed{devices}.out", "w+"), open(base / f"resumed{devices}.err", "w+")
    p = subprocess.Popen(
      _cmd(work, devices), env=_env(devices, cache), stdout=out, stderr=err, text=True, cwd=ROOT
    )
    resumed[devices] = (work, p, out, err)
  done = {}
  try:
    for devices, (work, p, out, err) in resumed.items():
      p.wait(timeout=TIMEOUT)
      out.seek(0)
      err.seek(0)
      done[devices] = (work, subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read()))
  finally:
    for work, p, out, err in resumed.values():
      if p.poll() is None:
        p.kill()
        p.wait()
      out.close()
      err.close()
  return {"base": base, "cache": cache, "ref": ref, "killed": killed, "saved": saved, "resumed": done}


def _check_resume(runs, devices):
  work, r = runs["resumed"][devices]  # copies of the killed workdir, rerun on `devices`
  assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
  saved = runs["saved"]
  assert f"[ild_mla] resumed from step {saved}" in r.stdout, r.stdout[-3000:]
  assert "[teacher] artifact exists, skipping" in r.stdout
  ref, got = _rows(runs["ref"]), _rows(work)
  assert [x["step"] for x in ref] == [x["step"] for x in got] == list(range(1, STEPS + 1))
  for a, b in zip(ref, got):
    for k in COMPARED:
      if b["step"] <= saved:  # the killed 4-device run's own rows: identical to the reference
        assert b[k] == a[k], (k, a, b)
      else:
        assert b[k] == pytest.approx(a[k], rel=1e-5), (k, a, b)
  # the check has teeth: the curve moves by far more than the tolerance from step to step
  losses = [x["loss"] for x in ref]
  assert min(abs(x - y) / abs(y) for x, y in zip(losses[saved:], losses[saved - 1 :])) > 1e-3
  a, b = _params(runs["ref"] / "ild_mla" / "model"), _params(work / "ild_mla" / "model")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)
  return got


def test_resume_on_two_devices_continues_the_four_device_curve(runs):
  _check_resume(runs, 2)


def test_resume_on_eight_devices_with_tensor_sharding_continues_the_curve(runs):
  _check_resume(runs, 8)
