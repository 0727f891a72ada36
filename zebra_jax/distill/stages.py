"""The distillation stages. Each reads its inputs from earlier stages' artifacts in the workdir and
writes one artifact (a saved model or a JSON file); the pipeline skips a stage whose artifact exists.

  teacher    convert/load the teacher once            -> teacher/model
  samples    teacher-generated training text (optional) -> samples/teacher_samples.jsonl
  ild_mla    pure-MLA student, per-layer teacher-forced -> ild_mla/model
  ild_mamba  pure-Mamba2 student, same loss           -> ild_mamba/model
  select     SMART placement of the MLA layers        -> select/placement.json
  assemble   hybrid blocks from the two ILD students  -> assemble/model
  kd         end-to-end forward KL (+ CE)             -> kd/model
  dpo        sigmoid DPO against a frozen copy        -> dpo/model
  stepwise   MambaInLlama: attention -> Mamba2 in phases, MLPs frozen -> stepwise/model
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax._io import write_json
from zebra_jax.config import HybridConfig
from zebra_jax.distill import samples as samples_lib
from zebra_jax.distill.config import PARAM_GROUPS
from zebra_jax.distill import select as select_lib
from zebra_jax.distill.context import RunContext
from zebra_jax.init import init_hybrid
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.train import fused_losses, losses
from zebra_jax.train.trainer import StageTrainer, TrainSpec


def artifact(ctx: RunContext, stage: str) -> str:
  if stage == "samples":
    return os.path.join(ctx.workdir, samples_lib.ARTIFACT)
  name = "placement.json" if stage == "select" else "model"
  return os.path.join(ctx.workdir, stage, name)


def _spec(ctx: RunContext, stage_cfg, seq_len: int) -> TrainSpec:
  t = ctx.cfg.train
  return TrainSpec(steps=stage_cfg.steps, lr=stage_cfg.lr, batch_size=stage_cfg.batch_size,
                   seq_len=seq_len, grad_accum=stage_cfg.grad_accum,
                   warmup_frac=stage_cfg.get("warmup_frac", t.warmup_frac),
                   weight_decay=t.weight_decay, grad_clip=t.grad_clip, log_every=t.log_every,
                   checkpoint_every=t.checkpoint_every, keep_last=t.keep_last,
                   async_checkpoint=t.async_checkpoint, progress=ctx.progress)


def param_group(path) -> str:
  """The group of a parameter path: 'embed' (token embedding, LM head), 'mlp', 'norm' (RMSNorms)
  or 'mixer' (attention, MLA, Mamba2)."""
  names = list(map(str, path))
  if "embed_tokens" in names or "lm_head" in names:
    return "embed"
  if "mlp" in names:
    return "mlp"
  if "mixer" in names:
    return "mixer"
  return "norm"


def group_lr_scale(scales):
  """path -> the learning-rate multiplier of its parameter group (`kd.lr_scale`); None when every
  group is at 1 (the plain optimizer)."""
  scales = {g: float(v) for g, v in dict(scales or {}).items()}
  if all(v == 1.0 for v in scales.values()):
    return None
  return lambda path: scales.get(param_group(path), 1.0)


def frozen_filter(freeze):
  """A trainable-filter that leaves the groups in `freeze` (a subset of PARAM_GROUPS) untouched."""
  freeze = tuple(freeze)
  bad = [g for g in freeze if g not in PARAM_GROUPS]
  if bad:
    raise ValueError(f"unknown parameter group(s) {bad} to freeze; groups: {list(PARAM_GROUPS)}")
  return lambda path, _var: param_group(path) not in freeze


_not_embedding = frozen_filter(("embed",))  # ILD never touches the embedding and the LM head


def _positions(tokens_BT):
  return CausalLM.default_positions(tokens_BT)


# -- teacher ---------------------------------------------------------------------------------------
def run_teacher(ctx: RunContext) -> None:
  model = ctx.load_teacher_source(ctx.cfg.teacher)
  ctx.save(model, artifact(ctx, "teacher"), "teacher")


# -- intermediate-layer distillation ---------------------------------------------------------------
def ild_loss_fn(kind: str):
  """Reference ILD: every student block gets the teacher's input hidden state; the loss sums, over
  layers, the distance of block outputs and of mixer outputs (the last block output compared after
  each model's final norm, as HF hidden_states[-1] is normalised)."""

  def loss_fn(student, teachers, batch):
    teacher = teachers["teacher"]
    tokens = batch["tokens"]
    pos = _positions(tokens)
    _, hidden, mixer_outs = teacher.forward_with_intermediates(tokens, pos)
    hidden = [jax.lax.stop_gradient(h) for h in hidden]
    mixer_outs = [jax.lax.stop_gradient(m) for m in mixer_outs]
    L = len(student.layers)
    apply = student._block_fn()  # honours train.remat like the full forward
    block_loss, mixer_loss = 0.0, 0.0
    for l, block in enumerate(student.layers):
      h_out, m_out = apply(block, hidden[l], pos)
      target = hidden[l + 1]
      if l == L - 1:
        h_out, target = student.norm(h_out), jax.lax.stop_gradient(teacher.norm(target))
      block_loss = block_loss + losses.ild_distance(h_out, target, kind)
      mixer_loss = mixer_loss + losses.ild_distance(m_out, mixer_outs[l], kind)
    return block_loss + mixer_loss, {"block_loss": block_loss, "mixer_loss": mixer_loss}

  return loss_fn


def run_ild(ctx: RunContext, mixer: str) -> None:
  stage = f"ild_{mixer}"
  teacher = ctx.teacher()
  L = teacher.config.num_hidden_layers
  mla_layers = tuple(range(L)) if mixer == "mla" else ()
  config = ctx.student_config(mla_layers=mla_layers, attn_layers=())
  m = ctx.cfg.model
  student = init_hybrid(teacher, config, seed=ctx.cfg.seed,
                        q_energy_ratio=m.q_energy_ratio if mixer == "mla" else None,
                        kv_energy_ratio=m.kv_energy_ratio if mixer == "mla" else None)
  ctx.set_remat(student)
  spec = _spec(ctx, ctx.cfg.ild, ctx.cfg.data.seq_len)
  trainer = StageTrainer(
      name=stage, workdir=ctx.workdir, model=student, loss_fn=ild_loss_fn(ctx.cfg.ild.loss),
      spec=spec, mesh=ctx.mesh, teachers={"teacher": teacher}, trainable=_not_embedding,
      flops_per_token=ctx.flops_per_token(student.config, teacher.config, heads=False))
  ctx.data_budget(stage, "ild", spec)
  with contextlib.closing(ctx.batches("ild", spec.batch_size)) as data:
    trainer.run(data)
  ctx.save(student, artifact(ctx, stage), stage)


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
  out = {"method": method, "mla_layers": [int(i) for i in layers],
         "scores": None if scores is None else [float(s) for s in scores]}
  path = artifact(ctx, "select")
  if jax.process_index() == 0:  # every process chose the same layout; the pipeline then syncs
    write_json(path, out)
  ctx.log(f"[select] mla_layers={list(layers)}")


# -- assemble --------------------------------------------------------------------------------------
def assemble_hybrid(teacher: CausalLM, mla_model: CausalLM, mamba_model: CausalLM,
                    config: HybridConfig) -> CausalLM:
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
      config = dataclasses.replace(config, mla_layer_ranks={
          **(config.mla_layer_ranks or {}), i: mla_model.config.mla_ranks(i)})
  hybrid = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
  state = nnx.state(hybrid)
  src_states = {"mla": mla_model and nnx.state(mla_model),
                "mamba2": mamba_model and nnx.state(mamba_model), "teacher": nnx.state(teacher)}
  flat = {}
  for path, var in nnx.to_flat_state(state):
    if path[0] == "layers":
      kind = config.layer_types()[path[1]]
      src = src_states["teacher" if kind == "attention" else kind]
    else:
      src = src_states["teacher"]
    value = _lookup(src, path)
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"assemble: {'.'.join(map(str, path))} has shape {value.shape} in its source, "
                       f"expected {var.shape}")
    flat[path] = value
  nnx.update(hybrid, nnx.from_flat_state([(p, v.replace(flat[p])) for p, v in
                                          nnx.to_flat_state(state)]))
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
    all_layers = ctx.student_config(mla_layers=tuple(range(L)) if kind == "mla" else (),
                                    attn_layers=())
    return init_hybrid(teacher, all_layers, seed=ctx.cfg.seed, q_energy_ratio=m.q_energy_ratio,
                       kv_energy_ratio=m.kv_energy_ratio)

  kinds = set(config.layer_types())
  mla_model = source("mla") if "mla" in kinds else None
  mamba_model = source("mamba") if "mamba2" in kinds else None
  hybrid = assemble_hybrid(teacher, mla_model, mamba_model, config)
  ctx.save(hybrid, artifact(ctx, "assemble"), "assemble")


# -- end-to-end knowledge distillation -------------------------------------------------------------
def kd_loss_fn(kl_weight: float, ce_weight: float, temperature: float, impl: str = "logits",
               chunk: int = fused_losses.DEFAULT_CHUNK):
  """KL on every position of the packed row (no targets needed); CE on next-token targets. The
  whole row is the input so the sequence length stays the configured one (kernel-friendly).
  impl "logits": both models' full logits, then the losses (train/losses.py); "fused": the same
  losses from the final hidden states, `chunk` tokens at a time (train/fused_losses.py)."""
  _check_loss_impl(impl)

  def loss_fn(student, teachers, batch):
    tokens = batch["tokens"]
    pos = _positions(tokens)
    teacher = teachers["teacher"]
    if impl == "fused":
      ht = jax.lax.stop_gradient(teacher.final_hidden(tokens, pos))
      loss, kl, ce = fused_losses.kd_loss(
          student.final_hidden(tokens, pos), student.head_DV(), ht,
          jax.lax.stop_gradient(teacher.head_DV()), tokens, kl_weight=kl_weight,
          ce_weight=ce_weight, temperature=temperature, chunk=chunk)
      return loss, {"kl": kl, "ce": ce}
    t_logits = jax.lax.stop_gradient(teacher(tokens, pos))
    s_logits = student(tokens, pos)
    kl = losses.forward_kl(t_logits, s_logits, temperature=temperature)
    ce = losses.cross_entropy(s_logits[:, :-1], tokens[:, 1:])
    loss = kl_weight * kl + (ce_weight * ce if ce_weight else 0.0)
    return loss, {"kl": kl, "ce": ce}

  return loss_fn


def _check_loss_impl(impl: str) -> None:
  if impl not in LOSS_IMPLS:
    raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {impl!r}")


LOSS_IMPLS = ("logits", "fused")


def run_kd(ctx: RunContext, stage: str = "kd") -> None:
  source_stage = "stepwise" if "stepwise" in ctx.cfg.stages else "assemble"
  student = ctx.load_artifact(source_stage)
  ctx.set_remat(student)
  teacher = ctx.kd_teacher()
  if teacher.config.vocab_size != student.config.vocab_size:
    raise ValueError(f"kd: teacher vocab_size={teacher.config.vocab_size} differs from the student's "
                     f"{student.config.vocab_size}; KD compares logits token for token")
  k = ctx.cfg.kd
  spec = _spec(ctx, k, ctx.cfg.data.seq_len)
  trainer = StageTrainer(
      name=stage, workdir=ctx.workdir, model=student,
      loss_fn=kd_loss_fn(k.kl_weight, k.ce_weight, k.temperature, k.loss_impl, k.loss_chunk),
      spec=spec, mesh=ctx.mesh,
      teachers={"teacher": teacher}, trainable=frozen_filter(k.freeze),
      flops_per_token=ctx.flops_per_token(student.config, teacher.config),
      lr_scale=group_lr_scale(k.get("lr_scale", None)))
  ctx.data_budget(stage, "kd", spec)
  with contextlib.closing(ctx.batches("kd", spec.batch_size)) as data:
    trainer.run(data)
  ctx.save(student, artifact(ctx, stage), stage)


# -- DPO ---------------------------------------------------------------------------------------------
def dpo_loss_fn(beta: float, impl: str = "logits", chunk: int = fused_losses.DEFAULT_CHUNK):
  """Sigmoid DPO on sequence log-probs; impl as in kd_loss_fn."""
  _check_loss_impl(impl)

  def logps(model, tokens, mask):
    if impl == "fused":
      h = model.final_hidden(tokens, _positions(tokens))[:, :-1]
      return fused_losses.sequence_logprob(h, model.head_DV(), tokens[:, 1:],
                                           mask[:, 1:].astype(jnp.float32), chunk=chunk)
    logits = model(tokens, _positions(tokens))[:, :-1]
    return losses.sequence_logprob(logits, tokens[:, 1:], mask[:, 1:].astype(jnp.float32))

  def loss_fn(policy, teachers, batch):
    ref = teachers["reference"]
    pc = logps(policy, batch["chosen"], batch["chosen_mask"])
    pr = logps(policy, batch["rejected"], batch["rejected_mask"])
    rc = jax.lax.stop_gradient(logps(ref, batch["chosen"], batch["chosen_mask"]))
    rr = jax.lax.stop_gradient(logps(ref, batch["rejected"], batch["rejected_mask"]))
    return losses.dpo_sigmoid_loss(pc, pr, rc, rr, beta)

  return loss_fn


def run_dpo(ctx: RunContext) -> None:
  source = "kd" if os.path.exists(artifact(ctx, "kd")) else "assemble"
  policy = ctx.load_artifact(source)
  reference = ctx.load_artifact(source)  # a frozen copy of the distilled model (reference 7)
  d = ctx.cfg.dpo
  spec = _spec(ctx, d, d.max_len)
  trainer = StageTrainer(
      name="dpo", workdir=ctx.workdir, model=policy,
      loss_fn=dpo_loss_fn(d.beta, d.loss_impl, d.loss_chunk), spec=spec,
      mesh=ctx.mesh, teachers={"reference": reference},
      flops_per_token=None)
  trainer.run(ctx.preference_batches(spec.batch_size))
  ctx.save(policy, artifact(ctx, "dpo"), "dpo")


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
    ctx.set_remat(student)

    trainable = frozen_filter(("embed", "mlp") if s.freeze_mlp else ("embed",))
    spec = _spec(ctx, s, ctx.cfg.data.seq_len)
    trainer = StageTrainer(
        name=stage, workdir=ctx.workdir, model=student,
        loss_fn=kd_loss_fn(s.kl_weight, s.ce_weight, 1.0), spec=spec, mesh=ctx.mesh,
        teachers={"teacher": teacher}, trainable=trainable,
        flops_per_token=ctx.flops_per_token(student.config, teacher.config))
    with contextlib.closing(ctx.batches(f"stepwise_{phase}", spec.batch_size)) as data:
      trainer.run(data)
    ctx.save(student, artifact(ctx, stage), stage)
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
    "dpo": run_dpo,
    "stepwise": run_stepwise,
}
