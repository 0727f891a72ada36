"""One Orbax CheckpointManager per training stage: params, optimiser state, step and the data
iterator state, saved together (async, keep-last-K) so a killed stage resumes exactly.

A checkpoint is only ever written after its losses were checked finite (see trainer.py). Each one
also stores a fingerprint of its arrays (two wrapping integer sums of their bit patterns per leaf,
exact and independent of the sharding), checked after a restore: a checkpoint whose files were
damaged but still read (or no longer read) is set aside under `<stage>/corrupt_checkpoints/` and
the previous good step is used instead, with a message (`restore_latest_good`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class DiskFull(RuntimeError):
  """A checkpoint could not be written for lack of space; the earlier checkpoints are intact."""


# free space kept beyond a checkpoint's size (metadata, the JSON item, other writers)
DISK_MARGIN_BYTES = 64 << 20


def _tree_bytes(tree: Any) -> int:
  return sum(
    int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
    if hasattr(x, "shape") and hasattr(x, "dtype")
  )


def _free_bytes(path: str) -> int:
  while not os.path.exists(path):  # the first save creates the directory
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def _is_disk_full(e: BaseException) -> bool:
  """ENOSPC anywhere in the exception's chain (Orbax wraps the OSError of its writer threads)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


class CheckpointCorrupt(RuntimeError):
  """A checkpoint step that cannot be restored or does not match its fingerprint."""


def _leaf_fingerprint(x) -> jax.Array:
  """(sum of the bit patterns, sum of bit pattern x (index + 1)), both wrapping uint32."""
  x = jnp.asarray(x)
  size = x.dtype.itemsize
  if size == 8:
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
  elif size in (1, 2, 4):
    u = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size])
  else:
    raise TypeError(f"no fingerprint for dtype {x.dtype}")
  u = u.reshape(-1).astype(jnp.uint32)
  idx = jnp.arange(1, u.size + 1, dtype=jnp.uint32)
  return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * idx, dtype=jnp.uint32)])


@jax.jit
def _fingerprints(tree):
  return jax.tree.map(_leaf_fingerprint, tree)


def fingerprint(tree: Any, compiled=None) -> dict[str, list[int]]:
  """{leaf path: [two uint32 sums]} of a pytree of arrays (computed where the arrays live);
  `compiled`: `_fingerprints` compiled ahead for this tree (StageCheckpointer.prepare)."""
  fps = jax.device_get((compiled or _fingerprints)(tree))
  flat = jax.tree_util.tree_flatten_with_path(fps)[0]
  return {jax.tree_util.keystr(path): [int(v) for v in np.asarray(fp)] for path, fp in flat}


class StageCheckpointer:
  """Wraps `ocp.CheckpointManager` with items `state` (pytree) and `data` (JSON)."""

  def __init__(self, directory: str, *, keep_last: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep_last, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
    self._fp_compiled, self._fp_thread = None, None

  def prepare(self, state: Any) -> None:
    """Compiles the fingerprint of `state`'s structure in a background thread while the stage
    compiles its step, so that the first save does not stall the step loop on it (seconds on a
    GPU for the hundreds of arrays of a model and its optimiser state)."""
    abstract = abstract_like(state)

    def compile_fingerprints():
      try:
        self._fp_compiled = _fingerprints.lower(abstract).compile()
      except Exception:  # the save then compiles it itself, as without prepare
        self._fp_compiled = None

    self._fp_thread = threading.Thread(target=compile_fingerprints, daemon=True, name="fingerprint-compile")
    self._fp_thread.start()

  def _fingerprint(self, state: Any) -> dict[str, list[int]]:
    if self._fp_thread is not None:
      self._fp_thread.join()
      self._fp_thread = None
    if self._fp_compiled is not None:
      try:
        return fingerprint(state, self._fp_compiled)
      except (TypeError, ValueError):  # another structure or placement than prepared
        self._fp_compiled = None
    return fingerprint(state)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> None:
    """`data_state` is this process's iterator state; every process calls save (collective)."""
    # Orbax writes JSON items from the primary process only, and each process reads its own data
    # shard: gather every process's iterator state so each can restore its own.
    need = _tree_bytes(state) // jax.process_count() + DISK_MARGIN_BYTES
    free = _free_bytes(self.directory)
    if free < need:  # refused before writing: Orbax's writer threads fail noisily on ENOSPC
      raise self._disk_full(step, f"it needs about {need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free")
    data = {"per_process": _gather_json(data_state), "fingerprint": self._fingerprint(state)}
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
        force=force,
      )
    except Exception as e:
      if _is_disk_full(e):
        raise self._disk_full(step, "the disk filled while writing") from e
      raise

  def _disk_full(self, step: int | None, why: str) -> DiskFull:
    self.manager.reload()  # a step whose write failed is not finalized: it is not counted
    last = [s for s in self.manager.all_steps() if s != step]
    kept = f"the last checkpoint, step {max(last)}, is intact" if last else "no checkpoint was lost"
    what = f"step {step}" if step is not None else "a checkpoint"
    return DiskFull(
      f"disk full while saving {what} to {self.directory} ({why}); {kept}. "
      "Free space and rerun the same command to resume"
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """Restores into `abstract_state` (a pytree of jax.ShapeDtypeStruct with shardings)."""
    try:
      out = self.manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
      )
    except Exception as e:  # orbax raises many types; name the directory and step for the user
      first = str(e).strip().splitlines()
      raise CheckpointCorrupt(
        f"cannot restore checkpoint step {step} from {self.directory}: "
        f"{type(e).__name__}: {first[0] if first else ''}"
      ) from e
    data = out["data"]
    saved_fp = data.get("fingerprint") if isinstance(data, dict) else None
    if saved_fp is not None:  # checkpoints written before fingerprints have none
      got = fingerprint(out["state"])
      bad = sorted(k for k in set(saved_fp) | set(got) if saved_fp.get(k) != got.get(k))
      if bad:
        raise CheckpointCorrupt(
          f"checkpoint step {step} in {self.directory} does not match its "
          f"fingerprint in {len(bad)} array(s) (e.g. {bad[0]}): its files "
          "were damaged after it was written"
        )
    if isinstance(data, dict) and "per_process" in data:
      states = data["per_process"]
      if len(states) != jax.process_count():
        raise RuntimeError(
          f"checkpoint step {step} in {self.directory} was written by {len(states)} processes, "
          f"this run has {jax.process_count()}: each process's data position cannot be carried "
          "over to a different process count. Rerun with the original process count."
        )
      data = states[jax.process_index()]
    return out["state"], data

  def restore_latest_good(self, abstract_state: Any, log=print) -> tuple[int, Any, Any]:
    """(step, state, data state) of the newest step that restores and matches its fingerprint, or
    (0, None, None) when none does. Each step that fails is moved to
    `<stage>/corrupt_checkpoints/<step>` (process 0; kept for inspection, never deleted) with a
    message, and the next older one is tried."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data = self.restore(step, abstract_state)
        return step, state, data
      except CheckpointCorrupt as e:
        aside = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints", str(step))
        log(f"{e}; moved to {aside}, trying the previous checkpoint")
        self._set_aside(step, aside)
    return 0, None, None

  def _set_aside(self, step: int, aside: str) -> None:
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      dst = aside
      n = 1
      while os.path.exists(dst):
        dst, n = f"{aside}.{n}", n + 1
      os.rename(os.path.join(self.directory, str(step)), dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"zebra_jax checkpoint {step} set aside")
    self.manager.reload()

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # an async save's error surfaces here
      if _is_disk_full(e):
        raise self._disk_full(None, "the disk filled while writing") from e
      raise

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()


def _gather_json(obj: Any) -> list:
  """[obj of process 0, obj of process 1, ...] on every process (JSON-able objects)."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils

  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
  sizes = np.asarray(sizes).reshape(-1)
  buf = np.zeros(int(sizes.max()), np.uint8)
  buf[: raw.size] = raw
  every = np.asarray(multihost_utils.process_allgather(buf))
  return [json.loads(every[i, : int(n)].tobytes().decode()) for i, n in enumerate(sizes)]


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as a restore target."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )
