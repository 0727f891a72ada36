"""Benchmark family "ssd": the chunked SSD scan, ours against mamba_ssm and the pure-JAX reference.

    python -m zebra_jax.bench.ssd [--shapes zebra|quick|"b,l,h,p,g,n;..."] [--modes fwd,fwdbwd]
        [--mamba-wheel .whl/mamba_ssm-2.3.2.post1-py3-none-any.whl] [--tuning "T,warps,stages,blk;..."]
    (or `scripts/bench.py kernels --family ssd ...`)

Rows: one per (shape, mode, implementation), bf16 x/B/C, float32 dt/A/D/dt_bias, chunk 256, D and
dt_bias given, softplus on, no initial state (the peer's defaults for Mamba2 training).
* time: median over repeats of the mean of back-to-back calls (JAX: wall clock around
  block_until_ready of a jitted call, dispatch is asynchronous so the device is kept busy; torch:
  CUDA events around the same loop);
* GB/s: the minimum bytes over time. Forward: x, B, C, dt read once and y written once. Forward +
  backward: that plus dy, x, B, C, dt read again and dx, dB, dC, ddt written once;
* "vs mamba_ssm": mamba_ssm's time over this row's time in the same run (> 1 = faster).
The mamba_ssm peer is `mamba_chunk_scan_combined` (Triton) from the pure-Python wheel built with
MAMBA_SKIP_CUDA_BUILD=TRUE; its package __init__ (which imports CUDA extensions) is bypassed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile

import numpy as np

# Shapes (name, batch, seqlen, heads, headdim, groups, dstate): the Zebra Mamba2 layers.
ZEBRA_SHAPES = (
  ("1B", 8, 2048, 32, 64, 32, 64),
  ("1B", 32, 2048, 32, 64, 32, 64),
  ("1B", 1, 16384, 32, 64, 32, 64),
  ("3B", 8, 2048, 24, 128, 24, 128),
  ("3B", 32, 2048, 24, 128, 24, 128),
  ("3B", 1, 16384, 24, 128, 24, 128),
)
QUICK_SHAPES = (("1B", 8, 2048, 32, 64, 32, 64), ("3B", 8, 2048, 24, 128, 24, 128))
CHUNK = 256


def parse_shapes(spec: str):
  if spec == "zebra":
    return ZEBRA_SHAPES
  if spec == "quick":
    return QUICK_SHAPES
  out = []
  for part in spec.split(";"):
    b, l, h, p, g, n = (int(v) for v in part.split(","))
    out.append(("custom", b, l, h, p, g, n))
  return tuple(out)


def min_bytes(b, l, h, p, g, n, mode, isz=2):
  fwd = b * l * (2 * h * p * isz + 2 * g * n * isz + h * 4)
  if mode == "fwd":
    return fwd
  # + read dy, x, B, C, dt again; write dx, dB, dC, ddt.
  return (
    fwd
    + b * l * (2 * h * p * isz + 2 * g * n * isz + h * 4)
    + b * l * (h * p * isz + 2 * g * n * isz + h * 4)
  )


# ------------------------------------------------------------------------------------- timing
def time_jax(fn, *args, target_s: float = 0.05, repeats: int = 7) -> float:
  import jax

  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  one = max(time.perf_counter() - t0, 1e-5)
  k = int(min(200, max(2, target_s / one)))
  samples = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(k):
      out = fn(*args)
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - t0) / k)
  return statistics.median(samples) * 1e6


def time_torch(fn, target_s: float = 0.05, repeats: int = 7) -> float:
  import torch

  fn()
  torch.cuda.synchronize()
  t0 = time.perf_counter()
  fn()
  torch.cuda.synchronize()
  one = max(time.perf_counter() - t0, 1e-5)
  k = int(min(200, max(2, target_s / one)))
  samples = []
  for _ in range(repeats):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(k):
      fn()
    end.record()
    torch.cuda.synchronize()
    samples.append(start.elapsed_time(end) / k * 1e3)
  return statistics.median(samples)


# ------------------------------------------------------------------------------------- peers
def load_mamba(wheel: str | None):
  """mamba_chunk_scan_combined from an installed mamba_ssm or a pure-Python wheel, or None."""
  if wheel:
    root = tempfile.mkdtemp(prefix="mamba_ssm_")
    with zipfile.ZipFile(wheel) as zf:
      zf.extractall(root)
    # The package __init__ imports CUDA extensions that this wheel does not have.
    with open(os.path.join(root, "mamba_ssm", "__init__.py"), "w") as f:
      f.write("")
    sys.path.insert(0, root)
  try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined
  except Exception as e:  # noqa: BLE001 - report and continue without the peer
    print(f"[ssd bench] mamba_ssm peer unavailable: {e!r}", file=sys.stderr)
    return None


def inputs_np(b, l, h, p, g, n, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.standard_normal(s, dtype=np.float32)
  return dict(
    x=r(b, l, h, p),
    dt=0.5 * r(b, l, h) - 1.0,
    A=-np.exp(rng.uniform(-1, 1, h)).astype(np.float32),
    B=0.5 * r(b, l, g, n),
    C=0.5 * r(b, l, g, n),
    D=r(h),
    dt_bias=0.1 * r(h),
    dy=r(b, l, h, p),
  )


def jax_fns(impl: str, tuning=None):
  """(fwd, fwd+bwd) jitted JAX callables for one implementation."""
  import jax

  # lazy: pulls in jax, which importing this module does not
  from kernels_pallas.ssd.common import CoreConfig, prepare_and_run

  # lazy: pulls in jax, which importing this module does not
  from kernels_pallas.ssd.gpu import ssd_scan_gpu

  # lazy: pulls in jax, which importing this module does not
  from kernels_pallas.ssd.reference import ssd_scan_reference

  if tuning is not None:
    # lazy: pulls in jax, which importing this module does not
    from kernels_pallas.ssd.gpu import ssd_core_gpu

    cfg = CoreConfig(chunk=CHUNK, tuning=tuning)
    scan = lambda x, dt, A, B, C, D, bias: prepare_and_run(
      ssd_core_gpu,
      cfg,
      x,
      dt,
      A,
      B,
      C,
      D=D,
      dt_bias=bias,
      dt_softplus=True,
      initial_state=None,
      return_final_state=False,
    )
  else:
    # The kernel by name (the bench times each one, whatever "auto" would pick).
    named = {"pallas_gpu": ssd_scan_gpu, "reference": ssd_scan_reference}[impl]
    scan = lambda x, dt, A, B, C, D, bias: named(x, dt, A, B, C, D=D, dt_bias=bias, chunk_size=CHUNK)

  fwd = jax.jit(scan)

  @jax.jit
  def fwdbwd(x, dt, A, B, C, D, bias, dy):
    _, pull = jax.vjp(scan, x, dt, A, B, C, D, bias)
    return pull(dy)

  return fwd, fwdbwd


def run(shapes, modes=("fwd", "fwdbwd"), mamba_wheel=None, tunings=(), check=True):
  import jax.numpy as jnp

  rows = []
  mamba = load_mamba(mamba_wheel)
  torch = None
  if mamba is not None:
    import torch
  impls = [("pallas_gpu", None)] + [(f"pallas_gpu{t}", t) for t in tunings] + [("reference", None)]
  fns = {
    name: jax_fns("pallas_gpu" if t is not None or name == "pallas_gpu" else name, t) for name, t in impls
  }
  for tag, b, l, h, p, g, n in shapes:
    shape = f"{tag} b{b} l{l} h{h} p{p} g{g} n{n}"
    a = inputs_np(b, l, h, p, g, n)
    bf = jnp.bfloat16
    jargs = (
      jnp.asarray(a["x"], bf),
      jnp.asarray(a["dt"]),
      jnp.asarray(a["A"]),
      jnp.asarray(a["B"], bf),
      jnp.asarray(a["C"], bf),
      jnp.asarray(a["D"]),
      jnp.asarray(a["dt_bias"]),
    )
    jdy = jnp.asarray(a["dy"], bf)
    times = {}
    if mamba is not None:
      dev = "cuda"
      T = lambda v, dt=None: torch.tensor(v, device=dev, dtype=dt or torch.float32)
      tx, tB, tC = (T(a[k], torch.bfloat16).requires_grad_() for k in ("x", "B", "C"))
      tdt, tA, tD, tbias = (T(a[k]).requires_grad_() for k in ("dt", "A", "D", "dt_bias"))
      tdy = T(a["dy"], torch.bfloat16)
      call = lambda: mamba(tx, tdt, tA, tB, tC, CHUNK, D=tD, dt_bias=tbias, dt_softplus=True)
      if check:
        y_m = call().detach().float().cpu().numpy()
      for mode in modes:
        if mode == "fwd":
          with torch.no_grad():
            times[("mamba_ssm", mode)] = time_torch(call)
        else:

          def fb():
            y = call()
            torch.autograd.grad(y, (tx, tdt, tA, tB, tC, tD, tbias), tdy)

          times[("mamba_ssm", mode)] = time_torch(fb)
      del tx, tB, tC, tdt, tA, tD, tbias, tdy
      torch.cuda.empty_cache()
    for name, _ in impls:
      fwd, fwdbwd = fns[name]
      if check and mamba is not None:
        y = np.asarray(fwd(*jargs).astype(jnp.float32))
        err = float(np.linalg.norm(y - y_m) / np.linalg.norm(y_m))
        print(f"[ssd bench] {shape} {name}: rel diff to mamba_ssm fwd = {err:.2e}", file=sys.stderr)
      for mode in modes:
        try:
          if mode == "fwd":
            times[(name, mode)] = time_jax(fwd, *jargs)
          else:
            times[(name, mode)] = time_jax(fwdbwd, *jargs, jdy)
        except Exception as e:  # noqa: BLE001 - e.g. the reference out of memory
          print(f"[ssd bench] {shape} {name} {mode} failed: {e!r}"[:500], file=sys.stderr)
    if check and "fwdbwd" in modes:
      # Gradients of the kernel against the reference's autodiff on the same inputs.
      got = fns["pallas_gpu"][1](*jargs, jdy)
      want = fns["reference"][1](*jargs, jdy)
      errs = {
        k: float(
          jnp.linalg.norm((g.astype(jnp.float32) - w.astype(jnp.float32)).ravel())
          / jnp.linalg.norm(w.astype(jnp.float32).ravel())
        )
        for k, g, w in zip(("x", "dt", "A", "B", "C", "D", "dt_bias"), got, want)
      }
      print(
        f"[ssd bench] {shape} pallas_gpu grad rel err vs reference: "
        + " ".join(f"{k}={v:.1e}" for k, v in errs.items()),
        file=sys.stderr,
      )
      del got, want
    for mode in modes:
      peer = times.get(("mamba_ssm", mode))
      for name in ["mamba_ssm"] + [nm for nm, _ in impls]:
        t = times.get((name, mode))
        if t is None:
          continue
        gbps = min_bytes(b, l, h, p, g, n, mode) / (t * 1e-6) / 1e9
        rows.append(
          dict(
            shape=shape,
            mode="fwd" if mode == "fwd" else "fwd+bwd",
            impl=name,
            time_us=t,
            gbps=gbps,
            vs_peer=(peer / t) if peer else None,
          )
        )
    print(format_rows(rows[-len(modes) * (len(impls) + 1) :]), file=sys.stderr)
  return rows


def format_rows(rows) -> str:
  out = [
    "| shape | mode | impl | time (us) | GB/s (min bytes) | vs mamba_ssm |",
    "|---|---|---|---:|---:|---:|",
  ]
  for r in rows:
    ratio = "-" if r["vs_peer"] is None else f"{r['vs_peer']:.2f}x"
    out.append(
      f"| {r['shape']} | {r['mode']} | {r['impl']} | {r['time_us']:.0f} | {r['gbps']:.0f} | {ratio} |"
    )
  return "\n".join(out)


def environment() -> str:
  import jax

  parts = [f"jax {jax.__version__}"]
  try:
    import jaxlib

    parts.append(f"jaxlib {jaxlib.__version__}")
  except Exception:  # noqa: BLE001
    pass
  for mod in ("torch", "triton"):
    try:
      parts.append(f"{mod} {__import__(mod).__version__}")
    except Exception:  # noqa: BLE001
      pass
  dev = jax.devices()[0]
  return (
    f"device: {getattr(dev, 'device_kind', dev.platform)}; "
    + ", ".join(parts)
    + f"; python {platform.python_version()}; {datetime.date.today().isoformat()}"
  )


def add_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--shapes", default="zebra", help='"zebra", "quick" or "b,l,h,p,g,n;..."')
  p.add_argument("--modes", default="fwd,fwdbwd")
  p.add_argument("--mamba-wheel", default=None, help="mamba_ssm pure-Python wheel (peer)")
  p.add_argument("--tuning", default="", help='extra GPU tunings "T,warps,stages,blk;..."')
  p.add_argument("--no-check", action="store_true", help="skip the agreement check vs the peer")


def main(argv=None) -> str:
  """Runs the family; returns the markdown section (also printed)."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_args(p)
  args = p.parse_args(argv)
  tunings = tuple(tuple(int(v) for v in t.split(",")) for t in args.tuning.split(";") if t)
  rows = run(
    parse_shapes(args.shapes),
    tuple(args.modes.split(",")),
    args.mamba_wheel,
    tunings,
    check=not args.no_check,
  )
  section = (
    f"### SSD chunked scan (chunk {CHUNK}, bf16 x/B/C, fp32 dt/A/D)\n\n"
    f"{environment()}\n\n{format_rows(rows)}\n"
  )
  print(section)
  return section


if __name__ == "__main__":
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  main()
