"""zebra_jax/_platforms.py: with libtpu installed (the tpu-aot extra) and no TPU attached, importing
zebra_jax keeps libtpu from probing for a TPU slice and printing alarming lines (issue 17 item 3)."""

import importlib.util
import os
import subprocess
import sys

import pytest
from _runs import ROOT

from zebra_jax import _platforms

NOISE = ("Failed to find host bounds", "unexpected worker hostname", "libtpu", "TPU_")


def _run(code: str, **env_extra) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")}
  env.update(PYTHONPATH=ROOT, **env_extra)
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None or _platforms.has_tpu(),
  reason="the noise comes from libtpu on a machine without a TPU",
)
@pytest.mark.parametrize("order", ["import zebra_jax, jax", "import jax, zebra_jax"])
def test_no_libtpu_noise_on_a_machine_without_a_tpu(order):
  r = _run(f"{order}; print(jax.devices()[0].platform)")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() in ("cpu", "gpu")
  assert not [l for l in r.stderr.splitlines() if any(n in l for n in NOISE)], r.stderr[-2000:]


def test_a_users_platform_choice_is_kept():
  r = _run("import zebra_jax, os; print(os.environ['JAX_PLATFORMS'])", JAX_PLATFORMS="cpu")
  assert r.stdout.strip() == "cpu"
  assert _platforms.platforms_without_tpu() in ("cpu", "cuda,cpu")
