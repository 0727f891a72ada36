"""The training-stage runner: gradient accumulation, trainable filters, the learning-rate schedule,
keep-last-K checkpoints, metrics on resume, and the non-finite guard."""

import json
import math
import gc
import os
import re
import time
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from zebra_jax.config import LlamaConfig
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.parallel import make_mesh
from zebra_jax.train import losses
from zebra_jax.train.checkpoint import StageCheckpointer
from zebra_jax.train.metrics import MetricsWriter, read_metrics
from zebra_jax.train.optim import lr_schedule, make_optimizer
from zebra_jax.train.trainer import TIMING_KEYS, NonFiniteLossError, Preempted, StageTrainer, TrainSpec

CFG = LlamaConfig(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
)
T = 12
MESH = None


def mesh1():
  global MESH
  if MESH is None:
    MESH = make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return MESH


def model(seed=0):
  return CausalLM(CFG, rngs=nnx.Rngs(seed))


def params_np(m):
  return {
    ".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))
  }


def ce_loss(student, teachers, batch):
  tokens = batch["tokens"]
  logits = student(tokens[:, :-1])
  ce = losses.cross_entropy(logits, tokens[:, 1:])
  return ce, {"ce": ce}


class Batches:
  """Deterministic synthetic batches with a resumable position; `poison` marks a step whose loss
  the poisoned loss function turns into NaN."""

  def __init__(self, batch_size, seed=0, poison_at=None):
    self.batch_size, self.seed, self.pos, self.poison_at = batch_size, seed, 0, poison_at

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.pos])
    self.pos += 1
    b = {"tokens": rng.integers(0, CFG.vocab_size, (self.batch_size, T)).astype(np.int32)}
    if self.poison_at is not None:
      # (B, T) like tokens: the trainer shards every batch leaf as (accum, micro, T).
      b["poison"] = np.full((self.batch_size, T), float(self.pos == self.poison_at), np.float32)
    return b

  def get_state(self):
    return {"pos": self.pos}

  def set_state(self, s):
    self.pos = int(s["pos"])


def spec(**kw):
  base = dict(
    steps=3,
    lr=1e-3,
    batch_size=4,
    seq_len=T,
    warmup_frac=0.0,
    grad_clip=None,
    log_every=1,
    checkpoint_every=100,
    keep_last=2,
    async_checkpoint=False,
    progress=False,
  )
  base.update(kw)
  return TrainSpec(**base)


def run(tmp, name, m, sp, data, loss_fn=ce_loss, **kw):
  """Runs one stage; returns its metrics rows (the model is updated in place)."""
  tr = StageTrainer(name=name, workdir=str(tmp), model=m, loss_fn=loss_fn, spec=sp, mesh=mesh1(), **kw)
  tr.run(data)
  return read_metrics(os.path.join(str(tmp), name))


def curve(rows):
  """Metric rows without the timing-dependent throughput."""
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


# -- gradient accumulation ------------------------------------------------------------------------
def test_grad_accumulation_equals_one_big_batch(tmp_path):
  m0 = model()
  init = params_np(m0)
  # Reference for step 1, computed here: full-batch loss and gradient norm.
  tokens = jnp.asarray(next(Batches(4))["tokens"])

  def full_loss(params):
    mm = nnx.merge(nnx.graphdef(m0), params, nnx.state(m0, nnx.Not(nnx.Param)))
    return losses.cross_entropy(mm(tokens[:, :-1]), tokens[:, 1:])

  loss1, g1 = jax.jit(jax.value_and_grad(full_loss))(nnx.state(m0, nnx.Param))

  results = {}
  for accum in (1, 2):
    m = model()
    results[accum] = (run(tmp_path, f"accum{accum}", m, spec(grad_accum=accum), Batches(4)), params_np(m))
  rows1, p1 = results[1]
  np.testing.assert_allclose(rows1[0]["loss"], float(loss1), rtol=1e-6)
  np.testing.assert_allclose(rows1[0]["grad_norm"], float(optax.global_norm(g1)), rtol=1e-5)
  assert max(np.abs(p1[k] - init[k]).max() for k in p1) > 1e-4  # training moved the weights
  for accum in (2,):
    rows, p = results[accum]
    assert len(rows) == len(rows1) == 3
    for r, r1 in zip(rows, rows1):
      for k in ("loss", "ce", "grad_norm", "lr"):
        np.testing.assert_allclose(r[k], r1[k], rtol=2e-5, err_msg=f"accum={accum} {k}")
    for k in p1:
      np.testing.assert_allclose(p[k], p1[k], atol=2e-6, err_msg=f"accum={accum} {k}")


def test_batch_must_split_into_micro_batches(tmp_path):
  with pytest.raises(ValueError, match="grad_accum"):
    StageTrainer(
      name="bad",
      workdir=str(tmp_path),
      model=model(),
      loss_fn=ce_loss,
      spec=spec(batch_size=6, grad_accum=4),
      mesh=mesh1(),
    )


# -- trainable filter ----------------------------------------------------------------------------
def test_trainable_filter_leaves_frozen_parameters_bitwise_unchanged(tmp_path):
  m = model()
  init = params_np(m)

  def trainable(path, _var):
    names = list(map(str, path))
    return not ("mlp" in names or "embed_tokens" in names)

  # weight decay would move frozen parameters too if they reached the optimiser
  run(tmp_path, "frozen", m, spec(steps=3, weight_decay=0.1), Batches(4), trainable=trainable)
  after = params_np(m)
  frozen = [k for k in init if ".mlp." in k or k.startswith("embed_tokens")]
  free = [k for k in init if k not in frozen]
  assert frozen and free
  for k in frozen:
    assert np.array_equal(after[k], init[k]), f"frozen {k} changed"
  for k in free:
    assert not np.array_equal(after[k], init[k]), f"trainable {k} did not change"


def test_trainable_filter_selecting_nothing_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="selects no parameters"):
    StageTrainer(
      name="none",
      workdir=str(tmp_path),
      model=model(),
      loss_fn=ce_loss,
      spec=spec(),
      mesh=mesh1(),
      trainable=lambda path, var: False,
    )


# -- learning-rate schedule ----------------------------------------------------------------------
def _hf_cosine(lr, total, warmup, t):
  """transformers.get_cosine_schedule_with_warmup, written out."""
  if t < warmup:
    return lr * t / warmup
  return lr * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("total,frac,warmup", [(100, 0.1, 10), (50, 0.01, 1), (1000, 0.01, 10), (20, 0.0, 0)])
def test_lr_schedule_is_linear_warmup_then_cosine_to_zero(total, frac, warmup):
  lr = 3e-4
  sched = lr_schedule(lr, total, frac)
  for t in range(total + 1):
    np.testing.assert_allclose(
      float(sched(t)), _hf_cosine(lr, total, warmup, t), rtol=1e-5, atol=lr * 1e-6, err_msg=f"step {t}"
    )


def test_adamw_applies_the_schedule_from_the_first_update():
  """With a constant gradient Adam's bias-corrected step is exactly lr(t) * g / (|g| + eps), so the
  parameter trajectory exposes which learning rate each update used (t = 0 for the first one)."""
  lr, total, eps = 1e-2, 10, 1e-8
  opt = make_optimizer(lr, total, warmup_frac=0.2, grad_clip=None, eps=eps)
  g = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)
  p = jnp.zeros(3, jnp.float32)
  state = opt.init(p)
  want = np.zeros(3)
  for t in range(total):
    upd, state = opt.update(g, state, p)
    p = optax.apply_updates(p, upd)
    want -= _hf_cosine(lr, total, 2, t) * np.asarray(g) / (np.abs(np.asarray(g)) + eps)
    np.testing.assert_allclose(np.asarray(p), want, rtol=1e-5, atol=1e-9, err_msg=f"update {t}")


# -- checkpoints, resume, metrics ----------------------------------------------------------------
def _checkpoint_steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


@pytest.mark.parametrize("async_save", [False, True])
def test_checkpoints_keep_last_k(tmp_path, async_save):
  m = model()
  sp = spec(steps=5, checkpoint_every=1, keep_last=2, async_checkpoint=async_save)
  run(tmp_path, "ck", m, sp, Batches(4))
  ckdir = tmp_path / "ck" / "checkpoints"
  assert _checkpoint_steps(ckdir) == [4, 5]
  # The newest checkpoint holds the final parameters and the data position.
  tr = StageTrainer(
    name="ck", workdir=str(tmp_path), model=model(), loss_fn=ce_loss, spec=spec(steps=5), mesh=mesh1()
  )
  ck = StageCheckpointer(str(ckdir), keep_last=2, async_save=False)
  from zebra_jax.train.checkpoint import abstract_like

  restored, data_state = ck.restore(
    5, {"trainable": abstract_like(tr.trainable), "opt_state": abstract_like(tr.opt_state)}
  )
  ck.close()
  assert data_state == {"pos": 5}
  final = params_np(m)
  for p, v in nnx.to_flat_state(restored["trainable"]):
    assert np.array_equal(np.asarray(v.get_value()), final[".".join(map(str, p))])


class Crash(RuntimeError):
  pass


class CrashingBatches(Batches):
  def __init__(self, batch_size, crash_at):
    super().__init__(batch_size)
    self.crash_at = crash_at

  def __next__(self):
    if self.pos + 1 == self.crash_at:
      raise Crash(f"injected failure fetching batch {self.crash_at}")
    return super().__next__()


class SigtermBatches(Batches):
  """Sends this process SIGTERM while fetching batch `at` (as a TPU preemption notice would)."""

  def __init__(self, batch_size, at):
    super().__init__(batch_size)
    self.at = at

  def __next__(self):
    if self.pos + 1 == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().__next__()


@pytest.mark.parametrize("how", ["crash", "sigterm"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, how):
  sp = spec(steps=7, checkpoint_every=3, log_every=2, warmup_frac=0.2)
  m_ref = model()
  rows_ref = run(tmp_path / "ref", "stage", m_ref, sp, Batches(4))
  assert [r["step"] for r in rows_ref] == [2, 4, 6, 7]

  stage_dir = tmp_path / "int" / "stage"
  if how == "crash":  # crash fetching step 6's batch: the last checkpoint is step 3, 4-5 replay
    with pytest.raises(Crash):
      run(tmp_path / "int", "stage", model(), sp, CrashingBatches(4, crash_at=6))
    assert _checkpoint_steps(stage_dir / "checkpoints") == [3]
  else:  # SIGTERM during step 5: that step finishes and is saved, then the run stops
    with pytest.raises(Preempted, match="saved step 5"):
      run(tmp_path / "int", "stage", model(), sp, SigtermBatches(4, at=5))
    assert _checkpoint_steps(stage_dir / "checkpoints") == [3, 5]
  assert [r["step"] for r in read_metrics(stage_dir)] == [2, 4]  # no extra row at the kill

  m = model()
  rows = run(tmp_path / "int", "stage", m, sp, Batches(4))
  assert curve(rows) == curve(rows_ref)
  ref = params_np(m_ref)
  for k, v in params_np(m).items():
    assert np.array_equal(v, ref[k]), k


def _damage(path, size, how):
  with open(path, "r+b") as f:
    if how == "garbled":
      f.seek(size // 2)
      f.write(np.random.default_rng(0).integers(0, 256, min(4096, size // 4), np.uint8).tobytes())
    else:
      f.truncate(size // 3)


@pytest.mark.parametrize("damage", ["garbled", "unreadable", "values"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
  """Issue 18 item 7: the newest checkpoint's largest file is garbled in place (same size, 4 KiB of
  noise) or cut short, or its arrays read back with other values than were saved (simulated by
  changing the stored fingerprint: the reader's own checks catch the first two here). The resume
  notices, sets the step aside, resumes from the one before, and ends where an uninterrupted run
  ends."""
  sp = spec(steps=7, checkpoint_every=3, log_every=2, keep_last=5)
  m_ref = model()
  rows_ref = run(tmp_path / "ref", "stage", m_ref, sp, Batches(4))
  stage_dir = tmp_path / "int" / "stage"
  with pytest.raises(Crash):
    run(tmp_path / "int", "stage", model(), sp, CrashingBatches(4, crash_at=7))
  assert _checkpoint_steps(stage_dir / "checkpoints") == [3, 6]
  files = [os.path.join(r, f) for r, _, fs in os.walk(stage_dir / "checkpoints" / "6") for f in fs]
  biggest = max(files, key=os.path.getsize)
  size = os.path.getsize(biggest)
  if damage == "values":
    data_dir = stage_dir / "checkpoints" / "6" / "data"
    [meta] = [
      str(data_dir / f)
      for f in os.listdir(data_dir)
      if "fingerprint" in (data_dir / f).read_text(errors="ignore")
    ]
    with open(meta) as f:
      saved = json.load(f)
    key = sorted(saved["fingerprint"])[0]
    saved["fingerprint"][key][0] ^= 1
    with open(meta, "w") as f:
      json.dump(saved, f)
  else:
    _damage(biggest, size, damage)
  capsys.readouterr()
  m = model()
  rows = run(tmp_path / "int", "stage", m, sp, Batches(4))
  out = capsys.readouterr().out
  assert "checkpoint step 6" in out and "trying the previous checkpoint" in out, out
  if damage == "values":
    assert "does not match its fingerprint" in out
  assert "resumed from step 3" in out
  assert (stage_dir / "corrupt_checkpoints" / "6").is_dir()
  assert curve(rows) == curve(rows_ref)
  ref = params_np(m_ref)
  for k, v in params_np(m).items():
    assert np.array_equal(v, ref[k]), k


def test_fingerprints_are_exact_and_see_any_changed_value():
  from zebra_jax.train.checkpoint import fingerprint

  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  tree = {"a": jnp.asarray(x), "b": jnp.asarray(x, jnp.bfloat16), "n": jnp.int32(7)}
  fp = fingerprint(tree)
  bits = x.view(np.uint32).reshape(-1).astype(np.uint64)  # the same sums in numpy, mod 2**32
  assert fp["['a']"] == [
    int(bits.sum() % 2**32),
    int((bits * np.arange(1, 13, dtype=np.uint64)).sum() % 2**32),
  ]
  y = x.copy()
  y[1, 2] = np.nextafter(y[1, 2], np.float32(100))  # one ulp
  assert fingerprint({"a": jnp.asarray(y)})["['a']"] != fp["['a']"]
  swapped = x.reshape(-1)[[1, 0] + list(range(2, 12))].reshape(3, 4)
  assert fingerprint({"a": jnp.asarray(swapped)})["['a']"][1] != fp["['a']"][1]


def test_sigterm_while_the_last_checkpoint_is_written_still_stops_the_run(tmp_path, monkeypatch):
  """A preemption notice that lands after the last step (while the checkpointer closes) must not be
  swallowed: the stage is complete on disk, the run stops with Preempted, a rerun finishes it."""
  close = StageCheckpointer.close

  def close_with_sigterm(self):
    os.kill(os.getpid(), signal.SIGTERM)
    close(self)

  monkeypatch.setattr(StageCheckpointer, "close", close_with_sigterm)
  with pytest.raises(Preempted, match="finished and saved step 3"):
    run(tmp_path, "stage", model(), spec(steps=3), Batches(4))
  monkeypatch.setattr(StageCheckpointer, "close", close)
  assert _checkpoint_steps(tmp_path / "stage" / "checkpoints") == [3]
  m = model()
  rows = run(tmp_path, "stage", m, spec(steps=3), Batches(4))  # resumes at the end: no step runs
  assert [r["step"] for r in rows] == [1, 2, 3]


def test_metrics_resume_drops_rows_after_the_checkpoint_and_a_torn_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
  path.write_text("\n".join(rows) + "\n" + '{"step": 5, "lo')  # killed mid-write
  w = MetricsWriter(str(tmp_path), resume_step=3)
  w.write(4, {"loss": 0.5})
  w.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
    (1, 1.0),
    (2, 0.5),
    (3, 1.0 / 3),
    (4, 0.5),
  ]


# -- non-finite guard ----------------------------------------------------------------------------
def poisoned_loss(student, teachers, batch):
  loss, metrics = ce_loss(student, teachers, batch)
  return loss * jnp.where(batch["poison"][0, 0] > 0, jnp.nan, 1.0), metrics


def test_nan_loss_stops_before_checkpointing_the_bad_state(tmp_path):
  sp = spec(steps=8, checkpoint_every=2, log_every=4, keep_last=10)
  # Poison step 5 (neither a log nor a checkpoint step): the step-6 checkpoint's check catches it.
  with pytest.raises(NonFiniteLossError, match="step 5") as e:
    run(tmp_path / "bad", "stage", model(), sp, Batches(4, poison_at=5), loss_fn=poisoned_loss)
  assert "checkpoint is step 4" in str(e.value)
  bad_dir = tmp_path / "bad" / "stage"
  assert _checkpoint_steps(bad_dir / "checkpoints") == [2, 4]
  assert all(math.isfinite(r["loss"]) for r in read_metrics(bad_dir))
  # The surviving step-4 checkpoint is bitwise the one a clean run writes.
  run(tmp_path / "good", "stage", model(), sp, Batches(4, poison_at=10**9), loss_fn=poisoned_loss)
  from zebra_jax.train.checkpoint import abstract_like

  tr = StageTrainer(
    name="x", workdir=str(tmp_path / "x"), model=model(), loss_fn=ce_loss, spec=sp, mesh=mesh1()
  )
  target = {"trainable": abstract_like(tr.trainable), "opt_state": abstract_like(tr.opt_state)}
  got = []
  for d in (bad_dir, tmp_path / "good" / "stage"):
    ck = StageCheckpointer(str(d / "checkpoints"), async_save=False, keep_last=10)
    got.append(ck.restore(4, target))
    ck.close()
  (a, da), (b, db) = got
  assert da == db == {"pos": 4}
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y))


def test_rows_are_read_one_step_late_and_equal_the_synchronous_ones(tmp_path, monkeypatch):
  """A log step's metrics are fetched after the next step is dispatched (the device is never idle
  for logging), yet the rows are those of log steps 2, 4, 6, 7 with their own values: the losses
  equal a run that logs every step (which, with checkpoints every step, reads each at once); a NaN
  at a log step is still reported at that step."""
  import zebra_jax.train.trainer as trainer_lib

  order, real = [], trainer_lib.jax.device_get

  def spy(x):
    order.append(("get", len(dispatched)))
    return real(x)

  dispatched = []
  orig_batch = trainer_lib.StageTrainer._device_batch
  monkeypatch.setattr(
    trainer_lib.StageTrainer, "_device_batch", lambda self, b: dispatched.append(1) or orig_batch(self, b)
  )
  monkeypatch.setattr(trainer_lib.jax, "device_get", spy)
  lagged = run(tmp_path / "lag", "s", model(), spec(steps=7, log_every=2), Batches(4))
  monkeypatch.setattr(trainer_lib.jax, "device_get", real)
  assert [r["step"] for r in lagged] == [2, 4, 6, 7]
  # step 2's metrics are read once step 3's batch was placed (dispatched), not before
  assert order[0] == ("get", 3)
  every = run(tmp_path / "sync", "s", model(), spec(steps=7, log_every=1, checkpoint_every=1), Batches(4))
  by_step = {r["step"]: r for r in curve(every)}
  assert curve(lagged) == [by_step[s] for s in (2, 4, 6, 7)]
  with pytest.raises(NonFiniteLossError, match="step 4"):
    run(
      tmp_path / "nan",
      "s",
      model(),
      spec(steps=7, log_every=2),
      Batches(4, poison_at=4),
      loss_fn=poisoned_loss,
    )


class SlowBatches(Batches):
  """Batches whose 5th read waits 0.3 s and runs a full garbage collection (a stalled loader)."""

  def __next__(self):
    if self.pos == 4:
      time.sleep(0.3)
      gc.collect()
    return super().__next__()


def test_each_row_says_how_long_the_host_waited_for_data_and_for_the_garbage_collector(tmp_path):
  """host_data_s / host_gc_s: the seconds of a log window spent in next(data) and in Python's
  collector, so a slow window of a GPU run says whether the loader or a collection stalled it. The
  window with the stalled read shows >= 0.3 s of data wait and the collection; the others do not;
  the collector's state is as before the run (no callback left, nothing frozen)."""
  callbacks = list(gc.callbacks)
  rows = run(tmp_path, "s", model(), spec(steps=8, log_every=2), SlowBatches(4))
  assert [r["step"] for r in rows] == [2, 4, 6, 8]
  by_step = {r["step"]: r for r in rows}
  # the 5th batch is read for step 5, before the row of step 4 is written (one step late)
  assert by_step[4]["host_data_s"] >= 0.3 and by_step[4]["host_gc_s"] > 0
  assert all(by_step[s]["host_data_s"] < 0.3 for s in (2, 6, 8))
  assert all(r["host_gc_s"] >= 0 and r["host_data_s"] >= 0 for r in rows)
  assert gc.callbacks == callbacks and gc.get_freeze_count() == 0


def test_update_that_overflows_the_parameters_is_never_checkpointed(tmp_path):
  """lr = 1e39 is a finite Python float but inf in float32: step 1's loss and gradient are finite,
  the updated parameters are not. The run must stop before saving them."""
  sp = spec(steps=4, lr=1e39, checkpoint_every=1, log_every=1)
  with pytest.raises(NonFiniteLossError, match="step 1"):
    run(tmp_path, "stage", model(), sp, Batches(4))
  ckdir = tmp_path / "stage" / "checkpoints"
  assert not os.path.exists(ckdir) or _checkpoint_steps(ckdir) == []


def test_kd_freeze_groups_train_only_the_named_complement(tmp_path):
  """kd.freeze=("embed", "mlp"): the recipe's KD trains mixers and norms only (MambaInLlama keeps
  the MLPs); every parameter lands in exactly one group, judged by its path here, independently."""
  from zebra_jax.distill.plan import frozen_filter, param_group

  m = model()
  init = params_np(m)
  expect = {
    k: (
      "embed"
      if k.startswith(("embed_tokens", "lm_head"))
      else "mlp"
      if ".mlp." in k
      else "mixer"
      if ".mixer." in k
      else "norm"
    )
    for k in init
  }
  got = {".".join(map(str, p)): param_group(p) for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param))}
  assert got == expect and set(expect.values()) == {"embed", "mlp", "mixer", "norm"}
  run(tmp_path, "kd_freeze", m, spec(steps=2), Batches(4), trainable=frozen_filter(("embed", "mlp")))
  after = params_np(m)
  for k, group in expect.items():
    assert np.array_equal(after[k], init[k]) == (group in ("embed", "mlp")), (k, group)
  with pytest.raises(ValueError, match="unknown parameter group"):
    frozen_filter(("mlps",))


def test_kd_freeze_config_is_validated():
  from zebra_jax.distill.config import RunConfigError, base_config, validate

  c = base_config()
  c.model.n_mla = 1
  c.kd.freeze = ("embed", "attention")
  with pytest.raises(RunConfigError, match="kd.freeze: unknown parameter group"):
    validate(c)
  c.kd.freeze = ("embed", "mlp", "norm", "mixer")
  with pytest.raises(RunConfigError, match="nothing would train"):
    validate(c)
  c.kd.freeze = ("embed", "mlp")
  validate(c)


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  import errno

  from zebra_jax.train import checkpoint as C
  from zebra_jax.train.trainer import EXIT_DISK_FULL, exit_codes

  state = {"w": jnp.arange(1024, dtype=jnp.float32)}
  ck = StageCheckpointer(str(tmp_path / "ck"), async_save=True)
  ck.save(1, state, {"pos": 1})
  ck.wait()
  # not enough free space for the next step: refused before anything is written
  monkeypatch.setattr(C, "_free_bytes", lambda path: 1000)
  with pytest.raises(
    C.DiskFull,
    match=r"disk full while saving step 2 to .*ck \(it needs about .*"
    r"the last checkpoint, step 1, is intact",
  ):
    ck.save(2, state, {"pos": 2})
  monkeypatch.undo()
  # the disk fills while the writer runs (Orbax wraps the OSError)

  def enospc(*a, **k):
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:
      raise RuntimeError("write failed") from e

  monkeypatch.setattr(ck.manager, "save", enospc)
  with pytest.raises(C.DiskFull, match="the disk filled while writing.*step 1, is intact"):
    ck.save(3, state, {"pos": 3})
  monkeypatch.undo()
  assert ck.latest_step() == 1
  got, data = ck.restore(1, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
  np.testing.assert_array_equal(np.asarray(got["w"]), np.arange(1024, dtype=np.float32))
  assert data == {"pos": 1}
  ck.close()
  with pytest.raises(SystemExit) as e, exit_codes():
    raise C.DiskFull("disk full while saving step 2")
  assert e.value.code == EXIT_DISK_FULL == 4


def test_per_group_learning_rates_scale_each_groups_adam_step(tmp_path):
  """kd.lr_scale: the first AdamW step (no warmup, no decay) moves a parameter by lr * scale *
  g / (|g| + eps), from numpy; a group at 0 does not move; the stage helper maps paths to groups."""
  from zebra_jax.distill.plan import group_lr_scale
  from zebra_jax.train.optim import make_optimizer

  rng = np.random.default_rng(0)
  params = {
    "a": jnp.asarray(rng.normal(size=5), jnp.float32),
    "b": jnp.asarray(rng.normal(size=5), jnp.float32),
  }
  g = {k: jnp.asarray(rng.normal(size=5), jnp.float32) for k in params}
  lr, eps = 1e-2, 1e-8
  opt = make_optimizer(lr, 10, warmup_frac=0.0, grad_clip=None, eps=eps, lr_scales={"a": 0.25, "b": 1.0})
  updates, _ = opt.update(g, opt.init(params), params)
  for k, s in (("a", 0.25), ("b", 1.0)):
    gk = np.asarray(g[k], np.float64)
    np.testing.assert_allclose(np.asarray(updates[k]), -lr * s * gk / (np.abs(gk) + eps), rtol=1e-5)

  assert group_lr_scale({"embed": 1.0, "mlp": 1.0}) is None  # all at 1: the plain optimizer
  m0, m1 = model(), model()
  before = params_np(m0)
  run(tmp_path, "plain", m0, spec(steps=2), Batches(4))
  run(tmp_path, "scaled", m1, spec(steps=2), Batches(4), lr_scale=group_lr_scale({"embed": 0.0, "mlp": 1.0}))
  plain, scaled = params_np(m0), params_np(m1)
  for name in before:
    if "embed_tokens" in name or "lm_head" in name:  # the "embed" group
      np.testing.assert_array_equal(scaled[name], before[name])  # scale 0: unchanged
      assert not np.array_equal(plain[name], before[name])
    else:  # the other groups train as without scales, up to the embeddings' effect on the loss
      assert not np.array_equal(scaled[name], before[name]), name


def test_the_progress_bar_starts_after_the_compiled_first_step_fresh_or_resumed(tmp_path, monkeypatch):
  """Issue 17 item 5: the bar's clock (rate, ETA) starts once the first step of this process is
  dispatched, so the compile is not counted; a resumed stage starts it at the restored step + 1."""
  import tqdm.auto

  bars = []

  class Recorder:
    def __init__(self, total, initial, **kw):
      self.total, self.initial, self.updates = total, initial, 0
      bars.append(self)

    def update(self, n):
      self.updates += n

    def set_postfix(self, *a, **k):
      pass

    def close(self):
      pass

  monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
  run(tmp_path, "bar", model(), spec(steps=4, checkpoint_every=2, progress=True), Batches(4))
  assert [(b.total, b.initial, b.updates) for b in bars] == [(4, 1, 3)]
  # resumed from its step-4 checkpoint with more steps: the bar opens at step 5, counts the rest
  run(tmp_path, "bar", model(), spec(steps=6, checkpoint_every=2, progress=True), Batches(4))
  assert [(b.total, b.initial, b.updates) for b in bars[1:]] == [(6, 5, 1)]


def test_a_prepared_checkpointer_saves_the_same_fingerprint(tmp_path):
  """StageCheckpointer.prepare compiles the fingerprint ahead in a thread (so the first save of a
  stage does not stall on it); the saved fingerprint equals the numpy sums of the arrays' bits, as
  without prepare, and a state of another structure still saves (compiled on the spot)."""
  from zebra_jax.train.checkpoint import StageCheckpointer

  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  state = {"trainable": {"w": jnp.asarray(x)}, "opt_state": {"mu": jnp.asarray(2 * x)}}
  bits = x.view(np.uint32).reshape(-1).astype(np.uint64)
  want = [int(bits.sum() % 2**32), int((bits * np.arange(1, 13, dtype=np.uint64)).sum() % 2**32)]
  ck = StageCheckpointer(str(tmp_path / "ck"), async_save=False)
  ck.prepare(state)
  ck.save(1, state, {"pos": 1})
  assert ck._fp_compiled is not None  # the prepared executable was used
  _, data = ck.restore(
    1, {k: {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in d.items()} for k, d in state.items()}
  )
  other = {"trainable": {"w": jnp.asarray(x), "b": jnp.zeros(3)}, "opt_state": {}}
  ck.save(2, other, {"pos": 2})
  ck.close()
  with open(tmp_path / "ck" / "1" / "data" / "metadata", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["fingerprint"]["['trainable']['w']"] == want
  assert data == {"pos": 1}
  assert StageCheckpointer(str(tmp_path / "ck")).latest_step() == 2


def test_every_remat_policy_keeps_the_gradients_and_a_bad_name_is_refused():
  """train.remat_policy only changes what the backward recomputes: the float32 gradients of a
  hybrid (MLA + two Mamba2 blocks) equal the unrematerialised ones for every policy, the traced
  gradient holds one checkpoint per block (so the policy is really applied), and an unknown
  policy is refused by name, by the model and by the run config's validation."""
  from zebra_jax.config import REMAT_POLICIES, ConfigError, HybridConfig
  from zebra_jax.distill.config import RunConfigError, base_config, remat_setting, validate

  cfg = HybridConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    impl="reference",
    eos_token_id=None,
    mla_layers=(0,),
    q_lora_rank=16,
    kv_lora_rank=8,
    qk_rope_head_dim=4,
    qk_nope_head_dim=4,
    v_head_dim=8,
    d_state=8,
    headdim=8,
    chunk_size=8,
  )
  m = CausalLM(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 16)), jnp.int32)
  graph, params, rest = nnx.split(m, nnx.Param, ...)

  def grads(remat):
    m.remat = remat
    graph, _, rest = nnx.split(m, nnx.Param, ...)

    def loss(p):
      return losses.cross_entropy(nnx.merge(graph, p, rest)(tokens)[:, :-1], tokens[:, 1:])

    g = jax.grad(loss)
    # each rematerialised block is one remat equation whose params name the policy
    policies = re.findall(r"policy=([^\s\]]+)", str(jax.make_jaxpr(g)(params)))
    return jax.tree.leaves(jax.jit(g)(params)), policies

  ref, none = grads(False)
  assert none == []
  # (how the policy prints may change between jax versions; its class name "Dots..." has not)
  want = {True: "None", "full": "None", "dots": "Dots"}
  assert set(want) - {True} == set(REMAT_POLICIES)
  for policy in (True, *REMAT_POLICIES):
    got, policies = grads(policy)
    assert len(policies) == 3 and all(p.startswith(want[policy]) for p in policies), (policy, policies)
    for a, b in zip(ref, got):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
  m.remat = "everything"
  with pytest.raises(ConfigError, match="remat policy 'everything'"):
    m(tokens)
  c = base_config()
  c.train.remat, c.train.remat_policy = True, "dots"
  assert remat_setting(c) == "dots"
  c.train.remat = False
  assert remat_setting(c) is False
  c.train.remat_policy = "everything"
  with pytest.raises(RunConfigError, match="train.remat_policy must be one of"):
    validate(c)
