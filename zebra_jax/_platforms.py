"""Keep libtpu quiet on machines without a TPU.

The `tpu-aot` extra installs libtpu so that a CPU machine can compile for TPU topologies ahead of
time. With libtpu installed, jax's first backend initialisation on a machine without a TPU lets
libtpu probe for a TPU slice, which prints five alarming lines ("Failed to find host bounds for
accelerator type", "E0000 ... unexpected worker hostname") from every process. When libtpu is
installed, no TPU is attached and the user chose no platforms, jax is told to use the other
platforms only; AOT compilation still works (zebra_jax/distill/aot.py asks libtpu for compile-only
topology devices, which needs no TPU backend).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_TPU_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID")


def has_tpu() -> bool:
  """A TPU chip is attached (accel / vfio device files) or the environment describes a TPU VM."""
  return bool(
    glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or any(os.environ.get(k) for k in _TPU_ENV)
  )


def platforms_without_tpu() -> str:
  """The jax platforms to use here, TPU left out: CUDA (when its plugin and a GPU are present) and
  the CPU."""
  cuda_plugin = any(
    importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")
  )
  gpu = os.path.exists("/dev/nvidiactl") or bool(glob.glob("/dev/nvidia[0-9]*"))
  return "cuda,cpu" if cuda_plugin and gpu else "cpu"


def quiet_libtpu() -> str | None:
  """Sets jax's platforms (the JAX_PLATFORMS variable, or jax's config when jax is already
  imported but has no backend yet) when libtpu would probe for a TPU that is not there; returns
  what it set, or None when it left things alone."""
  if any(os.environ.get(k) for k in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")):
    return None
  if importlib.util.find_spec("libtpu") is None or has_tpu():
    return None
  value = platforms_without_tpu()
  if "jax" in sys.modules:
    try:
      import jax

      if jax.config.jax_platforms:
        return None
      jax.config.update("jax_platforms", value)
    except Exception:  # backends already initialised: too late, keep them
      return None
  else:
    os.environ["JAX_PLATFORMS"] = value
  return value
