"""KV-cache report from the config alone: per-layer cache, fraction of the GQA teacher, bytes.

KV% = 100 * sum over layers of cached elements per token / (L * 2 * n_kv * d_h) (reference 9.2):
attention layers cache 2 n_kv d_h, MLA layers r_kv + d_r (latent + shared rope key), Mamba2 layers
nothing per token but a constant state per sequence (reported separately, not in KV%).
"""

from __future__ import annotations

from typing import Sequence

from zebra_jax import accounting
from zebra_jax.config import LlamaConfig


def kv_cache_report(
  config: LlamaConfig,
  teacher: LlamaConfig | None = None,
  *,
  seq_lens: Sequence[int] = (2048, 8192, 32768, 131072),
  batch: int = 1,
  dtype: str = "bfloat16",
) -> dict:
  types = config.layer_types()
  per_layer = [
    {"layer": i, "type": t, "elements_per_token": accounting.layer_kv_cache_elements(config, i)}
    for i, t in enumerate(types)
  ]
  teacher_per_token = (
    accounting.teacher_kv_cache_elements_per_token(config)
    if teacher is None
    else accounting.kv_cache_elements_per_token(teacher)
  )
  per_token = accounting.kv_cache_elements_per_token(config)
  item = accounting.itemsize(dtype)
  state = accounting.mamba_state_elements(config)
  rows = []
  for T in seq_lens:
    ours = accounting.cache_bytes(config, batch, T, dtype)
    ref = batch * T * teacher_per_token * item
    rows.append({"seq_len": int(T), "batch": batch, "bytes": ours, "teacher_bytes": ref, "ratio": ours / ref})
  return {
    "layers": {k: types.count(k) for k in ("attention", "mla", "mamba2")},
    "per_layer": per_layer,
    "kv_elements_per_token": per_token,
    "teacher_kv_elements_per_token": teacher_per_token,
    "kv_cache_fraction": per_token / teacher_per_token,
    "kv_cache_percent": 100.0 * per_token / teacher_per_token,
    "dtype": dtype,
    "kv_bytes_per_token": per_token * item,
    "teacher_kv_bytes_per_token": teacher_per_token * item,
    "mamba_state_elements_per_sequence": state,
    "mamba_state_bytes_per_sequence": state * item,
    "by_length": rows,
  }


def _mib(n: float) -> str:
  return f"{n / 2**20:,.2f} MiB"


def format_kv_report(r: dict) -> str:
  lines = [
    f"layers: {r['layers']['attention']} attention, {r['layers']['mla']} MLA, {r['layers']['mamba2']} Mamba2",
    f"KV cache per token: {r['kv_elements_per_token']:,} elements ({r['kv_bytes_per_token']:,} "
    f"bytes in {r['dtype']}) vs teacher {r['teacher_kv_elements_per_token']:,} "
    f"-> {r['kv_cache_percent']:.2f}% of the GQA teacher",
    f"Mamba2 state per sequence (constant in length): "
    f"{r['mamba_state_elements_per_sequence']:,} elements "
    f"({_mib(r['mamba_state_bytes_per_sequence'])})",
    f"{'seq_len':>9} {'batch':>5} {'cache':>14} {'teacher':>14} {'ratio':>8}",
  ]
  for row in r["by_length"]:
    lines.append(
      f"{row['seq_len']:>9} {row['batch']:>5} {_mib(row['bytes']):>14} "
      f"{_mib(row['teacher_bytes']):>14} {100 * row['ratio']:>7.2f}%"
    )
  return "\n".join(lines)


__all__ = ["kv_cache_report", "format_kv_report"]
