"""Pallas kernels inside the partitioned step: `ops.causal_attention` / `ops.ssd_scan` under the
trainer's activation mesh run the kernel per shard through `shard_map`.

The cases run one after another in two concurrent subprocesses with 8 simulated CPU devices each
(this file is the worker: `python tests/test_ops_sharded.py <case> [<case> ...]`). There the TPU kernels are registered for the "cpu"
backend in the Pallas TPU interpreter (how the TPU kernels are checked on a CPU), called through the
ops dispatch inside `jax.jit` under `parallel.activation_mesh(mesh)` with batch-sharded inputs, and
their outputs and gradients compared with float64 references written here (causal GQA softmax
attention; the SSD as a sequential recurrence), differentiated by jax in float64. Meshes cover
data, fsdp and tensor, heads split over tensor, one SSD group shared by all heads, and a batch that
the mesh does not divide (replicated). The traced program is also checked to hold the kernel inside
a shard_map (and no shard_map without a mesh).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


CASES = ("attention_flash", "attention_splash", "ssd_groups", "ssd_one_group", "model")
# The cases split over two worker processes that run at once (the interpreted kernels run on one
# core each; CI has two), about equally long: the model alone takes as long as the kernels.
GROUPS = (("attention_flash", "attention_splash", "ssd_one_group"), ("ssd_groups", "model"))


@pytest.fixture(scope="module")
def cases() -> dict:
  """Every case run by one of two concurrent worker processes (one start, one jax initialisation
  each): {case: its output}; a case that failed has its traceback there and no "CASE OK" line."""
  assert sorted(c for g in GROUPS for c in g) == sorted(CASES)
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  logs = [tempfile.TemporaryFile("w+") for _ in GROUPS]  # files: a full pipe would stall a worker
  procs = [
    subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), *group],
      stdout=log,
      stderr=subprocess.STDOUT,
      text=True,
      env=env,
      cwd=ROOT,
    )
    for group, log in zip(GROUPS, logs)
  ]
  out, tails = {}, []
  try:
    for p, log in zip(procs, logs):
      p.wait(timeout=600)
      log.seek(0)
      text = log.read()
      tails.append(text[-8000:])
      assert p.returncode in (0, 1), tails[-1]
      out.update({part.split("\n", 1)[0].strip(): part for part in text.split("=== CASE ")[1:]})
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()
  assert set(out) == set(CASES), "\n".join(tails)
  return out


def _check(cases, case: str) -> None:
  print(cases[case])
  assert "CASE OK" in cases[case], cases[case][-5000:]


# (data, fsdp, tensor) meshes: heads over tensor, batch over data x fsdp.
@pytest.mark.parametrize("case", ["attention_flash", "attention_splash"])
def test_attention_kernel_sharded_matches_float64(cases, case):
  _check(cases, case)


@pytest.mark.parametrize("case", ["ssd_groups", "ssd_one_group"])
def test_ssd_kernel_sharded_matches_float64(cases, case):
  _check(cases, case)


def test_hybrid_model_grads_with_kernels_on_mesh_match_reference_ops(cases):
  """A tiny MLA + Mamba2 + GQA hybrid with impl="pallas" (interpreted TPU kernels), parameters
  sharded over data=2 x fsdp=2 x tensor=2, differentiated inside jit under the
  activation mesh as the trainer's step is: loss and every gradient equal the unsharded model with
  the pure-JAX ops (themselves checked against float64 in test_ssd_* / test_attention_*)."""
  _check(cases, "model")


# ------------------------------------------------------------------------------------------ worker
def _worker(case: str) -> None:
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  from kernels_pallas.attention import flash_tpu, splash
  from kernels_pallas.ssd.tpu import ssd_scan_tpu
  from zebra_jax.ops import attention as ops_attention
  from zebra_jax.ops import ssd as ops_ssd
  from zebra_jax.ops.dispatch import Kernel
  from zebra_jax.parallel.sharding import activation_mesh, make_mesh

  assert len(jax.devices()) == 8, jax.devices()

  def rel(out, ref):
    out = np.asarray(out, np.float64)
    assert np.all(np.isfinite(out)), "non-finite"
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))

  def primitives(jaxpr, out=None):
    """Names of every primitive in a (closed) jaxpr, recursively."""
    out = set() if out is None else out
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
      out.add(eqn.primitive.name)
      for v in eqn.params.values():
        for sub in v if isinstance(v, (list, tuple)) else (v,):
          if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
            primitives(sub, out)
    return out

  def run_sharded(op, mesh, args, cot, specs):
    """op(*args) and the vjp of <op(*args), cot> inside jit under the activation mesh, with the
    inputs placed batch-sharded as the trainer's step has them."""

    def loss(*a):
      out = op(*a)
      outs = out if isinstance(out, tuple) else (out,)
      return sum(jnp.sum(o.astype(jnp.float32) * c) for o, c in zip(outs, cot)), out

    def step(*a):
      with activation_mesh(mesh):
        (_, out), grads = jax.value_and_grad(loss, argnums=tuple(range(len(a))), has_aux=True)(*a)
      return out, grads

    def fit(spec, shape):  # placement only: drop mesh axes that do not divide the dimension
      size = lambda e: int(np.prod([mesh.shape[a] for a in ((e,) if isinstance(e, str) else e)]))
      return P(*(e if e is None or d % size(e) == 0 else None for e, d in zip(spec, shape)))

    placed = [jax.device_put(a, NamedSharding(mesh, fit(s, np.shape(a)))) for a, s in zip(args, specs)]
    prims = primitives(jax.make_jaxpr(step)(*placed))
    assert "shard_map" in prims and "pallas_call" in prims, sorted(prims)
    # Without the mesh the same op calls the kernel directly (no shard_map).
    plain = primitives(
      jax.make_jaxpr(lambda *a: jax.value_and_grad(lambda *b: loss(*b)[0], argnums=tuple(range(len(a))))(*a))(
        *args
      )
    )
    assert "shard_map" not in plain and "pallas_call" in plain, sorted(plain)
    return jax.jit(step)(*placed)

  # -- attention --------------------------------------------------------------------------------
  def attention_f64(q, k, v):
    H, G = q.shape[2], k.shape[2]
    kh, vh = jnp.repeat(k, H // G, axis=2), jnp.repeat(v, H // G, axis=2)
    T = q.shape[1]
    s = jnp.einsum("bthk,bshk->bhts", q, kh) * SCALE
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
    return jnp.einsum("bhts,bshv->bthv", jax.nn.softmax(s, axis=-1), vh)

  SCALE = 0.3

  def check_attention(kernel_fn, meshes, B, T, H, G, K, V):
    ops_attention.KERNELS.register("pallas", "cpu", Kernel(kernel_fn, flash_tpu.supports))
    op = functools.partial(ops_attention.causal_attention, scale=SCALE, impl="pallas")
    rng = np.random.default_rng([B, T, H, G])
    q, k, v, do = (
      rng.standard_normal(s).astype(np.float32)
      for s in ((B, T, H, K), (B, T, G, K), (B, T, G, V), (B, T, H, V))
    )
    with jax.enable_x64(True):
      ref_out, vjp = jax.vjp(attention_f64, *(jnp.asarray(a, jnp.float64) for a in (q, k, v)))
      ref_grads = vjp(jnp.asarray(do, jnp.float64))
      ref = [np.asarray(ref_out)] + [np.asarray(g) for g in ref_grads]
    for sizes in meshes:
      mesh = make_mesh(*sizes)
      spec = P(("data", "fsdp"), None, "tensor", None)
      out, grads = run_sharded(op, mesh, (q, k, v), (jnp.asarray(do),), (spec,) * 3)
      errs = [rel(out, ref[0])] + [rel(g, r) for g, r in zip(grads, ref[1:])]
      print(f"mesh data/fsdp/tensor={sizes}: rel err out/dq/dk/dv = " + " ".join(f"{e:.1e}" for e in errs))
      assert max(errs) < 1e-4, (sizes, errs)

  # -- SSD --------------------------------------------------------------------------------------
  def ssd_f64(x, dt, A, B, C, D, dt_bias, s0):
    """Sequential recurrence: S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t + D x_t."""
    h, g = x.shape[2], B.shape[2]
    Bh, Ch = jnp.repeat(B, h // g, axis=2), jnp.repeat(C, h // g, axis=2)
    dte = jax.nn.softplus(dt + dt_bias)

    def tick(S, t):
      x_t, d_t, B_t, C_t = t
      S = jnp.exp(d_t * A)[..., None, None] * S + jnp.einsum("bh,bhp,bhn->bhpn", d_t, x_t, B_t)
      return S, jnp.einsum("bhpn,bhn->bhp", S, C_t) + D[:, None] * x_t

    seq = tuple(jnp.moveaxis(a, 1, 0) for a in (x, dte, Bh, Ch))
    S, y = jax.lax.scan(tick, s0, seq)
    return jnp.moveaxis(y, 0, 1), S

  CHUNK = 8

  def check_ssd(meshes, b, l, h, p, g, n):
    ops_ssd.SCAN_KERNELS.register("pallas", "cpu", Kernel(functools.partial(ssd_scan_tpu, interpret=True)))

    def op(x, dt, A, B, C, D, dt_bias, s0):
      return ops_ssd.ssd_scan(
        x,
        dt,
        A,
        B,
        C,
        D=D,
        dt_bias=dt_bias,
        initial_state=s0,
        chunk_size=CHUNK,
        return_final_state=True,
        impl="pallas",
      )

    rng = np.random.default_rng([b, l, h, g])
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    args = (
      f(b, l, h, p),
      f(b, l, h) - 1.0,
      -np.exp(f(h) * 0.5),
      f(b, l, g, n) * 0.5,
      f(b, l, g, n) * 0.5,
      f(h),
      f(h) * 0.5,
      f(b, h, p, n) * 0.5,
    )
    cot = (jnp.asarray(f(b, l, h, p)), jnp.asarray(f(b, h, p, n)))
    with jax.enable_x64(True):
      ref_out, vjp = jax.vjp(ssd_f64, *(jnp.asarray(a, jnp.float64) for a in args))
      ref_grads = vjp(tuple(jnp.asarray(c, jnp.float64) for c in cot))
      ref = [np.asarray(o) for o in ref_out] + [np.asarray(gr) for gr in ref_grads]
    bt = ("data", "fsdp")
    specs = (
      P(bt, None, "tensor", None),
      P(bt, None, "tensor"),
      P("tensor"),
      P(bt, None, None, None),
      P(bt, None, None, None),
      P("tensor"),
      P("tensor"),
      P(bt, "tensor", None, None),
    )
    names = ("y", "final_state", "dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias", "dstate0")
    for sizes in meshes:
      mesh = make_mesh(*sizes)
      out, grads = run_sharded(op, mesh, args, cot, specs)
      errs = dict(zip(names, [rel(o, r) for o, r in zip(list(out) + list(grads), ref)]))
      print(f"mesh data/fsdp/tensor={sizes}: rel err " + " ".join(f"{k} {e:.1e}" for k, e in errs.items()))
      assert max(errs.values()) < 1e-4, (sizes, errs)

  # -- a whole hybrid model ----------------------------------------------------------------------
  def check_model():
    import dataclasses

    from flax import nnx

    from zebra_jax.config import HybridConfig
    from zebra_jax.models.hybrid import CausalLM
    from zebra_jax.parallel.sharding import shard_model

    ops_attention.KERNELS.register(
      "pallas",
      "cpu",
      Kernel(
        functools.partial(flash_tpu.flash_attention_tpu, block_q=8, block_k=8, interpret=True),
        flash_tpu.supports,
      ),
    )
    ops_ssd.SCAN_KERNELS.register("pallas", "cpu", Kernel(functools.partial(ssd_scan_tpu, interpret=True)))
    base = HybridConfig(
      vocab_size=64,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=3,
      num_attention_heads=4,
      num_key_value_heads=2,
      kv_lora_rank=16,
      q_lora_rank=16,
      mla_layers=(0,),
      attn_layers=(2,),
      chunk_size=8,
      impl="reference",
    )
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (4, 19)))

    def ce(model, tokens):
      logp = jax.nn.log_softmax(model(tokens[:, :-1]).astype(jnp.float32), axis=-1)
      return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    def loss_and_grads(model, mesh=None):
      graphdef, state = nnx.split(model)

      def fn(state, tokens):
        with activation_mesh(mesh):  # None: the ops call kernels directly
          return jax.value_and_grad(lambda st: ce(nnx.merge(graphdef, st), tokens))(state)

      return fn, state

    ref_fn, ref_state = loss_and_grads(CausalLM(base, rngs=nnx.Rngs(0)))
    ref_loss, ref_grads = jax.jit(ref_fn)(ref_state, tokens)

    mesh = make_mesh(2, 2, 2)
    model = CausalLM(dataclasses.replace(base, impl="pallas"), rngs=nnx.Rngs(0))
    # (remat stays off: the Pallas TPU interpreter runs kernels through io_callbacks, whose effects
    # jax.checkpoint refuses; compiled Mosaic calls have none, see test_aot's remat compiles.)
    shard_model(model, mesh)
    fn, state = loss_and_grads(model, mesh)
    tokens_sharded = jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
    prims = primitives(jax.make_jaxpr(fn)(state, tokens_sharded))
    assert "shard_map" in prims and "pallas_call" in prims, sorted(prims)
    loss, grads = jax.jit(fn)(state, tokens_sharded)
    flat_ref = dict(nnx.to_flat_state(ref_grads))
    errs = {
      ".".join(map(str, k)): rel(v[...], np.asarray(flat_ref[k][...], np.float64))
      for k, v in nnx.to_flat_state(grads)
    }
    worst = max(errs, key=errs.get)
    print(
      f"loss {float(loss):.6f} vs {float(ref_loss):.6f}; {len(errs)} gradients, worst rel err "
      f"{errs[worst]:.1e} ({worst})"
    )
    assert abs(float(loss) - float(ref_loss)) < 1e-5 * abs(float(ref_loss))
    assert set(errs) == {".".join(map(str, k)) for k in flat_ref}
    assert errs[worst] < 1e-4, errs

  if case == "attention_flash":
    # 4 query heads over 2 kv heads: tensor=2 splits whole GQA groups; (1, 4, 2) splits batch 4
    # over fsdp; (2, 1, 4) cannot split 2 kv heads 4 ways (heads replicated over tensor) and the
    # batch of 4 over data 2 only.
    kernel = functools.partial(flash_tpu.flash_attention_tpu, block_q=8, block_k=8, interpret=True)
    check_attention(kernel, [(2, 2, 2), (1, 4, 2), (2, 1, 4)], B=4, T=13, H=4, G=2, K=16, V=8)
  elif case == "attention_splash":
    kernel = functools.partial(splash.splash_attention_tpu, interpret=True)
    check_attention(kernel, [(1, 2, 4)], B=2, T=20, H=4, G=4, K=16, V=8)
  elif case == "ssd_groups":
    # 4 heads in 2 groups: tensor=2 splits heads and groups alike; batch 2 over data x fsdp = 4
    # does not divide, so it falls back to the one that does.
    check_ssd([(2, 2, 2), (1, 2, 4)], b=2, l=19, h=4, p=8, g=2, n=8)
  elif case == "model":
    check_model()
  elif case == "ssd_one_group":
    # One B/C group read by every head: heads split over tensor, B/C replicated; batch over fsdp.
    check_ssd([(1, 2, 4)], b=4, l=13, h=4, p=8, g=1, n=8)
  else:
    raise SystemExit(f"unknown case {case!r}")
  print("CASE OK")


if __name__ == "__main__":
  import traceback

  failed = False
  for name in sys.argv[1:]:  # each case registers the kernels it calls before calling them
    print(f"=== CASE {name}", flush=True)
    try:
      _worker(name)
    except BaseException:  # noqa: BLE001 - reported to that case's test, the next case still runs
      traceback.print_exc(file=sys.stdout)
      failed = True
    sys.stdout.flush()
  sys.exit(1 if failed else 0)
