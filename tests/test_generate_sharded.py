"""Sharded generation: a tiny MLA + Mamba2 + GQA hybrid with its parameters and cache sharded over
(data, fsdp, tensor) meshes of 8 simulated CPU devices generates the tokens of the unsharded model.

The multi-device work runs in two concurrent subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (this file is the worker: `python
tests/test_generate_sharded.py meshes|extras OUT.json`), which write what they saw to JSON files;
the tests below check them. "meshes": generation, caches and the compiled decode loop on meshes
8x1x1, 2x2x2 and 1x1x8; "extras": impl="auto" (the MLA decode through shard_map), speculative
decoding and the decode benchmark on a mesh. References are independent of the sharded code
path: greedy tokens of the no-cache oracle (`use_cache=False`: the full forward rerun over the whole
sequence each step, on one device) and logits of `model(sequence)` on one device (both tied to float64 / transformers
references in tests/test_generate.py, test_mla.py, test_mamba2.py). Cache layouts are checked
against specs written out here by hand from the rule table, and the compiled decode loop is checked
to hold no collective that moves an array with the cache's length axis (max_len = 88 is a size no
weight or activation of the model has). The CLI (`scripts/generate.py --mesh`) is run too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MESHES = {"8x1x1": (8, 1, 1), "2x2x2": (2, 2, 2), "1x1x8": (1, 1, 8)}
PROMPT_LENS = (7, 13, 2, 9, 1, 11, 5, 3)  # ragged, batch 8 (divisible by every data x fsdp here)
NEW = 12
PROMPT_SEED = 5  # prompts whose greedy choices all have a top-2 logit gap > 1e-3 (checked below)
S = 88  # cache max_len in the layout / collective checks


def _env(**extra) -> dict:
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  env.update(extra)
  return env


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict:
  """The two groups of checks in two worker processes that run at once (CI has two cores):
  {"meshes": ..., "extras": ...}. The oracle is computed once, by the "meshes" worker; the extras'
  tokens are compared with it."""
  tmp = tmp_path_factory.mktemp("sharded_gen")
  outs = {group: tmp / f"{group}.json" for group in ("meshes", "extras")}
  logs = {group: open(tmp / f"{group}.log", "w+") for group in outs}
  procs = {
    group: subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), group, str(out)],
      stdout=logs[group],
      stderr=subprocess.STDOUT,
      text=True,
      env=_env(),
      cwd=ROOT,
    )
    for group, out in outs.items()
  }
  try:
    for group, p in procs.items():
      p.wait(timeout=600)
      logs[group].seek(0)
      assert p.returncode == 0, (group, logs[group].read()[-8000:])
  finally:
    for group, p in procs.items():
      if p.poll() is None:
        p.kill()
        p.wait()
      logs[group].close()
  got = {group: json.loads(out.read_text()) for group, out in outs.items()}
  got["extras"]["oracle"] = got["meshes"]["oracle"]
  return got


@pytest.fixture(scope="module")
def res(both):
  """Generation, caches and compiled loops on every mesh."""
  return both["meshes"]


@pytest.fixture(scope="module")
def extras(both):
  """impl="auto" (shard_map), speculative decoding and the decode benchmark on a mesh."""
  return both["extras"]


def test_sharded_greedy_tokens_equal_the_unsharded_oracle(res):
  oracle = res["oracle"]
  assert len(oracle) == len(PROMPT_LENS) and all(len(o) == NEW for o in oracle)
  assert len({tuple(o) for o in oracle}) == len(PROMPT_LENS)  # the sequences really differ
  # no near-ties: the logits of the sharded runs differ by ~1e-6 (reduction order), far below this
  assert res["min_top2_gap"] > 1e-3
  assert res["unsharded"] == oracle
  for name in MESHES:
    assert res["tokens"][name] == oracle, name
    # a model sharded beforehand (shard_for_inference) generates sharded without mesh=
    assert res["tokens_presharded"][name] == oracle, name


def test_auto_impl_runs_the_mla_decode_per_shard_with_the_same_tokens(extras):
  # impl="auto": the absorbed-MLA decode runs per shard through shard_map (no kernel on the CPU,
  # so the reference inside it), same tokens as the one-device oracle
  assert extras["auto_has_shard_map"] and extras["auto_tokens"] == extras["oracle"]


def test_sharded_prefill_and_decode_step_logits_match_the_full_forward(res):
  for name in MESHES:
    assert res["step_rel_err"][name] < 1e-4, (name, res["step_rel_err"][name])


# Expected cache layouts (CACHE_RULES): batch over data x fsdp; kv heads, Mamba2 heads and conv
# channels over tensor; the latent rows split by batch only.
B = ("data", "fsdp")
EXPECTED = {
  "8x1x1": {
    "latent": ["data", None, None],
    "ssm": ["data", None, None, None],
    "conv": ["data", None, None],
    "kv": ["data", None, None, None],
    "lengths": ["data"],
  },
  "2x2x2": {
    "latent": [B, None, None],
    "ssm": [B, "tensor", None, None],
    "conv": [B, None, "tensor"],
    "kv": [B, "tensor", None, None],
    "lengths": [B],
  },
  # tensor only: the batch cannot be split and every head group reads the whole latent cache,
  # so the latent rows and lengths are replicated there (by design, see infer/cache.py).
  "1x1x8": {
    "latent": [None, None, None],
    "ssm": [None, "tensor", None, None],
    "conv": [None, None, "tensor"],
    "kv": [None, "tensor", None, None],
    "lengths": [None],
  },
}


def _check_specs(specs, name, stage):
  for arr, want in EXPECTED[name].items():
    have = [tuple(p) if isinstance(p, list) else p for p in specs[arr]]
    have += [None] * (len(want) - len(have))
    assert have == want, (name, stage, arr, have, want)


@pytest.mark.parametrize("name", list(MESHES))
def test_cache_is_created_and_kept_sharded(res, name):
  got = res["cache"][name]
  for stage in ("init", "after_decode", "after_grow"):  # grow: cache.grow_cache(cache, S + 8)
    _check_specs(got[stage], name, stage)
  # each device holds only its part: the global shape divided by the mesh axes of the spec
  sizes = dict(zip(("data", "fsdp", "tensor"), MESHES[name]))
  assert got["shards_grown"]["latent"][0][1] == got["shards"]["latent"][0][1] + 8
  for stage in ("shards", "shards_grown"):
    for arr, (global_shape, shard_shape) in got[stage].items():
      want = []
      for dim, part in zip(global_shape, EXPECTED[name][arr]):
        axes = () if part is None else (part,) if isinstance(part, str) else part
        n = 1
        for a in axes:
          n *= sizes[a]
        want.append(dim // n)
      assert shard_shape == want, (name, stage, arr, global_shape, shard_shape, want)


def test_sharded_windowed_cache_grows_in_its_layout_with_the_same_tokens(extras):
  """stream's cache_window on the 2x2x2 mesh: prompts padded to 16, longest 13, 12 new tokens,
  window 8 -> the decode loop runs on 16, 24, 32 rows, every one in the cache layout."""
  got = extras["windowed"]
  assert got["tokens"] == extras["oracle"]
  assert [loop["rows"] for loop in got["loops"]] == [16, 24, 32]
  for loop in got["loops"]:
    _check_specs(loop["specs"], "2x2x2", f"decode loop on {loop['rows']} rows")


@pytest.mark.parametrize("name", list(MESHES))
def test_decode_loop_moves_no_cache_array_between_devices(res, name):
  colls = res["collectives"][name]
  assert all(c["shape"] or c["op"] == "all-reduce" for c in colls)  # the parser read the shapes
  cache_like = [c for c in colls if S in c["shape"]]
  assert not cache_like, cache_like
  # The check can fail: the same scan of a program that gathers the sharded latent cache onto
  # every device (a replicated constraint) finds it.
  assert any(S in c["shape"] for c in res["gather_control"][name]), res["gather_control"][name]


def test_speculative_decoding_sharded_equals_plain_greedy(extras):
  spec = extras["speculative"]
  assert spec["tokens"] == extras["oracle"]
  assert spec["draft_on_mesh"]
  assert 0.0 < spec["acceptance_rate"] < 1.0, spec


def test_decode_benchmark_runs_sharded(extras):
  b = extras["bench"]
  assert b["on_mesh"] and b["tokens_per_s"] > 0
  assert b["device0_cache_bytes"] * 8 == b["cache_bytes"]  # batch 8 over data=8: 1/8 per device


def test_generate_cli_with_mesh_prints_the_unsharded_text(tmp_path):
  ckpt = tmp_path / "model"
  r = subprocess.run(
    [sys.executable, os.path.abspath(__file__), "save", str(ckpt)],
    capture_output=True,
    text=True,
    env=_env(),
    timeout=300,
    cwd=ROOT,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "generate.py"),
    "--checkpoint",
    str(ckpt),
    "--tokenizer",
    "byte",
    "--prompt",
    "To be, or not",
    "--prompt",
    "Once",
    "--max-new-tokens",
    "10",
  ]
  # the three runs at once (CI has two cores); small outputs, so pipes are fine
  procs = [
    subprocess.Popen(
      cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
    )
    for extra in ([], ["--mesh", "2,1,4"], ["--mesh", "3,1,1"])
  ]
  try:
    one, mesh, bad = [subprocess.CompletedProcess(p.args, 0, *p.communicate(timeout=300)) for p in procs]
    for r, p in zip((one, mesh, bad), procs):
      r.returncode = p.returncode
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert one.returncode == 0, one.stderr[-3000:]
  assert mesh.returncode == 0, mesh.stderr[-3000:]
  assert "sharded over" in mesh.stderr and "8 devices" in mesh.stderr
  assert one.stdout.startswith("[0] ") and "\n[1] " in one.stdout  # two generations (random bytes)
  assert mesh.stdout == one.stdout
  assert bad.returncode == 2 and "needs 3 devices, have 8" in bad.stderr, bad.stderr[-2000:]


# ------------------------------------------------------------------------------------------ worker
def _config(impl="reference", **kw):
  from zebra_jax.config import HybridConfig

  # 8 query / kv / Mamba2 heads and 192 conv channels: a tensor axis of 8 divides them all.
  fields = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=8,
    num_key_value_heads=8,
    head_dim=8,
    num_hidden_layers=3,
    mla_layers=(0,),
    attn_layers=(2,),
    q_lora_rank=16,
    kv_lora_rank=16,
    chunk_size=4,
    impl=impl,
  )
  fields.update(kw)
  return HybridConfig(**fields)


def _model(config, seed=0):
  import jax
  from flax import nnx

  from zebra_jax.models.hybrid import CausalLM

  model = CausalLM(config, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  # scaled-up matrices: sharp attention, logits far from uniform (as tests/test_generate.py)
  nnx.update(model, jax.tree.map(lambda p: p * 2.0 if p.ndim >= 2 else p, state))
  return model


def _spec(arr):
  return [list(p) if isinstance(p, tuple) else p for p in arr.sharding.spec]


def _cache_specs(cache):
  from zebra_jax.infer import KVCache, LatentCache, MambaState

  out = {"lengths": _spec(cache.lengths)}
  for lc in cache.layers:
    if isinstance(lc, LatentCache):
      out["latent"] = _spec(lc.rows)
    elif isinstance(lc, MambaState):
      out["ssm"], out["conv"] = _spec(lc.ssm), _spec(lc.conv)
    elif isinstance(lc, KVCache):
      out["kv"] = _spec(lc.rows)
  return out


def _shards(cache):
  from zebra_jax.infer import LatentCache, MambaState

  out = {}
  for lc in cache.layers:
    arrs = (
      {"latent": lc.rows}
      if isinstance(lc, LatentCache)
      else {"ssm": lc.ssm, "conv": lc.conv}
      if isinstance(lc, MambaState)
      else {"kv": lc.rows}
    )
    for k, a in arrs.items():
      out[k] = (list(a.shape), list(a.addressable_shards[0].data.shape))
  return out


def _collectives(hlo_text: str):
  import re

  out = []
  for m in re.finditer(
    r"= \(?([a-z0-9]+)\[([0-9,]*)\][^ ]* (all-gather|all-to-all|"
    r"collective-permute|all-reduce|reduce-scatter)\(",
    hlo_text,
  ):
    dims = [int(d) for d in m.group(2).split(",") if d]
    out.append({"op": m.group(3), "shape": dims})
  return out


def _worker(out_path: str) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  from zebra_jax.infer import (
    decode_step,
    generate,
    grow_cache,
    init_cache,
    model_mesh,
    prefill,
    shard_for_inference,
  )
  from zebra_jax.infer import decode as D
  from zebra_jax.infer.sampling import SamplingConfig
  from zebra_jax.parallel import make_mesh

  assert len(jax.devices()) == 8, jax.devices()
  config = _config()
  rng = np.random.default_rng(PROMPT_SEED)
  prompts = [rng.integers(0, 64, n).tolist() for n in PROMPT_LENS]
  res = {
    "tokens": {},
    "tokens_presharded": {},
    "cache": {},
    "collectives": {},
    "gather_control": {},
    "step_rel_err": {},
  }

  # Oracle: the unsharded model, no cache (full forward every step), on one device.
  ref_model = _model(config)
  res["oracle"] = generate(ref_model, prompts, NEW, stop_tokens=(), use_cache=False)
  res["unsharded"] = generate(ref_model, prompts, NEW, stop_tokens=())
  # Full-forward logits of every prompt + its greedy continuation (one device): the reference of
  # the sharded prefill / decode_step logits, and the top-2 margins of the greedy choices.
  graphdef, state = nnx.split(ref_model)
  fwd = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t))
  full = []
  gaps = []
  for p, o in zip(prompts, res["oracle"]):
    seq = np.zeros((1, 32), np.int32)
    seq[0, : len(p) + len(o)] = p + o
    lg = np.asarray(fwd(state, jnp.asarray(seq))[0], np.float64)
    full.append(lg)
    for t in range(len(p) - 1, len(p) + len(o) - 1):
      top = np.sort(lg[t])[-2:]
      gaps.append(top[1] - top[0])
  res["min_top2_gap"] = float(min(gaps))

  lens = np.asarray(PROMPT_LENS)
  tokens = np.zeros((8, 16), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, : len(p)] = p
  for name, sizes in MESHES.items():
    mesh = make_mesh(*sizes)
    res["tokens"][name] = generate(_model(config), prompts, NEW, stop_tokens=(), mesh=mesh)
    model = shard_for_inference(_model(config), mesh)
    assert model_mesh(model) == mesh
    res["tokens_presharded"][name] = generate(model, prompts, NEW, stop_tokens=())

    # The public pieces: a cache made on the mesh, prefill, then 3 decode steps feeding the
    # oracle's tokens; logits vs the one-device full forward at the same positions.
    cache = init_cache(config, 8, S, mesh=mesh)
    specs = {"init": _cache_specs(cache)}
    logits, cache = prefill(model, cache, tokens, lens, chunk=8)
    errs = [
      np.abs(np.asarray(logits)[b] - full[b][lens[b] - 1]).max() / np.abs(full[b]).max() for b in range(8)
    ]
    for step in range(3):
      tok = np.asarray([o[step] for o in res["oracle"]], np.int32)
      logits, cache = decode_step(model, cache, tok)
      errs += [
        np.abs(np.asarray(logits)[b] - full[b][lens[b] + step]).max() / np.abs(full[b]).max()
        for b in range(8)
      ]
    res["step_rel_err"][name] = float(max(errs))
    specs["after_decode"] = _cache_specs(cache)
    specs["shards"] = _shards(cache)
    res["cache"][name] = specs

    # The compiled decode loop: which collectives does it run, on which shapes?
    g, st = nnx.split(model)
    carry = D.DecodeCarry(jnp.int32(0), cache, logits, jnp.zeros((8,), bool), jnp.zeros((8, NEW), jnp.int32))
    hlo = (
      D.decode_loop.lower(
        st,
        carry,
        jnp.int32(NEW),
        jax.random.PRNGKey(0),
        D.stop_array(()),
        graphdef=g,
        sampling=SamplingConfig(0.0, None, None),
        pad_id=0,
        mesh=mesh,
      )
      .compile()
      .as_text()
    )
    res["collectives"][name] = _collectives(hlo)
    # negative control: every cache array pinned replicated, i.e. gathered onto each device
    everywhere = NamedSharding(mesh, P())
    gather = jax.jit(lambda c: jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a * 2, everywhere), c))
    res["gather_control"][name] = _collectives(gather.lower(cache).compile().as_text())
    grown = grow_cache(cache, S + 8)
    specs["after_grow"], specs["shards_grown"] = _cache_specs(grown), _shards(grown)
  with open(out_path, "w") as f:
    json.dump(res, f)


def _extras_worker(out_path: str) -> None:
  import jax
  import numpy as np

  assert len(jax.devices()) == 8, jax.devices()
  rng = np.random.default_rng(PROMPT_SEED)  # the prompts of _worker
  prompts = [rng.integers(0, 64, n).tolist() for n in PROMPT_LENS]
  res = {}
  _extras(res, _config(), prompts)
  with open(out_path, "w") as f:
    json.dump(res, f)


def _extras(res, config, prompts):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from zebra_jax.infer import generate, init_cache, model_mesh, prefill, shard_for_inference
  from zebra_jax.infer import decode as D
  from zebra_jax.parallel import make_mesh

  lens = np.asarray(PROMPT_LENS)
  tokens = np.zeros((8, 16), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, : len(p)] = p
  # impl="auto": the absorbed MLA decode goes through shard_map under the mesh.
  mesh = make_mesh(2, 2, 2)
  auto = shard_for_inference(_model(_config(impl="auto")), mesh)
  res["auto_tokens"] = generate(auto, prompts, NEW, stop_tokens=())
  cache = init_cache(auto.config, 8, S, mesh=mesh)
  _, cache = prefill(auto, cache, tokens, lens)
  g, st = nnx.split(auto)
  jaxpr = jax.make_jaxpr(
    lambda s, c, t: D._chunk_jit(s, c, t, None, graphdef=g, mode="decode", logits="last", mesh=mesh)
  )(st, cache, jnp.zeros((8, 1), jnp.int32))
  res["auto_has_shard_map"] = "shard_map" in str(jaxpr)

  # Speculative decoding on the mesh: the draft is the target's first 2 layers (MLA, Mamba2).
  target = _model(config)
  dc = config.replace(num_hidden_layers=2, attn_layers=())
  draft = _model(dc, seed=1)
  for i in range(2):
    nnx.update(draft.layers[i], nnx.state(target.layers[i]))
  nnx.update(draft.embed_tokens, nnx.state(target.embed_tokens))
  nnx.update(draft.norm, nnx.state(target.norm))
  toks, stats = generate(
    target, prompts, NEW, stop_tokens=(), draft=draft, num_draft_tokens=3, return_stats=True, mesh=mesh
  )
  res["speculative"] = {
    "tokens": toks,
    "acceptance_rate": stats["acceptance_rate"],
    "draft_on_mesh": model_mesh(draft) == mesh,
  }

  # stream's growing cache (cache_window=8) on the mesh: the rows and layout each decode loop gets
  loops, real = [], D.decode_loop

  def spy(state, carry, *args, **kw):
    loops.append({"rows": carry.cache.max_len, "specs": _cache_specs(carry.cache)})
    return real(state, carry, *args, **kw)

  D.decode_loop = spy
  try:
    toks = generate(target, prompts, NEW, stop_tokens=(), cache_window=8, mesh=mesh)
  finally:
    D.decode_loop = real
  res["windowed"] = {"tokens": toks, "loops": loops}

  # The decode benchmark (scripts/bench.py generate --mesh): weights and cache made sharded.
  from zebra_jax.bench import decode as bench

  mesh = make_mesh(8, 1, 1)
  bench_model = bench.random_model(config, mesh=mesh)
  r = bench.decode_throughput(bench_model, 8, 16, 2, warmup=1, mesh=mesh)
  res["bench"] = {
    "on_mesh": model_mesh(bench_model) == mesh,
    "cache_bytes": r["cache_bytes"],
    "device0_cache_bytes": r["device0_cache_bytes"],
    "tokens_per_s": r["tokens_per_s"],
  }


def _save(path: str) -> None:
  from zebra_jax.convert.orbax_io import save_model

  # vocab 320 > the byte tokenizer's 258 ids; no eos in the config (the tokenizer's 257 stops)
  config = _config(vocab_size=320, eos_token_id=None)
  save_model(_model(config), path)


if __name__ == "__main__":
  if sys.argv[1] == "meshes":
    _worker(sys.argv[2])
  elif sys.argv[1] == "extras":
    _extras_worker(sys.argv[2])
  elif sys.argv[1] == "save":
    _save(sys.argv[2])
  else:
    raise SystemExit(f"unknown case {sys.argv[1]!r}")
