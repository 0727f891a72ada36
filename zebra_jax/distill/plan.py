"""Each training stage described once: what it trains, against which teachers, with which loss,
optimiser settings and batch. The runner (`distill/stages.py`) builds a plan from the models it
loaded and hands it to the trainer; the ahead-of-time compiler (`distill/aot.py`) builds the same
plan from abstract configs and compiles it. A setting read here is therefore read the same way by
a run and by its compile check.

  ild_mla / ild_mamba  ILD loss, every parameter but the embedding and LM head, no LM-head FLOPs
  kd                   KL (+ CE), `kd.freeze` groups frozen, `kd.lr_scale` per group
  stepwise_<phase>     KL (+ CE) against the teacher, embedding (and MLPs) frozen
  dpo                  sigmoid DPO against a frozen reference, every parameter
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from zebra_jax.distill.config import PARAM_GROUPS
from zebra_jax.distill.objectives import dpo_loss_fn, ild_loss_fn, kd_loss_fn
from zebra_jax.train import fused_losses
from zebra_jax.train.trainer import TrainSpec


@dataclasses.dataclass(frozen=True)
class StagePlan:
  name: str
  student: Any  # the trained model's LlamaConfig / HybridConfig
  teachers: dict[str, Any]  # loss role ("teacher" / "reference") -> config
  loss_fn: Callable  # (student, {role: model}, batch) -> (loss, metrics)
  trainable: Callable | None  # (path, variable) -> trained?; None: every parameter
  spec: TrainSpec
  batch: dict[str, tuple[tuple[int, ...], str]]  # name -> (global (accum, micro, T), dtype)
  data: str | None = None  # RunContext.batches purpose; None: preference pairs (dpo)
  lr_scale: Callable | None = None  # parameter path -> learning-rate multiplier
  heads: bool = True  # the step runs the LM heads (ILD does not): FLOPs count them
  rows_per_sequence: int = 1  # DPO trains on chosen + rejected rows
  notes: tuple[str, ...] = ()


# -- parameter groups ------------------------------------------------------------------------------
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


not_embedding = frozen_filter(("embed",))  # ILD never touches the embedding and the LM head


# -- the pieces every plan shares ------------------------------------------------------------------
def train_spec(cfg, stage_cfg, seq_len: int, progress: bool = False) -> TrainSpec:
  """A stage's TrainSpec from its config section (steps, lr, batch, accumulation, warmup) and the
  run's `train` section (decay, clipping, logging, checkpoints)."""
  t = cfg.train
  return TrainSpec(
    steps=stage_cfg.steps,
    lr=stage_cfg.lr,
    batch_size=stage_cfg.batch_size,
    seq_len=seq_len,
    grad_accum=stage_cfg.grad_accum,
    warmup_frac=stage_cfg.get("warmup_frac", t.warmup_frac),
    weight_decay=t.weight_decay,
    grad_clip=t.grad_clip,
    log_every=t.log_every,
    checkpoint_every=t.checkpoint_every,
    keep_last=t.keep_last,
    async_checkpoint=t.async_checkpoint,
    progress=progress,
  )


def token_batch(spec: TrainSpec, length: int) -> dict:
  micro = spec.batch_size // spec.grad_accum
  return {"tokens": ((spec.grad_accum, micro, length), "int32")}


# -- one function per stage ------------------------------------------------------------------------
def ild(cfg, mixer: str, student, teacher, progress: bool = False) -> StagePlan:
  spec = train_spec(cfg, cfg.ild, cfg.data.seq_len, progress)
  return StagePlan(
    f"ild_{mixer}",
    student,
    {"teacher": teacher},
    ild_loss_fn(cfg.ild.loss),
    not_embedding,
    spec,
    token_batch(spec, cfg.data.seq_len),
    data="ild",
    heads=False,
  )


def kd(cfg, student, teacher, progress: bool = False) -> StagePlan:
  k = cfg.kd
  if teacher.vocab_size != student.vocab_size:
    raise ValueError(
      f"kd: teacher vocab_size={teacher.vocab_size} differs from the student's "
      f"{student.vocab_size}; KD compares logits token for token "
      "(kd_teacher.path / kd_teacher.preset)"
    )
  spec = train_spec(cfg, k, cfg.data.seq_len, progress)
  return StagePlan(
    "kd",
    student,
    {"teacher": teacher},
    kd_loss_fn(k.kl_weight, k.ce_weight, k.temperature, k.loss_impl, k.loss_chunk),
    frozen_filter(k.freeze),
    spec,
    token_batch(spec, cfg.data.seq_len),
    data="kd",
    lr_scale=group_lr_scale(k.get("lr_scale", None)),
  )


def stepwise(cfg, phase: int, student, teacher, progress: bool = False) -> StagePlan:
  s = cfg.stepwise
  spec = train_spec(cfg, s, cfg.data.seq_len, progress)
  return StagePlan(
    f"stepwise_{phase}",
    student,
    {"teacher": teacher},
    kd_loss_fn(s.kl_weight, s.ce_weight, 1.0),
    frozen_filter(("embed", "mlp") if s.freeze_mlp else ("embed",)),
    spec,
    token_batch(spec, cfg.data.seq_len),
    data=f"stepwise_{phase}",
  )


def dpo(cfg, policy, reference, progress: bool = False) -> StagePlan:
  d = cfg.dpo
  spec = train_spec(cfg, d, d.max_len, progress)
  shape = (spec.grad_accum, spec.batch_size // spec.grad_accum, d.max_len)
  batch = {k: (shape, "int32") for k in ("chosen", "chosen_mask", "rejected", "rejected_mask")}
  return StagePlan(
    "dpo",
    policy,
    {"reference": reference},
    dpo_loss_fn(d.beta, d.loss_impl, d.get("loss_chunk", fused_losses.DEFAULT_CHUNK)),
    None,
    spec,
    batch,
    data=None,
    rows_per_sequence=2,
  )


__all__ = [
  "StagePlan",
  "param_group",
  "group_lr_scale",
  "frozen_filter",
  "not_embedding",
  "train_spec",
  "token_batch",
  "ild",
  "kd",
  "stepwise",
  "dpo",
]
