"""Mamba2 initialised from a teacher's GQA attention (MambaInLlama `init_with_kqvo`, reference 3.3).

Seen as linear attention, C plays the query, B the key and x the value, so
  in_proj columns x <- W_V, B <- W_K, C <- W_Q, and out_proj <- W_O.
Our kernels are (in, out) = torch weight transposed on both sides, so the copies are plain column
blocks. The GQA structure is kept: x and B get n_kv*head_dim columns and are expanded at run time.
Everything else (z and dt columns of in_proj, conv, A_log, D, dt_bias, norm) keeps the random /
default values the Mamba2 constructor drew.
"""

from __future__ import annotations

import jax.numpy as jnp

from zebra_jax.config import ConfigError, HybridConfig


def check_attention_shapes(config: HybridConfig) -> None:
  """The copy needs d_inner == H*head_dim (C, out) and d_xb == n_kv*head_dim (x, B)."""
  H, G, K = config.num_attention_heads, config.num_key_value_heads, config.head_dim
  problems = []
  if config.d_inner != H * K:
    problems.append(
      f"d_inner={config.d_inner} != num_attention_heads*head_dim={H}*{K}={H * K} "
      "(C <- W_Q and out_proj <- W_O)"
    )
  if config.d_xb != G * K:
    problems.append(
      f"d_xb={config.d_xb} != num_key_value_heads*head_dim={G}*{K}={G * K} (x <- W_V and B <- W_K)"
    )
  if problems:
    raise ConfigError("cannot initialise Mamba2 from attention: " + "; ".join(problems))


def _kernel(linear, name: str, shape: tuple[int, int]):
  w = linear.kernel[...]
  if tuple(w.shape) != shape:
    raise ConfigError(
      f"attention {name} kernel has shape {tuple(w.shape)}, expected {shape} "
      "(teacher and hybrid configs disagree)"
    )
  return w


def init_mamba2_from_attention(mamba, attn, config: HybridConfig) -> None:
  """In place: mamba.in_proj x/B/C columns <- attn v/k/q_proj, mamba.out_proj <- attn.o_proj."""
  check_attention_shapes(config)
  d, E, X = config.hidden_size, config.d_inner, config.d_xb
  W_q = _kernel(attn.q_proj, "q_proj", (d, E))
  W_k = _kernel(attn.k_proj, "k_proj", (d, X))
  W_v = _kernel(attn.v_proj, "v_proj", (d, X))
  W_o = _kernel(attn.o_proj, "o_proj", (E, d))

  w_in = mamba.in_proj.kernel[...]
  if tuple(w_in.shape) != (d, config.mamba_in_proj_dim):
    raise ConfigError(
      f"Mamba2 in_proj kernel has shape {tuple(w_in.shape)}, expected {(d, config.mamba_in_proj_dim)}"
    )
  dtype = w_in.dtype
  # Column blocks [z | x | B | C | dt] = [E, X, X, E, H].
  w_in = w_in.at[:, E : E + X].set(W_v.astype(dtype))
  w_in = w_in.at[:, E + X : E + 2 * X].set(W_k.astype(dtype))
  w_in = w_in.at[:, E + 2 * X : 2 * E + 2 * X].set(W_q.astype(dtype))
  mamba.in_proj.kernel[...] = w_in
  if tuple(mamba.out_proj.kernel.shape) != (E, d):
    raise ConfigError(
      f"Mamba2 out_proj kernel has shape {tuple(mamba.out_proj.kernel.shape)}, expected {(E, d)}"
    )
  mamba.out_proj.kernel[...] = jnp.asarray(W_o, mamba.out_proj.kernel[...].dtype)
