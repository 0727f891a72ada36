"""Guards on a run's workdir: one run at a time (a lock file), and no silent change of settings under
stages that already hold artifacts or checkpoints.

Lock: process 0 of a run creates `<workdir>/.lock` (O_EXCL) holding its pid, host and start time,
and removes it when the run ends, however it ends short of SIGKILL. A lock whose pid is gone on this
host is stale (a killed run) and is taken over with a message; a live one, or one from another host
(which cannot be checked from here), stops the new run with a one-line error saying whose it is.

Settings: `config.json` records the settings of the last run. A rerun compares its settings with
them, field by field; a changed field that a stage with state on disk (its directory exists: an
artifact or checkpoints) read, directly or through an earlier stage's output, stops the run with the
fields and the stages named. `--config.accept_config_changes=True` continues anyway; the earlier
config is then kept as `config.<n>.json` next to the new one, so the record of what produced the
artifacts is not lost.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from zebra_jax.distill.config import RunConfigError

LOCK = ".lock"

# the config sections each stage reads (its own section plus what builds its models and data)
STAGE_SECTIONS = {
  "teacher": ("teacher",),
  "samples": ("teacher", "samples", "data", "seed"),
  "ild_mla": ("teacher", "data", "train", "model", "ild", "seed"),
  "ild_mamba": ("teacher", "data", "train", "model", "ild", "seed"),
  "select": ("teacher", "data", "model", "select", "seed"),
  "assemble": ("teacher", "model", "select"),
  "kd": ("teacher", "kd_teacher", "data", "train", "model", "kd", "seed"),
  "pairs": ("teacher", "pairs", "data", "seed"),
  "dpo": ("teacher", "data", "train", "model", "dpo", "seed"),
  "stepwise": ("teacher", "kd_teacher", "data", "train", "model", "stepwise", "seed"),
}
# fields that change how a run is run or logged, never what it computes (remat_policy: which
# activations the backward recomputes rather than keeps; added after workdirs already existed)
BOOKKEEPING = (
  "name",
  "workdir",
  "stages",
  "mesh",
  "accept_config_changes",
  "train.log_every",
  "train.checkpoint_every",
  "train.keep_last",
  "train.async_checkpoint",
  "train.eval_batches",
  "train.keep_checkpoints",
  "train.prefetch",
  "train.remat_policy",
  "samples.cache_window",
)


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir."""


def check_workdir(workdir: str) -> None:
  """A workdir must be a directory (or not exist yet): a file there fails by name, before any stage."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunConfigError(f"workdir {workdir} exists and is not a directory; choose another --workdir")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


class WorkdirLock:
  """`with WorkdirLock(workdir, log):` holds `<workdir>/.lock` for the block (process 0 only)."""

  def __init__(self, workdir: str, log=print, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK)
    self.log = log
    self.enabled = enabled
    self.held = False

  def _write(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(
        {
          "pid": os.getpid(),
          "host": socket.gethostname(),
          "since": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        f,
      )
    return True

  def acquire(self) -> None:
    if not self.enabled:
      return
    for _ in range(2):
      if self._write():
        self.held = True
        return
      try:
        with open(self.path) as f:
          owner = json.load(f)
        pid, host, since = int(owner["pid"]), str(owner["host"]), owner.get("since", "?")
      except (OSError, ValueError, KeyError, TypeError):
        owner, pid, host, since = None, None, None, None
      if owner is None:
        # a lock being written this instant, or a torn one: do not guess
        raise WorkdirBusy(
          f"{self.path} exists but cannot be read; if no run is using "
          f"{os.path.dirname(self.path)}, remove it and rerun"
        )
      if host == socket.gethostname() and not _pid_alive(pid):
        self.log(f"[workdir] taking over the stale lock of pid {pid} (started {since}, no longer running)")
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      where = "this host" if host == socket.gethostname() else f"host {host}"
      raise WorkdirBusy(
        f"{os.path.dirname(self.path)} is in use by pid {pid} on {where} since "
        f"{since}; wait for that run to end (or remove {self.path} if it is gone)"
      )
    raise WorkdirBusy(f"{self.path}: another run took the workdir while this one started")

  def release(self) -> None:
    if self.held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self.held = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
    return False


# where the MLA layers go: read by select / assemble (and what follows), never by the ILD students,
# which are all-MLA or all-Mamba2
PLACEMENT = ("model.n_mla", "model.mla_layers", "model.attn_layers")


def _is(field: str, names) -> bool:
  return any(field == n or field.startswith(n + ".") for n in names)


def stage_reads(stage: str, field: str) -> bool:
  """Whether `stage` reads the dotted config `field` itself (not through an earlier stage)."""
  if _is(field, BOOKKEEPING):
    return False
  if stage in ("teacher", "samples", "ild_mla", "ild_mamba") and _is(field, PLACEMENT):
    return False
  return field.split(".", 1)[0] in STAGE_SECTIONS.get(stage, ())


def changed_fields(old: dict, new: dict) -> dict[str, tuple]:
  """{dotted field: (old value, new value)} for every field that differs (bookkeeping excluded). A
  field the earlier run's config.json lacks (added to the code since) and that holds its default
  now is no change: that run ran with the default's behaviour."""
  # lazy: pulls in jax, flax, optax, which importing this module does not
  from zebra_jax.convert.orbax_io import flatten_dotted

  # lazy: pulls in ml_collections, which importing this module does not
  from zebra_jax.distill.config import base_config

  a, b = flatten_dotted(old), flatten_dotted(new)
  defaults = flatten_dotted(json.loads(base_config().to_json()))
  for k in set(b) - set(a):
    if k in defaults and b[k] == defaults[k]:
      a[k] = b[k]
  return {
    k: (a.get(k, "<unset>"), b.get(k, "<unset>"))
    for k in sorted(set(a) | set(b))
    if not _is(k, BOOKKEEPING) and a.get(k, "<unset>") != b.get(k, "<unset>")
  }


def affected_stages(fields, stages: list[str], has_state) -> list[str]:
  """Stages with state on disk that read a changed field, directly or through an earlier stage's
  output (in run order)."""
  out, upstream_changed = [], False
  for stage in stages:
    upstream_changed = upstream_changed or any(stage_reads(stage, f) for f in fields)
    if upstream_changed and has_state(stage):
      out.append(stage)
  return out


def check_settings(
  workdir: str, new_json: str, stages: list[str], accept: bool, log=print, keep_old: bool = True
) -> None:
  """Refuses (RunConfigError) a rerun whose settings differ from config.json's under stages with
  state on disk; with accept=True continues, keeping the old config as config.<n>.json when
  `keep_old` (process 0 of a multi-process run). Call before config.json is rewritten."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise RunConfigError(
      f"{path} cannot be read ({type(e).__name__}: {e}), so the settings of the "
      "earlier run are unknown; use a new workdir, or move the file away to "
      "accept the existing artifacts as they are"
    ) from None
  new = json.loads(new_json)
  fields = changed_fields(old, new)
  if not fields:
    return

  def has_state(stage):
    d = os.path.join(workdir, stage)
    return os.path.isdir(d) and bool(os.listdir(d))

  order = list(old.get("stages") or ()) + [s for s in stages if s not in (old.get("stages") or ())]
  hit = affected_stages(fields, order, has_state)
  if not hit:
    return
  diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in fields.items())
  if not accept:
    raise RunConfigError(
      f"{workdir} holds stage(s) {hit} made with other settings ({diff}); rerun with the "
      "earlier settings, use a new workdir, or add --config.accept_config_changes=True to "
      "continue with the new ones"
    )
  if not keep_old:
    return
  n = 1
  while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
    n += 1
  os.replace(path, os.path.join(workdir, f"config.{n}.json"))
  log(
    f"[workdir] settings changed under stage(s) {hit} ({diff}); continuing as asked "
    f"(accept_config_changes); the earlier settings are kept in config.{n}.json"
  )
