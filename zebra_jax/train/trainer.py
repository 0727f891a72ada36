"""The generic training-stage runner shared by every distillation stage.

    split model -> (trainable, frozen) -> shard over the mesh -> restore-or-init optimiser
    -> jitted step (grad accumulation, clipping, AdamW) -> loop with progress, metrics, checkpoints

A stage supplies a `loss_fn(student, teachers, batch) -> (loss, metrics)` written against NNX modules;
here it is wrapped into a pure function of parameter States so `jax.jit` sees explicit in/out
shardings and donates the optimiser state. A stage killed at any step and restarted gives the same
parameters and loss curve as an uninterrupted run (same seed): the data iterator state is
checkpointed with the parameters and there is no other randomness.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import signal
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zebra_jax.cli import (  # noqa: F401  (the exit codes, kept importable from here)
  EXIT_DISK_FULL,
  EXIT_NON_FINITE,
  EXIT_PREEMPTED,
  script_errors,
)
from zebra_jax.parallel.sharding import DEFAULT_RULES, activation_mesh, param_shardings
from zebra_jax.train.checkpoint import StageCheckpointer, abstract_like
from zebra_jax.train.metrics import MetricsWriter, is_writer, peak_flops_per_device, plot_loss_curve
from zebra_jax.train.optim import make_optimizer
from zebra_jax.train.optim import lr_schedule


class NonFiniteLossError(RuntimeError):
  """The loss became NaN/inf; the run stopped without writing a checkpoint of the bad state."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint of the current step was written before stopping."""


def exit_codes():
  """For the scripts: zebra_jax.cli.script_errors (Preempted exits 143, NonFiniteLossError 3,
  DiskFull 4, each with its message instead of a traceback; config and path errors exit 2)."""
  return script_errors()


class BatchIterator(Protocol):
  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass
class TrainSpec:
  steps: int
  lr: float
  batch_size: int  # sequences per optimiser step (global)
  seq_len: int
  grad_accum: int = 1  # micro-batches per step; batch_size % grad_accum == 0
  warmup_frac: float = 0.01
  weight_decay: float = 0.0
  grad_clip: float | None = 1.0
  log_every: int = 10
  checkpoint_every: int = 100
  keep_last: int = 2
  async_checkpoint: bool = True
  progress: bool = True

  def validate(self, mesh: Mesh, where: str) -> None:
    def bad(msg):
      raise ValueError(f"{where}: {msg}")

    if self.steps <= 0:
      bad(f"steps must be positive, got {self.steps}")
    if self.batch_size <= 0 or self.grad_accum <= 0 or self.batch_size % self.grad_accum:
      bad(f"batch_size={self.batch_size} is not a multiple of grad_accum={self.grad_accum}")
    micro = self.batch_size // self.grad_accum
    shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    if micro % shards:
      bad(
        f"micro-batch {micro} (batch_size/grad_accum) is not divisible by the mesh's "
        f"data x fsdp = {shards} devices"
      )
    if not self.lr > 0 or not math.isfinite(self.lr):
      bad(f"lr must be a positive number, got {self.lr}")


LossFn = Callable[[nnx.Module, dict, dict], tuple[jax.Array, dict]]


def split_trainable(model: nnx.Module, trainable: Callable[[tuple, Any], bool] | None):
  """(graphdef, trainable State, frozen State). `trainable(path, var)` selects parameters."""
  filt = nnx.Param if trainable is None else nnx.All(nnx.Param, trainable)
  graphdef, train_state, frozen = nnx.split(model, filt, ...)
  return graphdef, train_state, frozen


def key_names(key_path) -> tuple:
  """A jax key path (of a State leaf) as the plain names / indices of an nnx path."""
  return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in key_path)


def _host_value(x):
  """A host-local array (a model loaded on every process) as numpy: jax refuses to device_put a
  committed host-local array onto a sharding that spans other processes (a cross-host transfer),
  while a numpy value is taken as this process's copy of a value every process holds."""
  if isinstance(x, jax.Array) and x.is_fully_addressable:
    return np.asarray(x)
  return x


def _place(tree, shardings):
  if jax.process_count() > 1:
    tree = jax.tree.map(_host_value, tree)
  return jax.device_put(tree, shardings)


def _state_shardings(state, mesh, rules):
  return param_shardings(state, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 3) -> NamedSharding:
  """A batch leaf of rank `ndim` laid out (grad_accum, micro, ...): the micro-batch axis is split
  over data x fsdp, the rest replicated. ndim 3: (accum, micro, T) tokens; ndim 2: a per-row
  field (lengths, per-example weights) reshaped to (accum, micro)."""
  if ndim < 2:
    raise ValueError(f"a batch leaf laid out (grad_accum, micro, ...) has rank >= 2, got {ndim}")
  return NamedSharding(mesh, P(None, ("data", "fsdp"), *([None] * (ndim - 2))))


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
  """Per-field shardings of a (grad_accum, micro, ...) batch (arrays or ShapeDtypeStructs), each by
  its own rank."""
  return {k: batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}


def optimizer_state_shardings(
  optimizer: optax.GradientTransformation, trainable_state, trainable_shardings, mesh: Mesh
):
  """Shardings of `optimizer.init(trainable_state)`: every parameter-shaped leaf (Adam mu/nu) is
  sharded like its parameter, everything else (step counts) replicated. `trainable_state` may be
  abstract (ShapeDtypeStructs). Without this, jit places the zeros of `optimizer.init` on one
  device, whatever the parameters' layout."""
  abstract = jax.eval_shape(optimizer.init, trainable_state)
  replicated = NamedSharding(mesh, P())
  return optax.tree_utils.tree_map_params(
    optimizer, lambda _, s: s, abstract, trainable_shardings, transform_non_params=lambda _: replicated
  )


def build_train_step(
  graphdef,
  teacher_graphdefs: dict,
  optimizer: optax.GradientTransformation,
  loss_fn: LossFn,
  grad_accum: int,
  *,
  trainable_shardings,
  opt_shardings,
  frozen_shardings,
  teacher_shardings: dict,
  batch_shardings,
):
  """The jitted optimiser step `StageTrainer` runs, built from graphdefs and shardings alone, so it
  can be lowered for abstract (nnx.eval_shape) models and compile-only devices (distill/aot.py).

    step(trainable, opt_state, frozen, teacher_states, batch) -> (trainable, opt_state, metrics)

  batch leaves are (grad_accum, micro, ...); gradients are accumulated over the leading axis in
  float32. `batch_shardings`: one sharding for every leaf (all of one rank) or a dict of them per
  field (`batch_shardings(mesh, batch)`, fields of different ranks). `teacher_graphdefs` maps the
  loss_fn's teacher names to graphdefs; trainable and opt_state are donated. Activations are
  pinned to the batch shardings' mesh while tracing.
  """
  accum = grad_accum
  batch_mesh = jax.tree.leaves(batch_shardings)[0].mesh

  def micro_loss(trainable, frozen, teacher_states, batch):
    model = nnx.merge(graphdef, trainable, frozen)
    teachers = {k: nnx.merge(teacher_graphdefs[k], teacher_states[k]) for k in teacher_states}
    return loss_fn(model, teachers, batch)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(trainable, opt_state, frozen, teacher_states, batch):
    # batch leaves are (accum, micro, ...): accumulate gradients over the leading axis.
    def body(carry, mb):
      g_acc, l_acc, m_acc = carry
      (loss, metrics), g = grad_fn(trainable, frozen, teacher_states, mb)
      g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
      m_acc = jax.tree.map(lambda a, b: a + b, m_acc, metrics)
      return (g_acc, l_acc + loss, m_acc), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), trainable)
    first = jax.tree.map(lambda x: x[0], batch)
    _, m_shape = jax.eval_shape(lambda: micro_loss(trainable, frozen, teacher_states, first))
    m0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
    (grads, loss, metrics), _ = jax.lax.scan(body, (zeros, 0.0, m0), batch)
    grads = jax.tree.map(lambda g: g / accum, grads)
    loss = loss / accum
    metrics = jax.tree.map(lambda m: m / accum, metrics)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    # param_norm is inf/NaN when an update overflowed the weights (loss and grads still finite):
    # the non-finite check then stops the run before that state is checkpointed.
    out = {"loss": loss, "grad_norm": grad_norm, "param_norm": optax.global_norm(trainable), **metrics}
    return trainable, opt_state, out

  def step_on_mesh(*args):
    # Trace with the models' activations pinned to the batch layout (parallel.constrain_batch).
    with activation_mesh(batch_mesh):
      return step(*args)

  return jax.jit(
    step_on_mesh,
    in_shardings=(trainable_shardings, opt_shardings, frozen_shardings, teacher_shardings, batch_shardings),
    out_shardings=(trainable_shardings, opt_shardings, None),
    donate_argnums=(0, 1),
  )


def stage_optimizer(spec: TrainSpec, trainable_state, lr_scale=None) -> optax.GradientTransformation:
  """The stage's AdamW (warmup + cosine, clipping); lr_scale(path) -> the learning-rate multiplier
  of the trainable parameter at that path (None: every one at spec.lr). The trainer and the AOT
  compiler build it the same way, so both see the same optimiser state."""
  scales = (
    None
    if lr_scale is None
    else jax.tree_util.tree_map_with_path(lambda kp, _: float(lr_scale(key_names(kp))), trainable_state)
  )
  return make_optimizer(
    spec.lr,
    spec.steps,
    warmup_frac=spec.warmup_frac,
    weight_decay=spec.weight_decay,
    grad_clip=spec.grad_clip,
    lr_scales=scales,
  )


# Metrics that measure time, not the model: they differ between two runs of the same steps.
TIMING_KEYS = ("tokens_per_s", "mfu", "host_data_s", "host_gc_s")


class _HostTimes:
  """Host seconds of one log window spent waiting for the next batch and in Python's garbage
  collector: either delays the dispatch of the next step, so a window slower than its neighbours
  shows which one it was (docs/benchmarks.md "Stalls")."""

  def __init__(self):
    self.data = self.gc = 0.0
    self._gc_start = None

  def on_gc(self, phase: str, info: dict) -> None:  # gc.callbacks' signature
    if phase == "start":
      self._gc_start = time.perf_counter()
    elif self._gc_start is not None:
      self.gc += time.perf_counter() - self._gc_start
      self._gc_start = None

  def take(self) -> dict[str, float]:
    out = {"host_data_s": self.data, "host_gc_s": self.gc}
    self.data = self.gc = 0.0
    return out


class StageTrainer:
  """Runs one training stage; see the module docstring."""

  def __init__(
    self,
    *,
    name: str,
    workdir: str,
    model: nnx.Module,
    loss_fn: LossFn,
    spec: TrainSpec,
    mesh: Mesh,
    teachers: dict[str, nnx.Module] | None = None,
    trainable: Callable[[tuple, Any], bool] | None = None,
    flops_per_token: float | None = None,
    rules=DEFAULT_RULES,
    lr_scale: Callable[[tuple], float] | None = None,
  ):
    spec.validate(mesh, f"stage {name!r}")
    self.phase_s: dict[str, float] = {}  # run()'s wall seconds by phase (checkpointer, compile, steps)
    self.name, self.spec, self.mesh, self.rules = name, spec, mesh, rules
    self.dir = os.path.join(workdir, name)
    self.model = model
    self.flops_per_token = flops_per_token
    self.graphdef, trainable_state, frozen_state = split_trainable(model, trainable)
    if not jax.tree.leaves(trainable_state):
      raise ValueError(f"stage {name!r}: the trainable filter selects no parameters")
    teachers = teachers or {}
    self.teacher_defs = {k: nnx.split(t) for k, t in teachers.items()}

    # Shard everything by the logical-axis rules.
    self.tr_shard = _state_shardings(trainable_state, mesh, rules)
    self.fr_shard = _state_shardings(frozen_state, mesh, rules)
    # Own copies: the trainable buffers are donated each step and must not alias a teacher's
    # (init_hybrid copies teacher arrays into the student without duplicating them).
    self.trainable = jax.tree.map(jnp.copy, _place(trainable_state, self.tr_shard))
    self.frozen = _place(frozen_state, self.fr_shard)
    self.teacher_states = {}
    for k, (_, st) in self.teacher_defs.items():
      self.teacher_states[k] = _place(st, _state_shardings(st, mesh, rules))
    self._loss_fn = loss_fn
    self._step_fns = {}  # one jitted step per batch layout ({field: rank}), built on first use

    self.optimizer = stage_optimizer(spec, trainable_state, lr_scale)
    self.opt_shard = optimizer_state_shardings(self.optimizer, self.trainable, self.tr_shard, mesh)
    self.opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_shard)(self.trainable)

  # -- the jitted step ---------------------------------------------------------------------------
  def _step_fn(self, batch: dict):
    """The jitted step for this batch's layout (a (grad_accum, micro, ...) leaf per field; each
    field sharded by its own rank)."""
    key = tuple(sorted((k, len(v.shape)) for k, v in batch.items()))
    if key not in self._step_fns:
      self._step_fns[key] = build_train_step(
        self.graphdef,
        {k: gd for k, (gd, _) in self.teacher_defs.items()},
        self.optimizer,
        self._loss_fn,
        self.spec.grad_accum,
        trainable_shardings=self.tr_shard,
        opt_shardings=self.opt_shard,
        frozen_shardings=self.fr_shard,
        teacher_shardings=jax.tree.map(lambda x: x.sharding, self.teacher_states),
        batch_shardings=batch_shardings(self.mesh, batch),
      )
    return self._step_fns[key]

  # -- the loop ----------------------------------------------------------------------------------
  def _device_batch(self, batch: dict[str, np.ndarray]):
    """This process's rows of every field, (rows, ...) -> (grad_accum, micro, ...), placed on the
    mesh with the micro-batch axis split over data x fsdp. A field of rank 1 (a length or scalar
    per row) becomes (grad_accum, micro); a field without a row axis is an error."""
    accum = self.spec.grad_accum
    rows = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in batch.items()}
    n = next(iter(rows.values()), None)
    if any(r is None or r != n for r in rows.values()):
      raise ValueError(
        f"[{self.name}] every batch field needs the same leading row axis; got "
        f"rows {rows} (a per-batch scalar has no row to shard)"
      )

    def shape(x):
      x = np.asarray(x)
      if x.shape[0] % accum:
        raise ValueError(f"batch of {x.shape[0]} sequences is not divisible by grad_accum={accum}")
      return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])

    host = {k: shape(v) for k, v in batch.items()}
    shardings = batch_shardings(self.mesh, host)
    if jax.process_count() == 1:
      return jax.device_put(host, shardings)
    return {k: jax.make_array_from_process_local_data(shardings[k], x) for k, x in host.items()}

  def run(self, data: BatchIterator) -> nnx.Module:
    spec = self.spec
    t_run = time.perf_counter()
    ckpt = StageCheckpointer(
      os.path.join(self.dir, "checkpoints"), keep_last=spec.keep_last, async_save=spec.async_checkpoint
    )
    start = 0
    if ckpt.latest_step():
      target = {"trainable": abstract_like(self.trainable), "opt_state": abstract_like(self.opt_state)}
      say = (lambda m: print(f"[{self.name}] {m}")) if is_writer() else (lambda m: None)
      start, restored, data_state = ckpt.restore_latest_good(target, log=say)
      if start:
        self.trainable, self.opt_state = restored["trainable"], restored["opt_state"]
        data.set_state(data_state)
        say(f"resumed from step {start}")
      else:
        say("no checkpoint could be restored: the stage starts over")
    if start < spec.steps:
      ckpt.prepare({"trainable": self.trainable, "opt_state": self.opt_state})
    writer = MetricsWriter(self.dir, resume_step=start)
    # wall seconds of this run: opening (and resuming from) the checkpoints, the first step's
    # dispatch (its compile), the remaining steps
    self.phase_s = {"checkpointer": time.perf_counter() - t_run}
    t_first = None
    peak = peak_flops_per_device()
    tokens_per_step = spec.batch_size * spec.seq_len

    preempted = {"flag": False}
    old_handler = None
    try:
      old_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.__setitem__("flag", True))
    except ValueError:  # not the main thread: no preemption handling
      pass

    # The bar starts after the first step is dispatched (its compile done), so its rate and ETA
    # count training steps only, fresh or resumed.
    bar, show_bar = None, spec.progress and is_writer()
    pending: list[tuple[int, dict]] = []
    t_last, steps_since = time.perf_counter(), 0
    host = _HostTimes()

    def flush(upto, write=True):
      """Fetch the pending metrics of steps <= `upto`, stop on non-finite loss, log the row of the
      last of them (when `write`). Checkpoint-only flushes (preemption) check without writing, so
      a resumed run logs exactly the rows of an uninterrupted one."""
      nonlocal t_last, steps_since
      last = None
      done = [(s, m) for s, m in pending if s <= upto]
      pending[:] = [(s, m) for s, m in pending if s > upto]
      for s, m in done:
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not all(math.isfinite(v) for v in m.values()):
          bad = {k: v for k, v in m.items() if not math.isfinite(v)}
          raise NonFiniteLossError(
            f"[{self.name}] non-finite metrics at step {s}: {bad}. Stopped without saving; the last "
            f"good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Lower the learning "
            "rate or check the data, then rerun the same command to resume from it."
          )
        last = (s, m)
      if last is None or not write:
        return None
      s, m = last
      # steps finished since the last row: the lagged row's step, not the one just dispatched
      steps_done = steps_since - len(pending)
      dt = time.perf_counter() - t_last
      tok_s = tokens_per_step * steps_done / dt if dt > 0 else 0.0
      m["tokens_per_s"] = tok_s
      m.update(host.take())
      m["lr"] = float(self.optimizer_lr(s))
      if peak and self.flops_per_token:
        # per chip of this stage's mesh (not jax.device_count(): a stage may run on a sub-mesh)
        m["mfu"] = self.flops_per_token * tok_s / (peak * self.mesh.devices.size)
      writer.write(s, m)
      t_last, steps_since = time.perf_counter(), steps_since - steps_done
      if bar is not None:
        bar.set_postfix(
          {k: f"{v:.4g}" for k, v in m.items() if k in ("loss", "tokens_per_s", "mfu", "grad_norm")}
        )
      return m

    step = start
    log_due = None  # a log step whose row is written one step later (see below)
    # Everything built so far (models, data, compiled code) lives for the whole stage: frozen, it
    # is left out of the collector's full passes, which otherwise walk it every few dozen steps.
    gc.collect()
    gc.freeze()
    gc.callbacks.append(host.on_gc)
    try:
      while step < spec.steps:
        # the next batch is read and placed while the device still runs the step before
        t_data = time.perf_counter()
        batch = self._device_batch(next(data))
        host.data += time.perf_counter() - t_data
        self.trainable, self.opt_state, metrics = self._step_fn(batch)(
          self.trainable, self.opt_state, self.frozen, self.teacher_states, batch
        )
        if t_first is None:
          t_first = time.perf_counter()
          self.phase_s["compile"] = t_first - t_run - self.phase_s["checkpointer"]
        step += 1
        steps_since += 1
        pending.append((step, metrics))
        if bar is not None:
          bar.update(1)
        elif show_bar:
          from tqdm.auto import tqdm

          bar = tqdm(total=spec.steps, initial=step, desc=self.name, dynamic_ncols=True)
        stop = preempted["flag"]  # read once: the signal may land anywhere in this iteration
        at_ckpt = step % spec.checkpoint_every == 0 or step == spec.steps or stop
        at_log = step % spec.log_every == 0 or step == spec.steps
        # Reading a step's metrics waits for that step; reading a log step's one step late leaves
        # the device a queued step to run meanwhile, so logging never idles it. A checkpoint
        # waits for its step anyway: everything is checked (and logged) before it is saved.
        if log_due is not None:
          flush(log_due)
          log_due = None
        if at_ckpt:
          flush(step, write=at_log)
        elif at_log:
          log_due = step
        if at_ckpt:
          ckpt.save(
            step, {"trainable": self.trainable, "opt_state": self.opt_state}, data.get_state(), force=True
          )
        if stop:
          ckpt.wait()
          raise Preempted(
            f"[{self.name}] SIGTERM: saved step {step} to {ckpt.directory}; rerun the same command to resume"
          )
      ckpt.wait()
      if t_first is not None:
        self.phase_s["steps"] = time.perf_counter() - t_first
    finally:
      gc.callbacks.remove(host.on_gc)
      gc.unfreeze()  # what the stage leaves behind is collectable again
      if bar is not None:
        bar.close()
      writer.close()
      ckpt.close()
      if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
    if preempted["flag"]:  # SIGTERM after the last step: its checkpoint is saved, stop anyway
      raise Preempted(
        f"[{self.name}] SIGTERM: finished and saved step {step} to {ckpt.directory}; "
        "rerun the same command to resume"
      )
    plot_loss_curve(self.dir, f"{self.name} loss")
    nnx.update(self.model, self.trainable)
    return self.model

  def optimizer_lr(self, step: int) -> float:
    return lr_schedule(self.spec.lr, self.spec.steps, self.spec.warmup_frac)(step)
