"""Chains the stages of a run, skipping those whose artifact already exists, and prints a summary.

Multi-process (jax.distributed): every process runs every stage (the collectives of training, model
saves and loads are shared); process 0 alone writes config.json and summary.json, and the processes
meet at a barrier after each stage, so none checks or reads an artifact another is still writing.

summary.json is rewritten after every stage and merged with the previous run's: a stage skipped now
keeps the seconds it took when it ran (`stage_time_s`), `wall_time_s` is the sum over all runs;
`disk_bytes` is what each stage's directory holds now (and `disk_bytes_total` the workdir).

A stage is finished when its artifact (saved model or JSON) exists; its optimizer-state checkpoints
(<stage>/checkpoints, 3x the trainable parameters in float32 per kept step) are then deleted unless
train.keep_checkpoints, also those left by a run stopped between the save and the deletion.

One run per workdir at a time, and a rerun with settings other than config.json's under stages that
already hold state is refused unless `accept_config_changes` (distill/workdir.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax

from zebra_jax._io import write_json
from zebra_jax import accounting
from zebra_jax.distill import stages
from zebra_jax.distill.config import RunConfigError, validate
from zebra_jax.distill.context import RunContext, same_teacher, teacher_config
from zebra_jax.distill.workdir import WorkdirBusy, WorkdirLock, check_settings, check_workdir
from zebra_jax import presets
from zebra_jax.config import ConfigError, LlamaConfig
from zebra_jax.data import specs
from zebra_jax.data.pipeline import mix_indices, part_indices, splits_parts
from zebra_jax.distill import select as select_lib
from zebra_jax.distill.pairs import PAIRS_TOKEN
from zebra_jax.distill.preferences import check_pairs_file
from zebra_jax.train.metrics import read_metrics
from zebra_jax.train.trainer import Preempted

TRAINING_STAGES = ("ild_mla", "ild_mamba", "kd", "dpo", "stepwise")


def preflight(ctx: RunContext) -> None:
  """Checks that need the teachers' shapes and the mesh, run before the first stage so that a bad
  config fails before anything is loaded or compiled. Reads configs only (no weights). Raises
  RunConfigError naming the field."""

  cfg, mesh = ctx.cfg, ctx.mesh
  try:
    teacher = ctx.teacher_config()
  except (ValueError, OSError) as e:
    raise RunConfigError(f"teacher.path: {e}") from None
  L = teacher.num_hidden_layers

  def student(field: str, **layers):
    try:
      return ctx.student_config(base=teacher, **layers)
    except ConfigError as e:
      raise RunConfigError(f"{field}: {e}") from None

  stages_ = list(cfg.stages)
  m = cfg.model
  if "ild_mla" in stages_:
    student("model (the pure-MLA ILD student)", mla_layers=tuple(range(L)), attn_layers=())
  if "ild_mamba" in stages_:
    student("model (the pure-Mamba2 ILD student)", mla_layers=(), attn_layers=())
  final = None
  if "assemble" in stages_:
    if "select" in stages_ and cfg.select.method != "explicit":
      try:
        layers = select_lib.uniform_placement(L, m.n_mla)  # any valid layout: checks the budget
      except ValueError as e:
        raise RunConfigError(f"model.n_mla: {e}") from None
    else:
      layers = tuple(m.mla_layers)
    final = student(
      "model.mla_layers / model.attn_layers", mla_layers=layers, attn_layers=tuple(m.attn_layers)
    )
  if "stepwise" in stages_:
    for phase, attn in enumerate(cfg.stepwise.schedule):
      final = student(f"stepwise.schedule[{phase}]", mla_layers=(), attn_layers=tuple(attn))
  if "kd" in stages_ and not same_teacher(cfg):
    try:
      kd = teacher_config(cfg.kd_teacher, "kd_teacher")
    except (ValueError, OSError) as e:
      preset = cfg.kd_teacher.get("preset", None)
      if not preset:  # the kd stage could not load it either: say so before hours of ILD
        raise RunConfigError(f"kd_teacher.path: {e}") from None
      kd = presets.get_preset(preset)  # the weights may arrive before the kd stage starts
      ctx.log(f"[preflight] {e}; checked the kd stage against kd_teacher.preset={preset!r}")
    vocab = (final or teacher).vocab_size
    if kd.vocab_size != vocab:
      raise RunConfigError(
        f"kd_teacher: vocab_size={kd.vocab_size} differs from the student's "
        f"{vocab} (teacher.path's vocabulary); KD compares logits token for "
        "token"
      )
  if "dpo" in stages_ and not (cfg.data.dpo_path == PAIRS_TOKEN and "pairs" in stages_):
    # (the pairs stage's artifact is checked when the dpo stage reads it)
    if not os.path.isfile(cfg.data.dpo_path):
      raise RunConfigError(f"data.dpo_path={cfg.data.dpo_path!r} does not exist or is not a file")
    try:
      check_pairs_file(cfg.data.dpo_path, cfg.dpo.batch_size)
    except ValueError as e:
      raise RunConfigError(f"data.dpo_path: {e}") from None
  _check_data_split(ctx)
  shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
  for stage in TRAINING_STAGES:
    if stage not in stages_:
      continue
    name = "ild" if stage.startswith("ild") else stage
    s = cfg[name]
    micro = s.batch_size // s.grad_accum
    if micro % shards:
      raise RunConfigError(
        f"{name}.batch_size={s.batch_size} / {name}.grad_accum={s.grad_accum} = micro-batch "
        f"{micro} is not divisible by the mesh's data x fsdp = {mesh.shape.get('data', 1)} x "
        f"{mesh.shape.get('fsdp', 1)} = {shards} (mesh.data, mesh.fsdp)"
      )
    if s.batch_size % jax.process_count():
      raise RunConfigError(
        f"{name}.batch_size={s.batch_size} is not divisible by the {jax.process_count()} processes"
      )
    if stage != "dpo" and s.batch_size % _num_shards(cfg):
      raise RunConfigError(
        f"{name}.batch_size={s.batch_size} is not divisible by the "
        f"{_num_shards(cfg)} data shards (data.num_shards)"
      )


def _num_shards(cfg) -> int:
  return int(cfg.data.get("num_shards", 0) or 0) or jax.process_count()


def _check_data_split(ctx: RunContext) -> None:
  """data.num_shards fits the process count; data.ild_fraction is a fraction and leaves both the
  ILD and the KD part non-empty (checked on the corpus when it exists already, so that an empty KD
  part fails now rather than after the ILD stages)."""

  d = ctx.cfg.data
  shards = d.get("num_shards", 0) or 0
  if not isinstance(shards, int) or shards < 0 or shards % jax.process_count():
    raise RunConfigError(
      f"data.num_shards={shards!r} must be 0 (one per process) or a positive "
      f"multiple of the {jax.process_count()} processes"
    )
  try:
    split = splits_parts(float(d.ild_fraction))
  except (TypeError, ValueError):
    raise RunConfigError(
      f"data.ild_fraction={d.ild_fraction!r} must be in [0, 1] (0 or 1: no "
      "ILD / KD split, both read all train data)"
    ) from None
  if not split or not {"ild_mla", "ild_mamba", "kd", "stepwise"} & set(ctx.cfg.stages):
    return
  try:
    source = ctx.data_source()
  except FileNotFoundError:  # generated by an earlier stage (teacher samples): checked when read
    return
  try:
    src = specs.open_source(source)
    if hasattr(src, "mix_fingerprint"):  # a weighted mix: split per source (pipeline.mix_indices)
      mix_indices(
        src.lengths, src.weights, "train", "ild", d.heldout_fraction, d.ild_fraction, names=src.names
      )
    else:
      part_indices(len(src), "ild", d.heldout_fraction, d.ild_fraction)
  except ValueError as e:
    raise RunConfigError(str(e) if "ild_fraction" in str(e) else f"data: {e}") from None


def _sync(tag: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"zebra_jax.pipeline: {tag}")


def _write_json(path: str, obj) -> None:
  """Atomic write from process 0 only (every process holds the same object)."""
  if jax.process_index() == 0:
    write_json(path, obj)


def _previous_summary(ctx: RunContext) -> dict:
  path = os.path.join(ctx.workdir, "summary.json")
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      prev = json.load(f)
    return prev if isinstance(prev, dict) else {}
  except (OSError, ValueError) as e:
    ctx.log(
      f"[summary] ignoring the unreadable {path} ({type(e).__name__}: {e}); earlier runs' "
      "stage timings are lost"
    )
    return {}


def run_pipeline(cfg, workdir: str, *, progress: bool = True, mesh=None) -> dict:
  validate(cfg)
  check_workdir(workdir)
  ctx = RunContext(cfg, workdir, progress=progress, mesh=mesh)
  preflight(ctx)
  if jax.process_index() == 0:
    os.makedirs(ctx.workdir, exist_ok=True)
  # one run per workdir: process 0 holds the lock for all of a multi-process run, and tells the
  # others whether it got it (so that they stop too rather than wait at the first barrier)
  lock = WorkdirLock(ctx.workdir, log=ctx.log, enabled=jax.process_index() == 0)
  busy = None
  try:
    lock.acquire()
  except WorkdirBusy as e:
    busy = e
  if not _all_agree(busy is None):
    raise busy or WorkdirBusy(
      f"{ctx.workdir}: process 0 could not take the workdir lock (its message says whose it is)"
    )
  try:
    if hasattr(cfg, "to_json"):
      # every process reads config.json before process 0 rewrites it, so all refuse together
      check_settings(
        ctx.workdir,
        cfg.to_json(),
        list(cfg.stages),
        bool(cfg.get("accept_config_changes", False)),
        log=ctx.log,
        keep_old=jax.process_index() == 0,
      )
      _sync("settings checked")
      _write_json(os.path.join(ctx.workdir, "config.json"), cfg.to_json(indent=2))
    return _run_stages(ctx, cfg)
  finally:
    lock.release()


def _all_agree(ok: bool) -> bool:
  """Process 0's `ok`, on every process (itself in a single-process run)."""
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _sigterm_outside_training(current: dict):
  """A SIGTERM handler for the whole run: outside a stage's training loop (loading, compiling,
  sampling, selection) it stops the run as a preemption (exit 143 from the scripts) with a message.
  The training loop installs its own handler, which saves the step first, and restores this one."""

  def handler(*_):
    raise Preempted(
      f"SIGTERM while {current['where']}: stopped before anything of it was saved; "
      "rerun the same command to continue (finished stages are kept)"
    )

  return handler


def _run_stages(ctx: RunContext, cfg) -> dict:
  import signal
  import threading

  current = {"where": "starting the run"}
  old = None
  if threading.current_thread() is threading.main_thread():
    old = signal.signal(signal.SIGTERM, _sigterm_outside_training(current))
  try:
    return _run_stage_loop(ctx, cfg, current)
  finally:
    if old is not None:
      signal.signal(signal.SIGTERM, old)


def _run_stage_loop(ctx: RunContext, cfg, current: dict) -> dict:
  prev = _previous_summary(ctx)
  _sync("start")  # the workdir exists and every process has read the previous summary
  t0 = time.time()
  ran, skipped = [], []
  phase_s = dict((prev or {}).get("stage_phases_s") or {})
  summary_path = os.path.join(ctx.workdir, "summary.json")
  for stage in cfg.stages:
    if os.path.exists(stages.artifact(ctx, stage)):
      skipped.append(stage)
      ctx.log(f"[{stage}] artifact exists, skipping")
      drop_checkpoints(ctx, stage)
      continue
    ctx.log(f"[{stage}] starting")
    current["where"] = f"in stage {stage!r} (outside its training steps)"
    ts = time.time()
    ctx.phase_s = {}
    stages.RUNNERS[stage](ctx)
    took = time.time() - ts
    ran.append((stage, round(took, 1)))
    phases = stage_phases(ctx.phase_s, took)
    if phases:
      phase_s[stage] = phases
    ctx.log(f"[{stage}] done in {took:.1f}s{describe_phases(phases)}")
    _sync(f"{stage} done")
    drop_checkpoints(ctx, stage)
    # After every stage, so that a run stopped later keeps the timings of the stages it finished.
    _write_json(summary_path, _summary(ctx, cfg, ran, skipped, time.time() - t0, prev, phase_s))
  summary = _summary(ctx, cfg, ran, skipped, time.time() - t0, prev, phase_s)
  ctx.log(json.dumps(summary, indent=2))
  _write_json(summary_path, summary)
  _sync("summary written")
  return summary


def stage_dirs(ctx, stage: str) -> list[str]:
  """The directories a stage writes: <stage>/, and stepwise_<phase>/ for stepwise."""
  dirs = [os.path.join(ctx.workdir, stage)]
  if stage == "stepwise":
    dirs += [os.path.join(ctx.workdir, f"stepwise_{i}") for i in range(len(ctx.cfg.stepwise.schedule))]
  return [d for d in dirs if os.path.isdir(d)]


def drop_checkpoints(ctx, stage: str) -> None:
  """Deletes a finished stage's optimizer-state checkpoints (its saved model is what a rerun
  skips on) unless train.keep_checkpoints. Process 0 deletes after every process has finished the
  stage (the pipeline's barrier)."""
  if ctx.cfg.train.get("keep_checkpoints", False) or jax.process_index() != 0:
    return
  for d in stage_dirs(ctx, stage):
    ck = os.path.join(d, "checkpoints")
    if os.path.isdir(ck):
      freed = dir_bytes(ck)
      shutil.rmtree(ck, ignore_errors=True)
      ctx.log(
        f"[{stage}] deleted the optimizer-state checkpoints in {ck} ({freed / 1e6:,.0f} MB; "
        "train.keep_checkpoints=True keeps them)"
      )


def dir_bytes(path: str) -> int:
  """Bytes of the regular files under `path` (symlinks inside are not followed)."""
  total = 0
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      if not os.path.islink(p):
        try:
          total += os.path.getsize(p)
        except OSError:  # removed meanwhile
          pass
  return total


def _final_model_stage(ctx, cfg):
  for stage in ("dpo", "kd", "stepwise", "assemble"):
    if stage in cfg.stages and os.path.exists(stages.artifact(ctx, stage)):
      return stage
  return None


def _stage_times(cfg, ran, prev: dict) -> dict:
  """{stage: seconds} over every run: this run's time for the stages it ran, the earlier runs' for
  the others (a stage whose artifact was deleted and that ran again gets its new time)."""
  times = dict(prev.get("stage_time_s") or {})
  if not times:  # a summary written before stage_time_s existed: its stages_run still has them
    times = {s: t for s, t in prev.get("stages_run") or []}
  times.update(dict(ran))
  return {s: times[s] for s in cfg.stages if s in times}


def stage_phases(phase_s: dict, total_s: float) -> dict:
  """A stage's phases rounded, with "setup" = what the named phases leave of its wall time
  (loading and building models, placement); {} for a stage that names none."""
  if not phase_s:
    return {}
  out = {"setup": max(0.0, total_s - sum(phase_s.values()))} | dict(phase_s)
  return {k: round(v, 1) for k, v in out.items()}


def describe_phases(phases: dict) -> str:
  return " (" + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + ")" if phases else ""


def _summary(ctx, cfg, ran, skipped, seconds, prev: dict | None = None, phase_s: dict | None = None):
  prev = prev or {}
  out = {
    "name": cfg.name,
    "workdir": ctx.workdir,
    "stages_run": [list(r) for r in ran],
    "stages_skipped": skipped,
    "stage_time_s": _stage_times(cfg, ran, prev),
    "stage_phases_s": phase_s or {},
    "wall_time_s": round(float(prev.get("wall_time_s") or 0.0) + seconds, 1),
    "runs": int(prev.get("runs") or (1 if prev else 0)) + 1,
    "processes": jax.process_count(),
  }
  final = _final_model_stage(ctx, cfg)
  if final:
    with open(os.path.join(stages.artifact(ctx, final), "config.json")) as f:
      config = LlamaConfig.from_json(f.read())
    out.update(
      final_model=stages.artifact(ctx, final),
      mla_layers=list(getattr(config, "mla_layers", ())),
      layer_types="".join({"mla": "M", "mamba2": "s", "attention": "A"}[t] for t in config.layer_types()),
      kv_cache_fraction=accounting.kv_cache_fraction(config),
      params=accounting.param_count(config),
    )
  tokens = {}
  for name in os.listdir(ctx.workdir):
    rows = read_metrics(os.path.join(ctx.workdir, name))
    if rows:
      stage_cfg = cfg.get(name.split("_")[0] if name.startswith(("ild", "stepwise")) else name)
      if stage_cfg is not None and "batch_size" in stage_cfg:
        # DPO reads a chosen and a rejected row of max_len per pair; the others seq_len rows.
        row_tokens = 2 * cfg.dpo.max_len if name == "dpo" else cfg.data.seq_len
        tokens[name] = {
          "steps": rows[-1]["step"],
          "last_loss": rows[-1].get("loss"),
          "tokens_seen": rows[-1]["step"] * stage_cfg.batch_size * row_tokens,
        }
  out["training"] = tokens
  out["tokens_seen"] = sum(t["tokens_seen"] for t in tokens.values())
  # What each stage's directories hold now (a stage linked in from elsewhere counts where it is).
  out["disk_bytes"] = {
    s: sum(dir_bytes(d) for d in stage_dirs(ctx, s)) for s in cfg.stages if stage_dirs(ctx, s)
  }
  out["disk_bytes_total"] = dir_bytes(ctx.workdir)
  return out
