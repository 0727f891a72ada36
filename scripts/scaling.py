r"""Multi-device scaling of one training stage: tokens/s, MFU and loss on 1, 2, 4, ... local devices.

    python scripts/scaling.py --config configs/smollm2_135m.py --devices 1,2 --stage ild_mla \
        --steps 30
    python scripts/scaling.py --config configs/smollm2_135m.py --devices 1,2,4,8 --stage kd \
        --steps 40 --mesh 1,-1,1 --append docs/benchmarks.md --config.samples.num_samples=512
    python scripts/scaling.py --config configs/tiny.py --devices 1,2 --stage ild_mla --steps 6 \
        --platform cpu            # CPU smoke run on simulated devices

How: the stages before --stage in the config's `stages` (teacher, samples, ...) run ONCE, on the
largest device count, in <workdir>/prep. Then for each N a fresh <workdir>/n<N> links those
artifacts and `scripts/distill.py` runs the stage alone for --steps steps in a subprocess that sees
N devices: on GPUs CUDA_VISIBLE_DEVICES=0..N-1, on the CPU N simulated devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N). Each run starts from the same weights and
reads the same batches, so its loss is comparable with the 1-device run's.

Read from the stage's metrics.jsonl (zebra_jax/train/metrics.py, one row per --log-every steps):
tokens/s and MFU are the mean over every logged interval but the first (which includes
compilation); MFU is the trainer's: model FLOPs per token (student fwd+bwd + teacher fwd, from
`accounting`) x tokens/s / (N x the device's dense bf16 peak), absent on CPUs. Scaling efficiency =
tokens/s(N) / (N / N0 x tokens/s(N0)), N0 the smallest count (normally 1). The loss column is the
stage's last logged loss and its relative difference from the N0 run's.

--mesh data,fsdp,tensor is the mesh template (default -1,1,1: all devices data-parallel); one size
may be -1 (the rest of the N devices; write `--mesh=-1,1,2`, argparse reads a leading -1 as an
option). Any --config.x.y=v override is passed to every distill.py run
(e.g. a smaller batch or fewer teacher samples for the prep). --dry-run prints the commands only.
Writes <workdir>/scaling.json and prints a markdown table; --append FILE appends it as a section.
Platforms: gpu (CUDA) and cpu; a TPU slice cannot be split by environment variable.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform as _platform
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
  import zebra_jax  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a source checkout without installation
  sys.path.insert(0, ROOT)

from zebra_jax.cli import ScriptError, argument_parser, script_errors  # noqa: E402  (imports nothing heavy)
from zebra_jax._paths import check_output  # noqa: E402

DISTILL = os.path.join(ROOT, "scripts", "distill.py")
TRAINING = {"ild_mla": "ild", "ild_mamba": "ild", "kd": "kd", "dpo": "dpo", "stepwise": "stepwise"}


# -- config and plan -------------------------------------------------------------------------------
def load_config(spec: str):
  """`path/to/config.py[:arg]` -> get_config([arg]) (the ml_collections config_file convention)."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ScriptError(f"--config {spec!r}: {path} does not exist")
  sys.path.insert(0, ROOT)
  mod_spec = importlib.util.spec_from_file_location("_scaling_config", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def parse_devices(text: str) -> list[int]:
  try:
    counts = sorted({int(x) for x in text.split(",") if x.strip()})
  except ValueError:
    counts = []
  if not counts or counts[0] < 1:
    raise ScriptError(f"--devices {text!r}: expected a list of positive counts such as 1,2,4")
  return counts


def resolve_mesh(template: tuple[int, int, int], n: int) -> tuple[int, int, int]:
  """The template's sizes for n devices (-1 takes the rest); an error when they cannot multiply
  to n."""
  known = 1
  for s in template:
    if s != -1:
      known *= s
  sizes = list(template)
  if -1 in sizes:
    if n % known:
      raise ScriptError(f"--mesh {','.join(map(str, template))}: {n} devices are not a multiple of {known}")
    sizes[sizes.index(-1)] = n // known
  if sizes[0] * sizes[1] * sizes[2] != n:
    raise ScriptError(
      f"--mesh {','.join(map(str, template))} needs {known} devices, not {n}: use -1 for one axis"
    )
  return tuple(sizes)


def prerequisites(stages, stage: str) -> list[str]:
  stages = list(stages)
  if stage not in stages:
    raise ScriptError(f"--stage {stage!r} is not in the config's stages {stages}")
  if stage not in TRAINING:
    raise ScriptError(f"--stage {stage!r} is not a training stage ({sorted(TRAINING)})")
  return stages[: stages.index(stage)]


def stages_flag(stages) -> str:
  items = ", ".join(f'"{s}"' for s in stages)
  return f"--config.stages=({items}{',' if len(stages) == 1 else ''})"


def device_env(platform: str, n: int) -> dict:
  """Environment variables that make a process see n local devices."""
  if platform == "gpu":
    # the first n of the GPUs this process may use; NVLink multicast stays off in NCCL (it can take
    # a shared host's GPUs down)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(n)]
    if len(ids) < n:
      raise ScriptError(f"CUDA_VISIBLE_DEVICES={visible} lists fewer than {n} GPUs")
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids[:n]), "NCCL_NVLS_ENABLE": "0"}
  flags = [
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  return {
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={n}"]),
  }


def probe(platform: str, n: int) -> dict:
  """Backend, device count and kind and versions, from a subprocess (this process never
  initialises a backend: on a GPU host it would hold memory the runs need)."""
  code = (
    "import json, jax, flax; d = jax.devices(); print(json.dumps({'backend': "
    "jax.default_backend(), 'count': len(d), 'kind': d[0].device_kind, 'jax': "
    "jax.__version__, 'flax': flax.__version__}))"
  )
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  if platform != "auto":
    env.update(device_env(platform, n))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
  if r.returncode != 0:
    raise SystemExit(f"cannot start jax ({platform}): {r.stderr[-2000:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


# -- metrics ---------------------------------------------------------------------------------------
def steady(rows: list[dict], key: str) -> float | None:
  """Mean of `key` over the logged intervals after the first (the first holds compilation); the
  only row when there is one."""
  vals = [r[key] for r in rows if key in r]
  if not vals:
    return None
  vals = vals[1:] if len(vals) > 1 else vals
  return sum(vals) / len(vals)


def summarize(results: dict[int, dict]) -> list[dict]:
  """Rows of the table from {devices: {"rows": metrics rows, "mesh": (d, f, t)}}."""
  counts = sorted(results)
  base_n = counts[0]
  out = []
  for n in counts:
    rows = results[n]["rows"]
    out.append(
      {
        "devices": n,
        "mesh": list(results[n]["mesh"]),
        "tokens_per_s": steady(rows, "tokens_per_s"),
        "mfu": steady(rows, "mfu"),
        "final_loss": rows[-1]["loss"] if rows else None,
        "steps": rows[-1]["step"] if rows else 0,
      }
    )
  base = out[0]
  for r in out:
    tok, tok0 = r["tokens_per_s"], base["tokens_per_s"]
    r["efficiency"] = (tok / (r["devices"] / base_n * tok0)) if tok and tok0 else None
    l, l0 = r["final_loss"], base["final_loss"]
    r["loss_rel_diff"] = (l - l0) / abs(l0) if l is not None and l0 else None
  return out


def table(summary: list[dict]) -> str:
  n0 = summary[0]["devices"]
  fmt = lambda v, f: "-" if v is None else format(v, f)
  lines = [
    "| devices | mesh (data x fsdp x tensor) | tokens/s | MFU | scaling efficiency "
    f"vs {n0} | final loss | loss vs {n0} device{'s' if n0 > 1 else ''} |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in summary:
    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    eff = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%"
    lines.append(
      f"| {r['devices']} | {'x'.join(map(str, r['mesh']))} | "
      f"{fmt(r['tokens_per_s'], ',.0f')} | {mfu} | {eff} | "
      f"{fmt(r['final_loss'], '.6g')} | {fmt(r['loss_rel_diff'], '+.1e')} |"
    )
  return "\n".join(lines)


# -- runs ------------------------------------------------------------------------------------------
def _run(cmd: list[str], env_extra: dict, log_path: str, dry: bool) -> None:
  shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_extra.items()) + " " + shlex.join(cmd)
  print(f"$ {shown}", flush=True)
  if dry:
    return
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  env = dict(os.environ, **env_extra)
  env.setdefault("PYTHONPATH", ROOT)
  with open(log_path, "w") as log:
    r = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  if r.returncode != 0:
    with open(log_path) as f:
      tail = f.read()[-4000:]
    raise SystemExit(f"run failed (exit {r.returncode}), log {log_path}:\n{tail}")


def _link_prep(prep: str, workdir: str, stages) -> None:
  """workdir/<stage> -> prep/<stage> for every prerequisite stage (their artifacts are inputs)."""
  os.makedirs(workdir, exist_ok=True)
  for s in stages:
    src = os.path.join(prep, s)
    if not os.path.exists(src):
      raise SystemExit(f"prerequisite stage {s!r} left nothing in {src}")
    os.symlink(os.path.abspath(src), os.path.join(workdir, s))


@script_errors()
def main(argv=None) -> int:
  p = argument_parser(__doc__)
  p.add_argument("--config", required=True, help="config file[:arg], as for scripts/distill.py")
  p.add_argument("--stage", required=True, help="the training stage to measure, e.g. ild_mla")
  p.add_argument("--devices", default="1,2", help="device counts, e.g. 1,2,4,8")
  p.add_argument("--steps", type=int, default=30, help="steps of the measured stage per run")
  p.add_argument(
    "--log-every",
    type=int,
    default=None,
    help="metric rows every this many steps (default steps/6, at least 1)",
  )
  p.add_argument(
    "--mesh",
    default="-1,1,1",
    help="data,fsdp,tensor template, one size may be -1 (then write --mesh=-1,1,2)",
  )
  p.add_argument(
    "--platform",
    default="auto",
    choices=("auto", "gpu", "cpu"),
    help="where to run (auto: the GPUs when present)",
  )
  p.add_argument("--workdir", default=None, help="default workdir/scaling_<name>_<stage>")
  p.add_argument("--append", default=None, metavar="FILE", help="append the table as a section")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args, passthrough = p.parse_known_args(argv)
  bad = [a for a in passthrough if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognised arguments: {bad} (only --config.x.y=v overrides are passed through)")
  if any(a.startswith("--config.stages") for a in passthrough):
    p.error(
      "--config.stages cannot be overridden here: --stage picks the stage, the config's "
      "stages before it are the prerequisites"
    )

  counts = parse_devices(args.devices)
  if args.steps < 2:
    p.error("--steps must be >= 2 (the first logged interval includes compilation)")
  cfg = load_config(args.config)  # also puts the checkout on sys.path
  from zebra_jax.parallel.sharding import parse_mesh  # lazy: --help runs without jax, flax, optax

  try:
    template = parse_mesh(args.mesh)
  except ValueError as e:
    p.error(str(e))
  meshes = {n: resolve_mesh(template, n) for n in counts}
  prereq = prerequisites(cfg.stages, args.stage)
  section = TRAINING[args.stage]
  log_every = args.log_every or max(1, args.steps // 6)
  workdir = os.path.abspath(args.workdir or os.path.join("workdir", f"scaling_{cfg.name}_{args.stage}"))

  platform, info = args.platform, None
  if not args.dry_run:
    info = probe(platform, max(counts))
    if platform == "auto":
      platform = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}.get(info["backend"])
      if platform is None:
        raise ScriptError(
          f"backend {info['backend']!r}: scaling.py splits GPU hosts and the CPU "
          "only (a TPU slice cannot be split by environment variable)"
        )
      if platform == "cpu":
        info = probe("cpu", max(counts))
    if info["count"] < max(counts):
      raise ScriptError(f"{max(counts)} devices requested, {info['count']} {info['kind']} visible")
    print(f"[scaling] {platform}: {info['count']} x {info['kind']}, jax {info['jax']}", flush=True)
  elif platform == "auto":
    platform = "gpu"  # what the printed commands assume
  if os.path.exists(workdir) and not args.dry_run:
    # every run starts fresh (resumed runs would skew tokens/s), but only over an earlier
    # scaling workdir: a directory holding anything else is refused, not emptied
    check_output(
      workdir,
      overwrite=True,
      owned=("prep", "prep.log", "n[0-9]*", "scaling.json"),
      out_flag="--workdir",
      overwrite_flag="a fresh run",
    )
    shutil.rmtree(workdir)

  path, colon, arg = args.config.partition(":")  # the runs' cwd is the repository root
  base = [
    sys.executable,
    DISTILL,
    "--config",
    os.path.abspath(path) + colon + arg,
    "--no_progress",
    *passthrough,
  ]
  prep = os.path.join(workdir, "prep")
  if prereq:
    d, f, t = meshes[max(counts)]
    _run(
      base
      + [
        "--workdir",
        prep,
        stages_flag(prereq),
        f"--config.mesh.data={d}",
        f"--config.mesh.fsdp={f}",
        f"--config.mesh.tensor={t}",
      ],
      device_env(platform, max(counts)),
      os.path.join(workdir, "prep.log"),
      args.dry_run,
    )
  results = {}
  for n in counts:
    run_dir = os.path.join(workdir, f"n{n}")
    if not args.dry_run:
      _link_prep(prep, run_dir, prereq)
    d, f, t = meshes[n]
    _run(
      base
      + [
        "--workdir",
        run_dir,
        stages_flag(prereq + [args.stage]),
        f"--config.{section}.steps={args.steps}",
        f"--config.train.log_every={log_every}",
        f"--config.train.checkpoint_every={args.steps}",
        f"--config.mesh.data={d}",
        f"--config.mesh.fsdp={f}",
        f"--config.mesh.tensor={t}",
      ],
      device_env(platform, n),
      os.path.join(workdir, f"n{n}.log"),
      args.dry_run,
    )
    if not args.dry_run:
      # lazy: --help runs without jax, numpy
      from zebra_jax.train.metrics import read_metrics  # no backend is initialised by this

      rows = read_metrics(os.path.join(run_dir, args.stage))
      if not rows:
        raise SystemExit(f"{run_dir}/{args.stage}/metrics.jsonl has no rows")
      results[n] = {"rows": rows, "mesh": meshes[n]}
  if args.dry_run:
    return 0

  summary = summarize(results)
  text = table(summary)
  print(text)
  cmd = "python scripts/scaling.py " + shlex.join(argv if argv is not None else sys.argv[1:])
  record = {
    "config": args.config,
    "stage": args.stage,
    "steps": args.steps,
    "log_every": log_every,
    "platform": platform,
    "device": info,
    "command": cmd,
    "date": datetime.date.today().isoformat(),
    "host": _platform.node(),
    "summary": summary,
    "overrides": passthrough,
  }
  with open(os.path.join(workdir, "scaling.json"), "w") as f:
    json.dump(record, f, indent=2)
  if args.append:
    with open(args.append, "a") as f:
      counts_text = ", ".join(map(str, counts))
      f.write(
        f"\n### {cfg.name}: {args.stage}, {args.steps} steps on {counts_text} x "
        f"{info['kind']} ({record['date']})\n\n"
        f"jax {info['jax']}, flax {info['flax']}; tokens/s and MFU: mean over the logged "
        f"intervals after the first ({log_every} steps each; the first includes "
        f"compilation). Command:\n\n    {cmd}\n\n{text}\n"
      )
    print(f"[scaling] appended to {args.append}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
