"""Chains the stages of a run, skipping those whose artifact already exists, and prints a summary."""

from __future__ import annotations

import json
import os
import time

from zebra_jax import accounting
from zebra_jax.distill import stages
from zebra_jax.distill.config import validate
from zebra_jax.distill.context import RunContext


def run_pipeline(cfg, workdir: str, *, progress: bool = True, mesh=None) -> dict:
  validate(cfg)
  ctx = RunContext(cfg, workdir, progress=progress, mesh=mesh)
  os.makedirs(ctx.workdir, exist_ok=True)
  if ctx.cfg is not None and hasattr(cfg, "to_json"):
    with open(os.path.join(ctx.workdir, "config.json"), "w") as f:
      f.write(cfg.to_json(indent=2))
  t0 = time.time()
  ran, skipped = [], []
  for stage in cfg.stages:
    if os.path.exists(stages.artifact(ctx, stage)):
      skipped.append(stage)
      ctx.log(f"[{stage}] artifact exists, skipping")
      continue
    ctx.log(f"[{stage}] starting")
    ts = time.time()
    stages.RUNNERS[stage](ctx)
    ran.append((stage, round(time.time() - ts, 1)))
    ctx.log(f"[{stage}] done in {time.time() - ts:.1f}s")
  summary = _summary(ctx, cfg, ran, skipped, time.time() - t0)
  if ctx.progress or True:
    ctx.log(json.dumps(summary, indent=2))
  with open(os.path.join(ctx.workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def _final_model_stage(ctx, cfg):
  for stage in ("dpo", "kd", "stepwise", "assemble"):
    if stage in cfg.stages and os.path.exists(stages.artifact(ctx, stage)):
      return stage
  return None


def _summary(ctx, cfg, ran, skipped, seconds):
  from zebra_jax.train.metrics import read_metrics
  out = {"name": cfg.name, "workdir": ctx.workdir, "stages_run": ran, "stages_skipped": skipped,
         "wall_time_s": round(seconds, 1)}
  final = _final_model_stage(ctx, cfg)
  if final:
    with open(os.path.join(stages.artifact(ctx, final), "config.json")) as f:
      from zebra_jax.config import LlamaConfig
      config = LlamaConfig.from_json(f.read())
    out.update(final_model=stages.artifact(ctx, final),
               mla_layers=list(getattr(config, "mla_layers", ())),
               layer_types="".join({"mla": "M", "mamba2": "s", "attention": "A"}[t]
                                   for t in config.layer_types()),
               kv_cache_fraction=accounting.kv_cache_fraction(config),
               params=accounting.param_count(config))
  tokens = {}
  for name in os.listdir(ctx.workdir):
    rows = read_metrics(os.path.join(ctx.workdir, name))
    if rows:
      stage_cfg = cfg.get(name.split("_")[0] if name.startswith(("ild", "stepwise")) else name)
      if stage_cfg is not None and "batch_size" in stage_cfg:
        tokens[name] = {"steps": rows[-1]["step"], "last_loss": rows[-1].get("loss"),
                        "tokens_seen": rows[-1]["step"] * stage_cfg.batch_size * cfg.data.seq_len}
  out["training"] = tokens
  return out
