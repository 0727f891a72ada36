"""Rotary position embeddings: default / linear / llama3 / YaRN frequencies, two pairings.

* `apply_rope_half`: rotate-half pairing (channel i with i + dim/2), the Llama/HF layout.
* `apply_rope_interleaved`: adjacent pairs (2j, 2j+1), the DeepSeek layout used by MLA's rope dims.

The inverse frequencies follow transformers' `modeling_rope_utils` formulas exactly (computed in
float64 here, used in float32 as HF does); `attention_factor` multiplies cos and sin (YaRN mscale).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def rope_frequencies(
  dim: int, theta: float, scaling: dict | None = None, max_position_embeddings: int | None = None
) -> tuple[np.ndarray, float]:
  """Returns (inv_freq (dim//2,) float64, attention_factor) for a rope of `dim` channels."""
  inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  if scaling is None:
    return inv_freq, 1.0
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return inv_freq, 1.0
  factor = float(scaling["factor"])
  if rope_type == "linear":
    return inv_freq / factor, 1.0
  if rope_type == "llama3":
    old_ctx = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, scaled), 1.0
  if rope_type == "yarn":
    orig = scaling.get("original_max_position_embeddings") or max_position_embeddings
    if orig is None:
      raise ValueError("yarn rope scaling needs original_max_position_embeddings")
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
      if mscale and mscale_all_dim:
        attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
      else:
        attention_factor = _yarn_mscale(factor)

    def correction_dim(rotations):
      return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
      lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
      hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
    extrapolation = 1 - ramp  # 1 keeps the original frequency, 0 divides it by `factor`
    inv = inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation
    return inv, float(attention_factor)
  raise ValueError(f"rope_type={rope_type!r} is not implemented")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_cos_sin(positions_BT: jnp.ndarray, inv_freq: np.ndarray, attention_factor: float):
  """cos, sin of shape (B, T, dim//2) in float32, already multiplied by the attention factor."""
  freqs = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  return jnp.cos(freqs) * attention_factor, jnp.sin(freqs) * attention_factor


def apply_rope_half(x_BTHK: jnp.ndarray, cos_BTK, sin_BTK) -> jnp.ndarray:
  """Rotate-half RoPE (HF Llama): channel i pairs with i + K/2. cos/sin are (B, T, K/2)."""
  half = x_BTHK.shape[-1] // 2
  x1, x2 = x_BTHK[..., :half].astype(jnp.float32), x_BTHK[..., half:].astype(jnp.float32)
  cos, sin = cos_BTK[:, :, None, :], sin_BTK[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTHK.dtype)


def apply_rope_interleaved(x_BTHK: jnp.ndarray, cos_BTK, sin_BTK) -> jnp.ndarray:
  """Interleaved RoPE (DeepSeek): channels (2j, 2j+1) rotate with frequency j. Keeps channel order."""
  xf = x_BTHK.astype(jnp.float32).reshape(*x_BTHK.shape[:-1], -1, 2)
  x_even, x_odd = xf[..., 0], xf[..., 1]
  cos, sin = cos_BTK[:, :, None, :], sin_BTK[:, :, None, :]
  out = jnp.stack([x_even * cos - x_odd * sin, x_odd * cos + x_even * sin], axis=-1)
  return out.reshape(x_BTHK.shape).astype(x_BTHK.dtype)
