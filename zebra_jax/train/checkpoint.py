"""One Orbax CheckpointManager per training stage: params, optimiser state, step and the data
iterator state, saved together (async, keep-last-K) so a killed stage resumes exactly.

A checkpoint is only ever written after its losses were checked finite (see trainer.py), so the
latest checkpoint is always a good one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
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
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """Restores into `abstract_state` (a pytree of jax.ShapeDtypeStruct with shardings)."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; name the directory and step for the user
      raise RuntimeError(f"cannot restore checkpoint step {step} from {self.directory}: "
                         f"{type(e).__name__}: {e}. Delete that step directory to fall back to an "
                         "earlier checkpoint, or the stage directory to start the stage over.") from e
    return out["state"], out["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
