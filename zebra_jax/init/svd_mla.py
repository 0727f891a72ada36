"""SVD initialisation of an MLA mixer from a teacher's GQA attention (reference section 2).

Torch weights are (out x in); our kernels are (in, out) = W^T. All factorisations run in float64
numpy on the host, then the results are cast to the student's parameter dtype.

Query:  W_Q = U S V^T;  q_a <- S[:r_q] V^T[:r_q]   (all of S in the down projection, no sqrt split)
                        q_b <- U[:, :r_q], per head rows [0, d_n) as nope and [d_h-d_r, d_h) as rope.
KV:     W_KV = [rep_g(W_K); rep_g(W_V)] = U S V^T   (rep_g: repeat-interleave heads by g = G/n_kv)
        kv_a <- [S[:r_kv] V^T[:r_kv]; Kbar[d_h-d_r:d_h]], Kbar = mean of W_K over the n_kv teacher heads
        kv_b <- per kv head [first d_n K rows of U; all d_h V rows of U] (the K rope rows are dropped)
Out:    out_proj <- o_proj.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from zebra_jax.config import ConfigError, HybridConfig


def _np64(param) -> np.ndarray:
  return np.asarray(np.asarray(param[...], dtype=np.float32), dtype=np.float64)


def _set(dst, value_torch_layout: np.ndarray, what: str) -> None:
  """Stores a (out x in) matrix into a (in, out) kernel."""
  value = value_torch_layout.T
  if tuple(dst.shape) != value.shape:
    raise ConfigError(f"{what}: computed shape {value.shape} does not fit the student's {tuple(dst.shape)}")
  dst[...] = jnp.asarray(value, dst[...].dtype)


def check_teacher_shapes(config: HybridConfig) -> None:
  """Raises ConfigError unless the MLA dimensions can be cut out of the teacher's heads."""
  c = config
  d_h, d_n, d_r, d_v = c.head_dim, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
  H, n_kv, G = c.num_attention_heads, c.num_key_value_heads, c.mla_kv_heads
  problems = []
  if d_n + d_r > d_h:
    problems.append(
      f"qk_nope_head_dim + qk_rope_head_dim = {d_n} + {d_r} = {d_n + d_r} exceeds the "
      f"teacher head_dim={d_h} (nope rows [0, d_n) and rope rows [d_h-d_r, d_h) of one "
      "teacher head must not overlap)"
    )
  if d_v != d_h:
    problems.append(
      f"v_head_dim={d_v} must equal the teacher head_dim={d_h}: V rows are copied "
      f"whole, and out_proj (num_attention_heads*v_head_dim = {H * d_v} inputs) is "
      f"copied from o_proj ({H * d_h} inputs)"
    )
  if G % n_kv:
    problems.append(
      f"MLA kv heads {G} (use_full_kv_head={c.use_full_kv_head}) are not a multiple "
      f"of the teacher's num_key_value_heads={n_kv}"
    )
  for i in c.mla_layers:
    r_q, r_kv = c.mla_ranks(i)
    if r_q is not None and r_q > min(H * d_h, c.hidden_size):
      problems.append(
        f"MLA layer {i}: q_lora_rank={r_q} exceeds the rank bound of W_Q "
        f"min(num_attention_heads*head_dim={H * d_h}, hidden_size={c.hidden_size})"
      )
    if r_kv > min(2 * G * d_h, c.hidden_size):
      problems.append(
        f"MLA layer {i}: kv_lora_rank={r_kv} exceeds the rank bound of [W_K; W_V] "
        f"min(2*kv_heads*head_dim={2 * G * d_h}, hidden_size={c.hidden_size})"
      )
  if problems:
    raise ConfigError(
      "MLA cannot be initialised from the teacher's attention:\n  - " + "\n  - ".join(problems)
    )


def _teacher_mats(attn, config: HybridConfig):
  """W_Q (H d_h x d), W_K, W_V (n_kv d_h x d), W_O (d x H d_h) in float64, torch layout."""
  return (
    _np64(attn.q_proj.kernel).T,
    _np64(attn.k_proj.kernel).T,
    _np64(attn.v_proj.kernel).T,
    _np64(attn.o_proj.kernel).T,
  )


def kv_stack(w_k: np.ndarray, w_v: np.ndarray, config: HybridConfig) -> np.ndarray:
  """[rep_g(W_K); rep_g(W_V)] (2 G d_h x d): heads repeat-interleaved to the MLA's G kv heads."""
  n_kv, d_h, G = config.num_key_value_heads, config.head_dim, config.mla_kv_heads
  g = G // n_kv
  rep = lambda w: np.repeat(w.reshape(n_kv, d_h, -1), g, axis=0).reshape(G * d_h, -1)
  return np.concatenate([rep(w_k), rep(w_v)], axis=0)


def _qk_rows(config: HybridConfig) -> np.ndarray:
  """Channel indices of one teacher head that form an MLA q head: [0, d_n) then [d_h-d_r, d_h)."""
  d_h, d_n, d_r = config.head_dim, config.qk_nope_head_dim, config.qk_rope_head_dim
  return np.concatenate([np.arange(d_n), np.arange(d_h - d_r, d_h)])


def init_mla_from_attention(mla, attn, config: HybridConfig, layer_idx: int) -> None:
  """Overwrites `mla`'s parameters from the teacher attention `attn` (reference section 2)."""
  check_teacher_shapes(config)
  c = config
  H, n_kv, G = c.num_attention_heads, c.num_key_value_heads, c.mla_kv_heads
  d_h, d_n, d_r = c.head_dim, c.qk_nope_head_dim, c.qk_rope_head_dim
  r_q, r_kv = c.mla_ranks(layer_idx)
  if (r_q, r_kv) != (mla.r_q, mla.r_kv):
    raise ConfigError(
      f"MLA layer {layer_idx} was built with ranks (q_lora_rank, kv_lora_rank)="
      f"{(mla.r_q, mla.r_kv)} but the config gives {(r_q, r_kv)}"
    )
  w_q, w_k, w_v, w_o = _teacher_mats(attn, c)
  rows = _qk_rows(c)
  d = w_q.shape[1]

  # Query.
  if r_q is None:
    _set(mla.q_proj.kernel, w_q.reshape(H, d_h, d)[:, rows].reshape(-1, d), "q_proj")
  else:
    u, s, vt = np.linalg.svd(w_q, full_matrices=False)
    _set(mla.q_a_proj.kernel, s[:r_q, None] * vt[:r_q], "q_a_proj")
    _set(mla.q_b_proj.kernel, u[:, :r_q].reshape(H, d_h, r_q)[:, rows].reshape(-1, r_q), "q_b_proj")

  # Key / value: joint SVD of the (repeated) stack; the shared rope key is the teacher head average.
  k_bar = w_k.reshape(n_kv, d_h, d).mean(axis=0)
  u, s, vt = np.linalg.svd(kv_stack(w_k, w_v, c), full_matrices=False)
  _set(
    mla.kv_a_proj_with_mqa.kernel,
    np.concatenate([s[:r_kv, None] * vt[:r_kv], k_bar[d_h - d_r :]], axis=0),
    "kv_a_proj_with_mqa",
  )
  u_k = u[: G * d_h, :r_kv].reshape(G, d_h, r_kv)[:, :d_n]
  u_v = u[G * d_h :, :r_kv].reshape(G, d_h, r_kv)
  _set(mla.kv_b_proj.kernel, np.concatenate([u_k, u_v], axis=1).reshape(-1, r_kv), "kv_b_proj")

  _set(mla.out_proj.kernel, w_o, "out_proj")
  for norm in (mla.q_a_layernorm, mla.kv_a_layernorm):
    if norm is not None:
      norm.weight[...] = jnp.ones_like(norm.weight[...])


def energy_rank(singular_values: np.ndarray, ratio: float, divisor: int, max_rank: int) -> int:
  """X-EcoMLA rank rule: #{k : sum_{i<=k} s_i^2 / sum s_i^2 <= ratio}, at least 1, rounded up to a
  multiple of `divisor`, capped at the largest multiple of `divisor` that is <= max_rank."""
  e = np.asarray(singular_values, np.float64) ** 2
  frac = np.cumsum(e) / e.sum()
  k = max(int(np.count_nonzero(frac <= ratio)), 1)
  k = math.ceil(k / divisor) * divisor
  return min(k, (max_rank // divisor) * divisor)


def dynamic_ranks(
  teacher,
  config: HybridConfig,
  *,
  q_energy_ratio: float | None,
  kv_energy_ratio: float | None,
  fixed_rank_first_last: bool = True,
) -> dict[int, tuple[int | None, int]]:
  """Per-MLA-layer (q_lora_rank, kv_lora_rank) by the energy rule (reference section 2, X-EcoMLA).

  A None ratio keeps the config's rank for that projection; with `fixed_rank_first_last`, layers 0
  and L-1 keep the config's ranks.
  """
  c = config
  for name, ratio in (("q_energy_ratio", q_energy_ratio), ("kv_energy_ratio", kv_energy_ratio)):
    if ratio is not None and not 0.0 < ratio <= 1.0:
      raise ConfigError(f"{name}={ratio} must be in (0, 1]")
  if q_energy_ratio is not None and c.q_lora_rank is None:
    raise ConfigError("q_energy_ratio needs a low-rank query (q_lora_rank is None)")
  check_teacher_shapes(c)
  H, d = c.num_attention_heads, c.hidden_size
  max_q = min(d, H * c.qk_head_dim)
  max_kv = min(d, 2 * c.mla_kv_heads * c.head_dim)
  last = c.num_hidden_layers - 1
  ranks: dict[int, tuple[int | None, int]] = {}
  for i in c.mla_layers:
    r_q, r_kv = c.mla_ranks(i)
    if not (fixed_rank_first_last and i in (0, last)):
      w_q, w_k, w_v, _ = _teacher_mats(teacher.layers[i].mixer, c)
      if q_energy_ratio is not None:
        r_q = energy_rank(np.linalg.svd(w_q, compute_uv=False), q_energy_ratio, c.qkv_rank_divisor, max_q)
      if kv_energy_ratio is not None:
        r_kv = energy_rank(
          np.linalg.svd(kv_stack(w_k, w_v, c), compute_uv=False), kv_energy_ratio, c.qkv_rank_divisor, max_kv
        )
    ranks[i] = (r_q, r_kv)
  return ranks
