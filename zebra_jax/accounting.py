"""Numbers that matter, computed from the config alone: KV cache, Mamba state, parameters, FLOPs.

Nothing here builds a model; every function is arithmetic on a `LlamaConfig` / `HybridConfig`, so
it works for an 8B config on a laptop. `tests/test_accounting.py` checks the results against the
papers' tables and against the parameter count of the real (abstract) model.

Notation: d hidden, V vocab, L layers, H query heads, n_kv teacher KV heads, d_h head dim,
F MLP width; MLA r_q, r_kv, d_r (rope), d_n (nope), d_v, d_qk = d_n + d_r, n_kv' kv_b heads
(n_kv, or H with use_full_kv_head); Mamba2 d_inner, d_xb, nheads = d_inner/P, P headdim,
N d_state, G ngroups, K d_conv, Q chunk_size.
"""

from __future__ import annotations

import math

from zebra_jax.config import HybridConfig, LlamaConfig

_ITEMSIZE = {
  "float64": 8,
  "float32": 4,
  "bfloat16": 2,
  "float16": 2,
  "float8_e4m3fn": 1,
  "float8_e5m2": 1,
  "int8": 1,
  "uint8": 1,
}


def itemsize(dtype) -> int:
  """Bytes per element of a dtype name ("bfloat16") or any dtype object numpy/jax understand."""
  if isinstance(dtype, str) and dtype in _ITEMSIZE:
    return _ITEMSIZE[dtype]
  import jax.numpy as jnp  # only for dtype objects (bfloat16 needs ml_dtypes, which jax brings)

  try:
    return int(jnp.dtype(dtype).itemsize)
  except TypeError as e:
    raise ValueError(f"unknown dtype {dtype!r} for byte accounting") from e


def _hybrid(config: LlamaConfig) -> HybridConfig | None:
  return config if isinstance(config, HybridConfig) else None


# ------------------------------------------------------------------------------------------------
# KV cache and recurrent state
# ------------------------------------------------------------------------------------------------
def layer_kv_cache_elements(config: LlamaConfig, layer: int) -> int:
  """Cached elements per token of one layer: attention 2*n_kv*d_h, MLA r_kv + d_r, Mamba2 0.

  MLA counts the compressed cache of the inference path: the latent c_kv and the shared, already
  rotated rope key (reference 1.6), with the layer's own r_kv.
  """
  kind = config.layer_types()[layer]
  if kind == "attention":
    return 2 * config.num_key_value_heads * config.head_dim
  if kind == "mla":
    _, r_kv = config.mla_ranks(layer)
    return r_kv + config.qk_rope_head_dim
  return 0  # Mamba2 keeps a fixed-size state (mamba_state_elements), nothing per token


def kv_cache_elements_per_token(config: LlamaConfig) -> int:
  """Cache elements appended per token per sequence, summed over layers."""
  return sum(layer_kv_cache_elements(config, i) for i in range(config.num_hidden_layers))


def kv_bytes_per_token(config: LlamaConfig, dtype="bfloat16") -> int:
  return kv_cache_elements_per_token(config) * itemsize(dtype)


def teacher_kv_cache_elements_per_token(config: LlamaConfig) -> int:
  """The GQA teacher of the same Llama shape: L * 2 * n_kv * d_h."""
  return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim


def kv_cache_fraction(config: LlamaConfig, teacher: LlamaConfig | None = None) -> float:
  """Per-token cache relative to the GQA teacher (same element width), e.g. 0.0391 for 1B-4MLA-12M2.

  `teacher` defaults to the all-attention model of the config's own Llama shape.
  """
  ref = (
    teacher_kv_cache_elements_per_token(config) if teacher is None else kv_cache_elements_per_token(teacher)
  )
  return kv_cache_elements_per_token(config) / ref


def mamba_layer_state_elements(config: HybridConfig) -> tuple[int, int]:
  """(ssm, conv) state elements per sequence of one Mamba2 layer: nheads*P*N and conv_dim*d_conv.

  The conv state is counted with d_conv columns, as the reference inference cache allocates it
  (only d_conv - 1 are strictly needed).
  """
  ssm = config.mamba_nheads * config.headdim * config.d_state
  conv = config.mamba_conv_dim * config.d_conv
  return ssm, conv


def mamba_state_elements(config: LlamaConfig) -> int:
  """Recurrent-state elements per sequence over all Mamba2 layers; constant in sequence length."""
  hc = _hybrid(config)
  if hc is None or not hc.mamba_layers:
    return 0
  return len(hc.mamba_layers) * sum(mamba_layer_state_elements(hc))


def cache_bytes(config: LlamaConfig, batch: int, seq_len: int, dtype="bfloat16") -> int:
  """Total decode-cache bytes: batch * (seq_len * per-token KV + Mamba2 state), one dtype."""
  return (
    batch * (seq_len * kv_cache_elements_per_token(config) + mamba_state_elements(config)) * itemsize(dtype)
  )


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------
def _mixer_matmul_params(config: LlamaConfig, layer: int) -> int:
  """Parameters of the mixer's dense projections (weights only, no biases exist)."""
  kind = config.layer_types()[layer]
  d, H = config.hidden_size, config.num_attention_heads
  if kind == "attention":
    G, dh = config.num_key_value_heads, config.head_dim
    return d * H * dh + 2 * d * G * dh + H * dh * d
  if kind == "mla":
    r_q, r_kv = config.mla_ranks(layer)
    d_qk, d_r = config.qk_head_dim, config.qk_rope_head_dim
    d_n, d_v = config.qk_nope_head_dim, config.v_head_dim
    q = d * H * d_qk if r_q is None else d * r_q + r_q * H * d_qk
    kv = d * (r_kv + d_r) + r_kv * config.mla_kv_heads * (d_n + d_v)
    return q + kv + H * d_v * d
  if kind == "mamba2":
    return d * config.mamba_in_proj_dim + config.d_inner * d
  raise ValueError(f"unknown mixer type {kind!r} for layer {layer}")


def mixer_param_count(config: LlamaConfig, layer: int) -> int:
  """All parameters of layer `layer`'s mixer.

  attention: q, k, v, o.  MLA: q_a + q_b (or q_proj when q_lora_rank is None), the optional lora
  RMSNorms (r_q and r_kv weights), kv_a_proj_with_mqa, kv_b_proj, out_proj.  Mamba2: in_proj
  (2 d_inner + 2 d_xb + nheads) x d, conv weight conv_dim*d_conv (+ conv_dim bias), dt_bias, A_log,
  D (nheads each), gated-norm weight d_inner, out_proj d x d_inner.
  """
  kind = config.layer_types()[layer]
  n = _mixer_matmul_params(config, layer)
  if kind == "mla" and config.use_lora_layer_norm:
    r_q, r_kv = config.mla_ranks(layer)
    n += (r_q or 0) + r_kv
  elif kind == "mamba2":
    conv_dim = config.mamba_conv_dim
    n += conv_dim * config.d_conv + (conv_dim if config.conv_bias else 0)
    n += 3 * config.mamba_nheads + config.d_inner
  return n


def layer_param_count(config: LlamaConfig, layer: int) -> int:
  """One decoder block: two RMSNorms, the SwiGLU MLP and the mixer."""
  d, F = config.hidden_size, config.intermediate_size
  return 2 * d + 3 * d * F + mixer_param_count(config, layer)


def embedding_param_count(config: LlamaConfig) -> int:
  """Token embedding plus the untied LM head (the tied head shares the embedding)."""
  n = config.vocab_size * config.hidden_size
  return n if config.tie_word_embeddings else 2 * n


def param_count(config: LlamaConfig) -> int:
  """Exact parameter count of `CausalLM(config)`: embeddings, head unless tied, final norm, layers."""
  return (
    embedding_param_count(config)
    + config.hidden_size
    + sum(layer_param_count(config, i) for i in range(config.num_hidden_layers))
  )


# ------------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------------
def mean_causal_context(seq_len: int) -> float:
  """Average keys seen per query under a causal mask: (1 + 2 + ... + T) / T = (T + 1) / 2."""
  return (seq_len + 1) / 2


def _mean_intra_chunk_context(seq_len: int, chunk: int) -> float:
  """Average causal pairs per token inside chunks of `chunk` tokens (the last one may be partial)."""
  full, rem = divmod(seq_len, chunk)
  return (full * chunk * (chunk + 1) / 2 + rem * (rem + 1) / 2) / seq_len


def matmul_params(config: LlamaConfig) -> int:
  """Weights used as matmul operands per token: every dense projection plus the LM head (V*d,
  counted also when tied to the embedding). Embedding lookups, norms and Mamba's conv/dt/A/D
  vectors are excluded."""
  d, F = config.hidden_size, config.intermediate_size
  layers = sum(3 * d * F + _mixer_matmul_params(config, i) for i in range(config.num_hidden_layers))
  return layers + config.vocab_size * d


def flops_breakdown(config: LlamaConfig, seq_len: int) -> dict[str, float]:
  """Forward FLOPs per token, averaged over one causal sequence of `seq_len` tokens, by term.

  A multiply-add is 2 FLOPs; elementwise work (norms, activations, softmax, rope, gating, decay
  exponentials, the D skip) is not counted, following the usual model-FLOPs convention.

  * matmul: 2 * matmul_params(config), i.e. every dense projection and the LM head.
  * attention (GQA and MLA layers): QK^T and PV each cost 2 * H * dim per (query, key) pair, with
    dim = d_h (GQA) or d_qk for scores and d_v for values (MLA, training path with kv_b
    decompression, whose matmul is already in `matmul`). Only the causal half is counted:
    the mean context is (T + 1) / 2 keys per query, so per token 2*H*(d_qk + d_v)*(T + 1)/2.
  * conv (Mamba2): depthwise causal conv, 2 * conv_dim * d_conv.
  * ssd (Mamba2, chunked SSD with chunk Q' = min(Q, T), c = mean causal pairs per token inside
    chunks, = (Q' + 1)/2 when Q' divides T, n_c = ceil(T / Q') chunks):
        intra-chunk scores  C B^T             2 * G * N * c      (per group, as the kernel does)
        intra-chunk output  (L o CB) x        2 * nheads * P * c
        chunk states        sum_t x_t B_t^T   2 * nheads * P * N
        state passing       S <- a S + S_c    2 * nheads * P * N * n_c / T
        state output        C_t S             2 * nheads * P * N
    The intra-chunk terms count the causal half like attention; the kernels compute the dense Q x Q
    blocks and mask them, so they execute up to about twice the intra-chunk FLOPs counted here.
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  out = {"matmul": 2.0 * matmul_params(config), "attention": 0.0, "conv": 0.0, "ssd": 0.0}
  ctx = mean_causal_context(seq_len)
  H = config.num_attention_heads
  for i, kind in enumerate(config.layer_types()):
    if kind == "attention":
      out["attention"] += 2 * H * (2 * config.head_dim) * ctx
    elif kind == "mla":
      out["attention"] += 2 * H * (config.qk_head_dim + config.v_head_dim) * ctx
    else:
      out["conv"] += 2 * config.mamba_conv_dim * config.d_conv
      Q = min(config.chunk_size, seq_len)
      c = _mean_intra_chunk_context(seq_len, Q)
      n_chunks = math.ceil(seq_len / Q)
      nh, P, N, G = config.mamba_nheads, config.headdim, config.d_state, config.ngroups
      out["ssd"] += (
        2 * G * N * c + 2 * nh * P * c + 2 * nh * P * N + 2 * nh * P * N * n_chunks / seq_len + 2 * nh * P * N
      )
  return out


def head_flops_per_token(config: LlamaConfig) -> float:
  """Forward FLOPs of the LM head per token (2 * vocab * hidden; part of `matmul` above)."""
  return 2.0 * config.vocab_size * config.hidden_size


def flops_per_token(config: LlamaConfig, seq_len: int, training: bool = True) -> float:
  """Model FLOPs per token at sequence length `seq_len` (see `flops_breakdown` for the terms).

  Forward only when training=False; training=True multiplies by 3 (forward + backward, the
  backward costing two forwards: gradients w.r.t. activations and w.r.t. weights). Use it for
  MFU as tokens_per_second * flops_per_token / peak_flops. Activation recomputation is not counted.
  """
  fwd = sum(flops_breakdown(config, seq_len).values())
  return 3.0 * fwd if training else fwd


def distill_flops_per_token(
  student: LlamaConfig, teacher: LlamaConfig, seq_len: int, heads: bool = True
) -> float:
  """Model FLOPs per token of one distillation step: the student's forward + backward and the
  teacher's forward. heads=False for ILD, which compares block outputs: neither model runs its LM
  head there (XLA drops the teacher's unused logits), so its 2 * vocab * hidden per token is taken
  out of both (x3 for the student)."""
  s = flops_per_token(student, seq_len, training=True)
  t = flops_per_token(teacher, seq_len, training=False)
  if not heads:
    s -= 3 * head_flops_per_token(student)
    t -= head_flops_per_token(teacher)
  return s + t


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------
def summary(config: LlamaConfig, seq_len: int = 2048, dtype="bfloat16") -> dict:
  """Everything above for one config, as a flat dict for printing/logging."""
  types = config.layer_types()
  n = param_count(config)
  return {
    "num_layers": config.num_hidden_layers,
    "num_attention_layers": types.count("attention"),
    "num_mla_layers": types.count("mla"),
    "num_mamba2_layers": types.count("mamba2"),
    "params": n,
    "params_billions": n / 1e9,
    "params_embedding": embedding_param_count(config),
    "params_non_embedding": n - embedding_param_count(config),
    "kv_cache_elements_per_token": kv_cache_elements_per_token(config),
    f"kv_bytes_per_token_{dtype}": kv_bytes_per_token(config, dtype),
    "kv_cache_fraction": kv_cache_fraction(config),
    "kv_cache_percent": 100.0 * kv_cache_fraction(config),
    "mamba_state_elements_per_sequence": mamba_state_elements(config),
    f"mamba_state_bytes_per_sequence_{dtype}": mamba_state_elements(config) * itemsize(dtype),
    "seq_len": seq_len,
    "flops_per_token_forward": flops_per_token(config, seq_len, training=False),
    "flops_per_token_training": flops_per_token(config, seq_len, training=True),
    **{f"flops_forward_{k}": v for k, v in flops_breakdown(config, seq_len).items()},
  }
