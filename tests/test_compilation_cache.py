"""The scripts' persistent compilation cache (`assets.use_compilation_cache`): where it goes, that a
second process reads back what the first compiled, and how it is turned off. Each case runs in a
fresh interpreter: JAX fixes its cache at the first compilation of a process."""

import os
import subprocess
import sys
import textwrap


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent(
  """
  import json, os, sys
  from zebra_jax.assets import use_compilation_cache
  d = use_compilation_cache()
  import jax, jax.numpy as jnp
  from jax._src import monitoring
  hits = []
  monitoring.register_event_listener(lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
  f(jnp.ones((32, 32))).block_until_ready()
  print(json.dumps({"dir": d, "env": os.environ.get("JAX_COMPILATION_CACHE_DIR"), "hits": len(hits)}))
  """
)


def _run(env_extra, tmp_path):
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ("JAX_COMPILATION_CACHE_DIR", "ZEBRA_JAX_COMPILATION_CACHE")
  }
  env.update(ZEBRA_JAX_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **env_extra)
  out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  import json

  return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_second_process_reads_back_what_the_first_compiled(tmp_path):
  first = _run({}, tmp_path)
  d = str(tmp_path / "cache" / "xla")
  assert first["dir"] == d and first["env"] == d  # exported for subprocesses (the lm-eval CLI)
  assert first["hits"] == 0 and any(name.endswith("-cache") for name in os.listdir(d))
  second = _run({}, tmp_path)
  assert second["hits"] >= 1


def test_a_users_jax_setting_wins_and_zero_turns_it_off(tmp_path):
  own = tmp_path / "own"
  got = _run({"JAX_COMPILATION_CACHE_DIR": str(own)}, tmp_path)
  assert got["dir"] == str(own) and os.listdir(own)
  off = _run({"ZEBRA_JAX_COMPILATION_CACHE": "0"}, tmp_path)
  assert off["dir"] is None and off["env"] is None
  assert not (tmp_path / "cache" / "xla").exists()
