"""The distillation stages. Each reads its inputs from earlier stages' artifacts in the workdir and
writes one artifact (a saved model or a JSON file); the pipeline skips a stage whose artifact exists.

  teacher    convert/load the teacher once            -> teacher/model
  samples    teacher-generated training text (optional) -> samples/teacher_samples.jsonl
  ild_mla    pure-MLA student, per-layer teacher-forced -> ild_mla/model
  ild_mamba  pure-Mamba2 student, same loss           -> ild_mamba/model
  select     SMART placement of the MLA layers        -> select/placement.json
  assemble   hybrid blocks from the two ILD students  -> assemble/model
  kd         end-to-end forward KL (+ CE)             -> kd/model
  pairs      teacher vs kd-student answers (optional)  -> pairs/pairs.jsonl (DPO pairs)
  dpo        sigmoid DPO against a frozen copy        -> dpo/model
  stepwise   MambaInLlama: attention -> Mamba2 in phases, MLPs frozen -> stepwise/model
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import jax
from flax import nnx

from zebra_jax._io import write_json
from zebra_jax.config import HybridConfig
from zebra_jax.distill import plan as plans
from zebra_jax.distill import pairs as pairs_lib
from zebra_jax.distill import samples as samples_lib
from zebra_jax.distill import select as select_lib
from zebra_jax.distill.config import RunConfigError
from zebra_jax.distill.context import RunContext
from zebra_jax.distill.preferences import check_pairs_file
from zebra_jax.init import init_hybrid
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.train.trainer import StageTrainer


def artifact(ctx: RunContext, stage: str) -> str:
  if stage == "samples":
    return os.path.join(ctx.workdir, samples_lib.ARTIFACT)
  if stage == "pairs":
    return os.path.join(ctx.workdir, pairs_lib.ARTIFACT)
  name = "placement.json" if stage == "select" else "model"
  return os.path.join(ctx.workdir, stage, name)


def train(ctx: RunContext, plan: plans.StagePlan, student: CausalLM, teachers: dict) -> None:
  """Runs a stage's plan on its loaded models (teachers: loss role -> model) and saves the trained
  student as the stage's artifact."""
  ctx.set_remat(student)
  # DPO's step runs a chosen and a rejected row per example: its MFU is not logged
  flops = (
    None
    if plan.rows_per_sequence != 1
    else ctx.flops_per_token(student.config, teachers["teacher"].config, heads=plan.heads)
  )
  trainer = StageTrainer(
    name=plan.name,
    workdir=ctx.workdir,
    model=student,
    loss_fn=plan.loss_fn,
    spec=plan.spec,
    mesh=ctx.mesh,
    teachers=teachers,
    trainable=plan.trainable,
    flops_per_token=flops,
    lr_scale=plan.lr_scale,
  )
  if plan.data in ("ild", "kd"):
    with ctx.timed("counting data"):
      ctx.data_budget(plan.name, plan.data, plan.spec)
  try:
    if plan.data is None:
      trainer.run(ctx.preference_batches(plan.spec.batch_size))
    else:
      with contextlib.closing(ctx.batches(plan.data, plan.spec.batch_size)) as data:
        trainer.run(data)
  finally:
    for phase, sec in trainer.phase_s.items():
      ctx.phase_s[phase] = ctx.phase_s.get(phase, 0.0) + sec
  with ctx.timed("saving"):
    ctx.save(student, artifact(ctx, plan.name), plan.name)


# -- teacher ---------------------------------------------------------------------------------------
def run_teacher(ctx: RunContext) -> None:
  model = ctx.load_teacher_source(ctx.cfg.teacher)
  ctx.save(model, artifact(ctx, "teacher"), "teacher")


# -- intermediate-layer distillation ---------------------------------------------------------------
def run_ild(ctx: RunContext, mixer: str) -> None:
  teacher = ctx.teacher()
  L = teacher.config.num_hidden_layers
  mla_layers = tuple(range(L)) if mixer == "mla" else ()
  config = ctx.student_config(mla_layers=mla_layers, attn_layers=())
  m = ctx.cfg.model
  student = init_hybrid(
    teacher,
    config,
    seed=ctx.cfg.seed,
    q_energy_ratio=m.q_energy_ratio if mixer == "mla" else None,
    kv_energy_ratio=m.kv_energy_ratio if mixer == "mla" else None,
  )
  train(
    ctx,
    plans.ild(ctx.cfg, mixer, student.config, teacher.config, ctx.progress),
    student,
    {"teacher": teacher},
  )


# -- layer selection -------------------------------------------------------------------------------
def run_select(ctx: RunContext) -> None:
  cfg = ctx.cfg
  teacher = ctx.teacher()
  L = teacher.config.num_hidden_layers
  method = cfg.select.method
  scores = None
  if method == "explicit":
    layers = tuple(cfg.model.mla_layers)
  elif method == "uniform":
    layers = select_lib.uniform_placement(L, cfg.model.n_mla)
  else:
    mla_model, mamba_model = ctx.load_artifact("ild_mla"), ctx.load_artifact("ild_mamba")
    calib = ctx.calibration_batches(cfg.select.calib_batches, cfg.select.batch_size)
    scores = select_lib.sensitivity_scores(teacher, mla_model, mamba_model, calib)
    layers = select_lib.smart_placement(scores, cfg.model.n_mla)
  out = {
    "method": method,
    "mla_layers": [int(i) for i in layers],
    "scores": None if scores is None else [float(s) for s in scores],
  }
  path = artifact(ctx, "select")
  if jax.process_index() == 0:  # every process chose the same layout; the pipeline then syncs
    write_json(path, out)
  ctx.log(f"[select] mla_layers={list(layers)}")


# -- assemble --------------------------------------------------------------------------------------
def assemble_hybrid(
  teacher: CausalLM, mla_model: CausalLM, mamba_model: CausalLM, config: HybridConfig
) -> CausalLM:
  """Layer l's whole block (mixer, MLP, norms) from the MLA or Mamba2 ILD student; embeddings, final
  norm and LM head from the teacher (reference 4.5)."""
  for src, kind in ((mla_model, "mla"), (mamba_model, "mamba2")):
    need = [i for i, t in enumerate(config.layer_types()) if t == kind]
    if not need:
      continue
    have = [i for i, t in enumerate(src.config.layer_types()) if t == kind]
    missing = sorted(set(need) - set(have))
    if missing:
      raise ValueError(f"assemble: layers {missing} need a {kind} block but the ILD student has none")
  if config.mla_layers:
    for i in config.mla_layers:  # MLA shapes (ranks) must match the ILD run
      config = dataclasses.replace(
        config, mla_layer_ranks={**(config.mla_layer_ranks or {}), i: mla_model.config.mla_ranks(i)}
      )
  hybrid = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
  state = nnx.state(hybrid)
  src_states = {
    "mla": mla_model and nnx.state(mla_model),
    "mamba2": mamba_model and nnx.state(mamba_model),
    "teacher": nnx.state(teacher),
  }
  flat = {}
  for path, var in nnx.to_flat_state(state):
    if path[0] == "layers":
      kind = config.layer_types()[path[1]]
      src = src_states["teacher" if kind == "attention" else kind]
    else:
      src = src_states["teacher"]
    value = _lookup(src, path)
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(
        f"assemble: {'.'.join(map(str, path))} has shape {value.shape} in its source, expected {var.shape}"
      )
    flat[path] = value
  nnx.update(hybrid, nnx.from_flat_state([(p, v.replace(flat[p])) for p, v in nnx.to_flat_state(state)]))
  return hybrid


def _lookup(state, path):
  node = state
  for p in path:
    node = node[p]
  return node[...] if isinstance(node, nnx.Variable) else node


def run_assemble(ctx: RunContext) -> None:
  """Blocks come from the ILD students when those stages are part of the run, else straight from
  the initialisers (X-EcoMLA: SVD init, then KD, no ILD)."""
  with open(artifact(ctx, "select")) as f:
    layers = tuple(json.load(f)["mla_layers"])
  teacher = ctx.teacher()
  config = ctx.student_config(mla_layers=layers, attn_layers=tuple(ctx.cfg.model.attn_layers))
  m = ctx.cfg.model

  def source(kind):
    stage = f"ild_{kind}"
    if stage in ctx.cfg.stages:
      return ctx.load_artifact(stage)
    L = teacher.config.num_hidden_layers
    all_layers = ctx.student_config(mla_layers=tuple(range(L)) if kind == "mla" else (), attn_layers=())
    return init_hybrid(
      teacher,
      all_layers,
      seed=ctx.cfg.seed,
      q_energy_ratio=m.q_energy_ratio,
      kv_energy_ratio=m.kv_energy_ratio,
    )

  kinds = set(config.layer_types())
  mla_model = source("mla") if "mla" in kinds else None
  mamba_model = source("mamba") if "mamba2" in kinds else None
  hybrid = assemble_hybrid(teacher, mla_model, mamba_model, config)
  ctx.save(hybrid, artifact(ctx, "assemble"), "assemble")


# -- end-to-end knowledge distillation -------------------------------------------------------------
def run_kd(ctx: RunContext) -> None:
  source_stage = "stepwise" if "stepwise" in ctx.cfg.stages else "assemble"
  student = ctx.load_artifact(source_stage)
  teacher = ctx.kd_teacher()
  train(ctx, plans.kd(ctx.cfg, student.config, teacher.config, ctx.progress), student, {"teacher": teacher})


# -- DPO ---------------------------------------------------------------------------------------------
def run_dpo(ctx: RunContext) -> None:
  if ctx.cfg.data.dpo_path == pairs_lib.PAIRS_TOKEN:  # made by this run: checked as a given file is
    path = pairs_lib.dpo_path(ctx.cfg, ctx.workdir)
    try:
      check_pairs_file(path, ctx.cfg.dpo.batch_size)
    except ValueError as e:
      raise RunConfigError(f"data.dpo_path = 'pairs' ({path}): {e}") from None
  source = ctx.distilled_stage()
  policy = ctx.load_artifact(source)
  reference = ctx.load_artifact(source)  # a frozen copy of the distilled model (reference 7)
  train(
    ctx, plans.dpo(ctx.cfg, policy.config, reference.config, ctx.progress), policy, {"reference": reference}
  )


# -- MambaInLlama stepwise replacement -------------------------------------------------------------
def run_stepwise(ctx: RunContext) -> None:
  """Phases keep fewer attention layers each time (`stepwise.schedule`, a list of attn_layers
  lists). Layers converted in an earlier phase keep their trained Mamba2 weights; newly converted
  ones are initialised from the teacher's attention. MLPs are frozen when `freeze_mlp`."""
  s = ctx.cfg.stepwise
  teacher = ctx.teacher()
  previous = None
  for phase, attn_layers in enumerate(s.schedule):
    stage = f"stepwise_{phase}"
    if os.path.exists(artifact(ctx, stage)):
      previous = ctx.load_artifact(stage)
      continue
    config = ctx.student_config(mla_layers=(), attn_layers=tuple(attn_layers))
    student = init_hybrid(teacher, config, seed=ctx.cfg.seed + phase)
    if previous is not None:
      for i, (dst, src) in enumerate(zip(student.layers, previous.layers)):
        if dst.mixer_type == "mamba2" and src.mixer_type == "mamba2":
          nnx.update(dst, nnx.state(src))
    train(
      ctx,
      plans.stepwise(ctx.cfg, phase, student.config, teacher.config, ctx.progress),
      student,
      {"teacher": teacher},
    )
    previous = student
  ctx.save(previous, artifact(ctx, "stepwise"), "stepwise")


RUNNERS = {
  "teacher": run_teacher,
  "samples": samples_lib.run_samples,
  "ild_mla": lambda ctx: run_ild(ctx, "mla"),
  "ild_mamba": lambda ctx: run_ild(ctx, "mamba"),
  "select": run_select,
  "assemble": run_assemble,
  "kd": run_kd,
  "pairs": pairs_lib.run_pairs,
  "dpo": run_dpo,
  "stepwise": run_stepwise,
}
