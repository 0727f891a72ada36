"""SSD Pallas kernels (kernels_pallas.ssd): numerics, gradients, dispatch, TPU AOT compilation.

* On CPU the TPU kernel runs in the Pallas TPU interpreter and the GPU kernel in the generic
  Pallas interpreter; outputs are checked against a float64 numpy recurrence written here, and
  gradients against autodiff of the pure-JAX reference (`ssd_scan_reference`).
* `test_tpu_aot_compile` compiles the Mosaic kernel (forward + backward) for v5e, v5p and v6e
  topologies through libtpu in a subprocess; it needs libtpu (`pip install -e .[tpu-aot]`), either
  in this interpreter or in the python named by $ZEBRA_TPU_PYTHON (default /work/venv-tpu).
* Tests marked `gpu` run the real kernel on a CUDA GPU (the device machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import ssd_scan, ssd_step
from kernels_pallas.ssd import ssd_scan_reference
from kernels_pallas.ssd.common import CoreConfig, prepare_and_run
from kernels_pallas.ssd.gpu import ssd_scan_gpu
from kernels_pallas.ssd.tpu import ssd_scan_tpu
from zebra_jax.ops import dispatch_backend
from zebra_jax.ops import ssd as ops_ssd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_GPU = jax.default_backend() == "gpu"
ARGN = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state")


# --------------------------------------------------------------------------- #
# Independent float64 oracle: the recurrence itself, one step at a time.
# --------------------------------------------------------------------------- #
def recurrence_f64(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, initial_state=None):
  x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
  b, l, h, p = x.shape
  g = B.shape[2]
  group = np.arange(h) // (h // g)  # head i reads group i // (h // g)
  Bh, Ch = B[:, :, group], C[:, :, group]  # (b, l, h, n)
  d = dt + (0.0 if dt_bias is None else np.asarray(dt_bias, np.float64))
  d = np.log1p(np.exp(-np.abs(d))) + np.maximum(d, 0.0) if dt_softplus else d
  state = np.zeros((b, h, p, B.shape[3])) if initial_state is None else np.array(initial_state, np.float64)
  y = np.empty((b, l, h, p))
  for t in range(l):
    decay = np.exp(d[:, t] * A)[:, :, None, None]
    state = decay * state + d[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :]
    y[:, t] = (state * Ch[:, t, :, None, :]).sum(-1)
    if D is not None:
      y[:, t] += np.asarray(D, np.float64)[:, None] * x[:, t]
  return y, state


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.all(np.isfinite(a)), "non-finite values"
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def make_inputs(
  seed, b, l, h, p, g, n, *, dtype=jnp.float32, with_D=True, with_bias=True, with_init=True, softplus=True
):
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.standard_normal(s).astype(np.float32)
  args = dict(
    x=jnp.asarray(r(b, l, h, p), dtype),
    dt=jnp.asarray(0.7 * r(b, l, h) - 1.0 if softplus else rng.uniform(0.02, 0.3, (b, l, h)), jnp.float32),
    A=jnp.asarray(-np.exp(rng.uniform(-1.5, 1.0, h)), jnp.float32),
    B=jnp.asarray(0.5 * r(b, l, g, n), dtype),
    C=jnp.asarray(0.5 * r(b, l, g, n), dtype),
    D=jnp.asarray(r(h)) if with_D else None,
    dt_bias=jnp.asarray(0.3 * r(h) if softplus else rng.uniform(0, 0.1, h), jnp.float32)
    if with_bias
    else None,
    initial_state=jnp.asarray(r(b, h, p, n)) if with_init else None,
  )
  cot = (jnp.asarray(r(b, l, h, p), dtype), jnp.asarray(r(b, h, p, n)))
  return args, cot


def outputs_and_grads(fn, args, cot, softplus):
  """(y, final_state, grads dict) of fn, through one jitted vjp."""
  names = [k for k in ARGN if args[k] is not None]

  def run(*vals):
    kw = dict(zip(names, vals))
    return fn(kw.pop("x"), kw.pop("dt"), kw.pop("A"), kw.pop("B"), kw.pop("C"), **kw, dt_softplus=softplus)

  @jax.jit
  def both(*vals):
    out, pull = jax.vjp(run, *vals)
    return out, pull(cot)

  (y, s), grads = both(*[args[k] for k in names])
  return y, s, dict(zip(names, grads))


def check_case(
  fn,
  shape,
  *,
  dtype=jnp.float32,
  softplus=True,
  with_D=True,
  with_bias=True,
  with_init=True,
  seed=0,
  chunk=16,
):
  b, l, h, p, g, n = shape
  args, cot = make_inputs(
    seed, *shape, dtype=dtype, with_D=with_D, with_bias=with_bias, with_init=with_init, softplus=softplus
  )
  y, s, grads = outputs_and_grads(fn, args, cot, softplus)
  assert y.shape == (b, l, h, p) and y.dtype == dtype and s.shape == (b, h, p, n)
  assert s.dtype == jnp.float32

  y64, s64 = recurrence_f64(
    **{k: (None if v is None else np.asarray(v.astype(jnp.float32))) for k, v in args.items()},
    dt_softplus=softplus,
  )
  tol = 1e-4 if dtype == jnp.float32 else 1e-2
  assert rel(y.astype(jnp.float32), y64) < tol
  assert rel(s, s64) < tol

  # Gradients: autodiff of the reference on the same (upcast) inputs, float32, HIGHEST.
  ref = lambda x, dt, A, B, C, **kw: ssd_scan_reference(
    x, dt, A, B, C, chunk_size=chunk, return_final_state=True, **kw
  )
  args32 = {k: (None if v is None else v.astype(jnp.float32)) for k, v in args.items()}
  cot32 = tuple(c.astype(jnp.float32) for c in cot)
  _, _, want = outputs_and_grads(ref, args32, cot32, softplus)
  gtol = 1e-4 if dtype == jnp.float32 else 2e-2
  errs = {k: rel(grads[k].astype(jnp.float32), want[k]) for k in want}
  assert all(e < gtol for e in errs.values()), errs
  for k in want:
    assert grads[k].dtype == args[k].dtype, k
  return errs


def kernel_fn(module, chunk, tuning=None):
  """The kernel core through the shared prologue, in its interpreter (tuning: block sizes)."""
  from kernels_pallas.ssd import gpu, tpu

  core = {"tpu": tpu.ssd_core_tpu, "gpu": gpu.ssd_core_gpu}[module]
  cfg = CoreConfig(chunk=chunk, interpret=not (module == "gpu" and ON_GPU), tuning=tuning)

  def fn(x, dt, A, B, C, *, D=None, dt_bias=None, dt_softplus=True, initial_state=None):
    return prepare_and_run(
      core,
      cfg,
      x,
      dt,
      A,
      B,
      C,
      D=D,
      dt_bias=dt_bias,
      dt_softplus=dt_softplus,
      initial_state=initial_state,
      return_final_state=True,
    )

  return fn


# --------------------------------------------------------------------------- #
# Mosaic TPU kernel, TPU interpreter
# --------------------------------------------------------------------------- #
# (b, l, h, p, g, n), chunk, heads per block (None: the kernel's choice), options
TPU_CASES = [
  ((2, 37, 4, 8, 2, 16), 16, None, {}),  # g < h, ragged length
  ((1, 48, 4, 8, 4, 8), 16, (2,), dict(with_init=False)),  # g == h, 2 head blocks
  ((1, 21, 4, 8, 1, 8), 16, (1,), dict(softplus=False, with_D=False)),  # one group, hb < h/g
  ((1, 40, 8, 8, 2, 8), 16, (8,), dict(with_bias=False)),  # block spans groups
]


@pytest.mark.parametrize("shape,chunk,tuning,opts", TPU_CASES)
def test_tpu_kernel_interpret_f32(shape, chunk, tuning, opts):
  check_case(kernel_fn("tpu", chunk, tuning), shape, chunk=chunk, **opts)


def test_tpu_kernel_interpret_bf16():
  check_case(kernel_fn("tpu", 16), (1, 45, 4, 16, 2, 16), dtype=jnp.bfloat16, chunk=16, seed=3)


def test_public_pallas_on_cpu_runs_tpu_interpreter():
  args, _ = make_inputs(5, 1, 19, 2, 8, 1, 8)
  kw = {k: args[k] for k in ("D", "dt_bias", "initial_state")}
  y, s = ssd_scan(
    args["x"],
    args["dt"],
    args["A"],
    args["B"],
    args["C"],
    **kw,
    chunk_size=8,
    return_final_state=True,
    impl="pallas",
    interpret=True,
  )
  y64, s64 = recurrence_f64(**{k: (None if v is None else np.asarray(v)) for k, v in args.items()})
  assert rel(y, y64) < 1e-4 and rel(s, s64) < 1e-4


# --------------------------------------------------------------------------- #
# GPU kernel (Triton lowering), generic interpreter on CPU
# --------------------------------------------------------------------------- #
# Sub-block T, warps, stages, state-pass block
GPU_CASES = [
  ((2, 77, 4, 16, 2, 32), 32, (16, 4, 2, 128), {}),  # 3 chunks, ragged
  ((1, 128, 2, 16, 2, 16), 16, (16, 4, 2, 64), dict(with_init=False)),  # 8 chunks: unrolled pass
  ((1, 50, 4, 16, 1, 16), 32, (16, 4, 2, 256), dict(softplus=False, with_D=False)),
]


@pytest.mark.parametrize("shape,chunk,tuning,opts", GPU_CASES)
def test_gpu_kernel_interpret_f32(shape, chunk, tuning, opts):
  check_case(kernel_fn("gpu", chunk, tuning), shape, chunk=chunk, **opts)


def test_gpu_kernel_interpret_bf16():
  check_case(
    kernel_fn("gpu", 32, (16, 4, 2, 256)), (1, 70, 2, 32, 2, 16), dtype=jnp.bfloat16, chunk=32, seed=4
  )


# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #
def resolve_scan_impl(impl, *, backend, interpret=False, **call):
  """The scan `zebra_jax.ops.ssd` runs for `impl` when dispatching for `backend`, by name."""
  with dispatch_backend(backend):
    kernel = ops_ssd.SCAN_KERNELS.resolve(impl, caller="ssd_scan", interpret=interpret, **call)
  if kernel is None:
    return "reference"
  fn = getattr(kernel.fn, "func", kernel.fn)  # interpret=True wraps the kernel in a partial
  return {ssd_scan_tpu: "pallas_tpu", ssd_scan_gpu: "pallas_gpu"}[fn]


def test_resolve_impl():
  x = jnp.zeros((1, 512, 32, 64), jnp.bfloat16)
  Bm = jnp.zeros((1, 512, 32, 64), jnp.bfloat16)
  call = dict(x=x, B=Bm, chunk_size=256)
  assert resolve_scan_impl("auto", backend="cpu", **call) == "reference"
  # interpret=True is the TPU kernel in the interpreter, for "auto" as for "pallas" (the old
  # kernels_pallas chooser gave the reference for "auto"; nothing called it so).
  assert resolve_scan_impl("auto", backend="cpu", interpret=True, **call) == "pallas_tpu"
  assert resolve_scan_impl("auto", backend="tpu", **call) == "pallas_tpu"
  assert resolve_scan_impl("auto", backend="gpu", **call) == "pallas_gpu"
  # Shapes the kernels were not verified on fall back to the reference under "auto".
  assert resolve_scan_impl("auto", backend="tpu", x=x, B=Bm, chunk_size=64) == "reference"
  odd = jnp.zeros((1, 512, 32, 48), jnp.bfloat16)
  assert resolve_scan_impl("auto", backend="gpu", x=odd, B=Bm, chunk_size=256) == "reference"
  assert resolve_scan_impl("pallas", backend="cpu", interpret=True, **call) == "pallas_tpu"
  with pytest.raises(NotImplementedError, match="no Pallas SSD scan kernel"):
    resolve_scan_impl("pallas", backend="cpu", **call)
  # A named kernel on another backend: dispatch for that backend (as the AOT compile does).
  assert resolve_scan_impl("pallas", backend="gpu", **call) == "pallas_gpu"
  with pytest.raises(ValueError, match="must be one of"):
    resolve_scan_impl("triton", backend="gpu", **call)


def test_auto_on_cpu_is_reference_and_validates():
  args, _ = make_inputs(6, 1, 9, 2, 4, 2, 4)
  kw = {k: args[k] for k in ("D", "dt_bias", "initial_state")}
  y = ssd_scan(args["x"], args["dt"], args["A"], args["B"], args["C"], **kw, chunk_size=4)
  want = ssd_scan_reference(args["x"], args["dt"], args["A"], args["B"], args["C"], **kw, chunk_size=4)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
  with pytest.raises(ValueError, match="groups"):
    ssd_scan(
      args["x"],
      args["dt"],
      args["A"],
      args["B"][:, :, :1].repeat(3, 2),
      args["C"][:, :, :1].repeat(3, 2),
      impl="pallas",
      interpret=True,
    )


def test_step_matches_scan_last_token():
  args, _ = make_inputs(7, 2, 1, 4, 8, 2, 8)
  y, s = ssd_step(
    args["initial_state"],
    args["x"][:, 0],
    args["dt"][:, 0],
    args["A"],
    args["B"][:, 0],
    args["C"][:, 0],
    D=args["D"],
    dt_bias=args["dt_bias"],
  )
  y64, s64 = recurrence_f64(**{k: np.asarray(v) for k, v in args.items()})
  assert rel(y, y64[:, 0]) < 1e-5 and rel(s, s64) < 1e-5


def test_ops_registry_uses_kernels_only_on_their_backend():
  scans = ops_ssd.SCAN_KERNELS.kernels
  tpu_k, gpu_k = scans[("pallas", "tpu")], scans[("pallas", "gpu")]
  assert ("pallas", "cpu") not in scans
  x = jnp.zeros((1, 256, 32, 64), jnp.bfloat16)
  assert tpu_k.supports(x=x, B=x, chunk_size=256) is None
  assert "multiple of 128" in tpu_k.supports(x=x, B=x, chunk_size=64)
  assert gpu_k.supports(x=x, B=x, chunk_size=256) is None
  assert ops_ssd.STEP_KERNELS.kernels[("pallas", "gpu")].supports is None  # the step takes all
  if jax.default_backend() == "cpu":
    assert ops_ssd.available_impls() == ("reference",)
    with pytest.raises(NotImplementedError):
      ops_ssd.ssd_scan(x, x[..., 0], x[0, 0, :, 0], x, x, impl="pallas")


# --------------------------------------------------------------------------- #
# TPU ahead-of-time compilation through libtpu (subprocess)
# --------------------------------------------------------------------------- #
def _tpu_python():
  if importlib.util.find_spec("libtpu") is not None:
    return sys.executable
  cand = os.environ.get("ZEBRA_TPU_PYTHON", "/work/venv-tpu/bin/python")
  return cand if os.path.exists(cand) else None


AOT_SCRIPT = textwrap.dedent("""
    import json, sys, jax, jax.numpy as jnp
    from jax.experimental import topologies
    from kernels_pallas.ssd.tpu import ssd_scan_tpu
    topo_name, cases = sys.argv[1], json.loads(sys.argv[2])
    out = []
    dev = topologies.get_topology_desc(platform="tpu", topology_name=topo_name).devices[0]
    shard = jax.sharding.SingleDeviceSharding(dev)
    S = lambda s, d: jax.ShapeDtypeStruct(tuple(s), d, sharding=shard)
    for b, l, h, p, g, n, chunk, dtype in cases:
        dt = jnp.dtype(dtype)
        def loss(x, dtv, A, B, C, D, bias, s0):
            y, s = ssd_scan_tpu(x, dtv, A, B, C, D=D, dt_bias=bias, initial_state=s0,
                                chunk_size=chunk, return_final_state=True)
            return jnp.sum(y.astype(jnp.float32)) + jnp.sum(s)
        args = (S((b, l, h, p), dt), S((b, l, h), jnp.float32), S((h,), jnp.float32),
                S((b, l, g, n), dt), S((b, l, g, n), dt), S((h,), jnp.float32),
                S((h,), jnp.float32), S((b, h, p, n), jnp.float32))
        lowered = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(8)))).lower(*args)
        hlo = lowered.as_text()
        compiled = lowered.compile()
        out.append(dict(topo=topo_name, kind=dev.device_kind, case=[b, l, h, p, g, n, chunk],
                        mosaic=hlo.count("tpu_custom_call"),
                        temp=compiled.memory_analysis().temp_size_in_bytes))
    print("AOT_RESULT " + json.dumps(out))
""")
TOPOLOGIES = ("v5e:2x2", "v5p:2x2x1", "v6e:2x2")

# Zebra 1B / 3B head shapes (forward + backward), GQA groups, chunk 128, float32.
AOT_CASES = [
  [1, 512, 32, 64, 32, 64, 256, "bfloat16"],
  [1, 256, 24, 128, 24, 128, 256, "bfloat16"],
  [1, 256, 16, 64, 4, 128, 128, "float32"],
]


def test_tpu_aot_compile():
  py = _tpu_python()
  if py is None:
    pytest.skip("libtpu is not installed: pip install -e .[tpu-aot] (or set ZEBRA_TPU_PYTHON)")
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    ALLOW_MULTIPLE_LIBTPU_LOAD="1",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  # One process per topology, in parallel (each initialises libtpu for its own topology).
  procs = [
    subprocess.Popen(
      [py, "-c", AOT_SCRIPT, topo, json.dumps(AOT_CASES)],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for topo in TOPOLOGIES
  ]
  results = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=600)
    line = [s for s in stdout.splitlines() if s.startswith("AOT_RESULT ")]
    assert proc.returncode == 0 and line, stderr[-4000:]
    results += json.loads(line[0][len("AOT_RESULT ") :])
  assert len(results) == 3 * len(AOT_CASES)
  kinds = {r["topo"]: r["kind"] for r in results}
  assert kinds == {"v5e:2x2": "TPU v5 lite", "v5p:2x2x1": "TPU v5", "v6e:2x2": "TPU v6 lite"}
  # Forward (saving states) and backward: two Mosaic kernels in every compiled program.
  assert all(r["mosaic"] == 2 for r in results), results


# --------------------------------------------------------------------------- #
# Real GPU kernel (device machine)
# --------------------------------------------------------------------------- #
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(
  "shape,chunk,dtype",
  [
    ((2, 1000, 32, 64, 32, 64), 256, jnp.bfloat16),  # Zebra 1B heads, ragged length
    ((1, 777, 24, 128, 24, 128), 256, jnp.bfloat16),  # Zebra 3B heads
    ((2, 700, 8, 64, 2, 64), 128, jnp.float32),  # GQA groups, fp32
    ((1, 300, 4, 32, 1, 32), 64, jnp.float32),  # small dims, chunk 64
    ((1, 513, 8, 128, 8, 32), 256, jnp.bfloat16),
  ],
)
def test_gpu_kernel_on_device(shape, chunk, dtype):
  def fn(x, dt, A, B, C, **kw):
    return ssd_scan_gpu(x, dt, A, B, C, chunk_size=chunk, return_final_state=True, **kw)

  check_case(fn, shape, dtype=dtype, chunk=chunk, seed=sum(shape))


@pytest.mark.gpu
@needs_gpu
def test_gpu_auto_picks_kernel():
  assert (
    resolve_scan_impl(
      "auto",
      backend=jax.default_backend(),
      x=jnp.zeros((1, 8, 32, 64), jnp.bfloat16),
      B=jnp.zeros((1, 8, 32, 64), jnp.bfloat16),
      chunk_size=256,
    )
    == "pallas_gpu"
  )
