"""Run feedback: JSONL metrics, TensorBoard scalars, a PNG loss curve, MFU.

Only process 0 writes. TensorBoard and matplotlib are optional: without them the JSONL file is the
record and a one-line note says what was skipped.
"""

from __future__ import annotations

import json
import os

import jax

from zebra_jax._io import atomic_write

# Dense bf16 peak FLOP/s per chip, for MFU. Unknown devices (CPU) report no MFU.
PEAK_BF16_FLOPS = {
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
  "B200": 2250e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
}


def peak_flops_per_device() -> float | None:
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def is_writer() -> bool:
  return jax.process_index() == 0


class MetricsWriter:
  """Appends {"step": ..., **scalars} lines to metrics.jsonl (+ TensorBoard when available)."""

  def __init__(self, directory: str, *, resume_step: int = 0):
    self.directory = directory
    self.path = os.path.join(directory, "metrics.jsonl")
    self._tb = None
    if not is_writer():
      return
    os.makedirs(directory, exist_ok=True)
    # On resume drop lines past the restored step, so the curve has no duplicated or orphan points.
    # A line torn by a hard kill mid-write is dropped too.
    if os.path.exists(self.path):
      kept = [json.dumps(r) + "\n" for r in _parse_rows(self.path) if r.get("step", 0) <= resume_step]
      with atomic_write(self.path) as f:
        f.writelines(kept)
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))
    except ImportError:
      self._tb = None

  def write(self, step: int, scalars: dict) -> None:
    if not is_writer():
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(directory: str) -> list[dict]:
  path = os.path.join(directory, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return _parse_rows(path)


def _parse_rows(path: str) -> list[dict]:
  """The rows of a metrics.jsonl; a line that does not parse (torn by a kill) is skipped."""
  rows = []
  with open(path) as f:
    for line in f:
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return rows


def plot_loss_curve(directory: str, title: str, key: str = "loss") -> str | None:
  """Writes loss_curve.png from metrics.jsonl; returns its path (None without matplotlib)."""
  if not is_writer():
    return None
  rows = [r for r in read_metrics(directory) if key in r]
  if not rows:
    return None
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(6, 3.5))
  # markers when there are few points: a one-point line is invisible
  ax.plot(
    [r["step"] for r in rows], [r[key] for r in rows], lw=1.2, marker="o" if len(rows) < 30 else None, ms=4
  )
  ax.set_xlabel("step")
  ax.set_ylabel(key)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(directory, "loss_curve.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
