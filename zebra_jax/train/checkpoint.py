"""One Orbax CheckpointManager per training stage: params, optimiser state, step and the data
iterator state, saved together (async, keep-last-K) so a killed stage resumes exactly.

A checkpoint is only ever written after its losses were checked finite (see trainer.py), so the
latest checkpoint is always a good one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class StageCheckpointer:
  """Wraps `ocp.CheckpointManager` with items `state` (pytree) and `data` (JSON)."""

  def __init__(self, directory: str, *, keep_last: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep_last, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> None:
    """`data_state` is this process's iterator state; every process calls save (collective)."""
    # Orbax writes JSON items from the primary process only, and each process reads its own data
    # shard: gather every process's iterator state so each can restore its own.
    data = {"per_process": _gather_json(data_state)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """Restores into `abstract_state` (a pytree of jax.ShapeDtypeStruct with shardings)."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; name the directory and step for the user
      raise RuntimeError(f"cannot restore checkpoint step {step} from {self.directory}: "
                         f"{type(e).__name__}: {e}. Delete that step directory to fall back to an "
                         "earlier checkpoint, or the stage directory to start the stage over.") from e
    data = out["data"]
    if isinstance(data, dict) and "per_process" in data:
      states = data["per_process"]
      if len(states) != jax.process_count():
        raise RuntimeError(
            f"checkpoint step {step} in {self.directory} was written by {len(states)} processes, "
            f"this run has {jax.process_count()}: each process's data position cannot be carried "
            "over to a different process count. Rerun with the original process count.")
      data = states[jax.process_index()]
    return out["state"], data

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
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
  buf[:raw.size] = raw
  every = np.asarray(multihost_utils.process_allgather(buf))
  return [json.loads(every[i, :int(n)].tobytes().decode()) for i, n in enumerate(sizes)]


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
