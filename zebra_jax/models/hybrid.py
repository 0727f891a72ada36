"""The decoder stack: one block type whose mixer is GQA attention, MLA or Mamba2 per layer.

A plain `LlamaConfig` gives the teacher (every mixer attention); a `HybridConfig` picks the mixer of
each layer from `mla_layers` / `attn_layers`. The forward pass is split into `embed`, per-block calls
and `logits` so distillation can feed each block the teacher's hidden state (ILD).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax.config import REMAT_POLICIES, ConfigError, LlamaConfig
from zebra_jax.models.layers import MLP, Embed, Linear, RMSNorm, dtype_of
from zebra_jax.parallel.sharding import constrain_batch
from zebra_jax.models.attention import Attention
from zebra_jax.models.mamba2 import Mamba2
from zebra_jax.models.mla import MLA


def make_mixer(config: LlamaConfig, layer_idx: int, kind: str, rngs: nnx.Rngs) -> nnx.Module:
  if kind == "attention":
    return Attention(config, rngs=rngs)
  if kind == "mla":
    return MLA(config, layer_idx, rngs=rngs)
  if kind == "mamba2":
    return Mamba2(config, layer_idx, rngs=rngs)
  raise ValueError(f"unknown mixer type {kind!r} for layer {layer_idx}")


class DecoderBlock(nnx.Module):
  """h += mixer(norm(h)); h += mlp(norm(h)). Returns (h_out, mixer_out); ILD matches both."""

  def __init__(self, config: LlamaConfig, layer_idx: int, *, rngs: nnx.Rngs):
    self.mixer_type = config.layer_types()[layer_idx]
    pd, dt = dtype_of(config.param_dtype), dtype_of(config.dtype)
    d = config.hidden_size
    self.input_layernorm = RMSNorm(d, eps=config.rms_norm_eps, param_dtype=pd)
    self.mixer = make_mixer(config, layer_idx, self.mixer_type, rngs)
    self.post_attention_layernorm = RMSNorm(d, eps=config.rms_norm_eps, param_dtype=pd)
    self.mlp = MLP(d, config.intermediate_size, rngs=rngs, dtype=dt, param_dtype=pd)

  def __call__(self, h_BTD: jax.Array, positions_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    h_BTD = constrain_batch(h_BTD)  # batch-sharded activations under the trainer's mesh
    mixer_out = constrain_batch(self.mixer(self.input_layernorm(h_BTD), positions_BT))
    h_BTD = h_BTD + mixer_out
    h_BTD = h_BTD + self.mlp(self.post_attention_layernorm(h_BTD))
    return constrain_batch(h_BTD), mixer_out


# REMAT_POLICIES (zebra_jax/config.py says what each keeps) as jax.checkpoint policies
_REMAT_POLICY_FNS = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
assert tuple(_REMAT_POLICY_FNS) == REMAT_POLICIES


class CausalLM(nnx.Module):
  """Embedding -> decoder blocks -> final RMSNorm -> LM head (tied to the embedding or separate).

  Calling it on int tokens (batch, seq) returns logits (batch, seq, vocab) in the compute dtype.
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    # recompute each block in the backward pass: False, True ("full") or a REMAT_POLICIES name
    # (set by the trainer from train.remat / train.remat_policy)
    self.remat = False
    pd, dt = dtype_of(config.param_dtype), dtype_of(config.dtype)
    d = config.hidden_size
    self.embed_tokens = Embed(config.vocab_size, d, rngs=rngs, dtype=dt, param_dtype=pd)
    self.layers = nnx.List([DecoderBlock(config, i, rngs=rngs) for i in range(config.num_hidden_layers)])
    self.norm = RMSNorm(d, eps=config.rms_norm_eps, param_dtype=pd)
    self.lm_head = (
      None
      if config.tie_word_embeddings
      else Linear(
        d, config.vocab_size, axes=("embed", "vocab"), rngs=rngs, dtype=dt, param_dtype=pd, init_std=0.02
      )
    )

  # -- pieces (used by distillation) -----------------------------------------------------------
  def embed(self, tokens_BT: jax.Array) -> jax.Array:
    _check_tokens(tokens_BT, self.config.vocab_size)
    return self.embed_tokens(tokens_BT)

  def logits(self, h_BTD: jax.Array) -> jax.Array:
    h_BTD = self.norm(h_BTD)
    if self.lm_head is None:
      return self.embed_tokens.attend(h_BTD)
    return self.lm_head(h_BTD)

  def head_DV(self) -> jax.Array:
    """The output head as one (hidden, vocab) matrix in the compute dtype (the embedding's transpose
    when tied): what the chunked losses (train/fused_losses.py) multiply the final hidden states by."""
    if self.lm_head is None:
      return self.embed_tokens.embedding[...].astype(self.embed_tokens.dtype).T
    return self.lm_head.kernel[...].astype(self.lm_head.dtype)

  @staticmethod
  def default_positions(tokens_BT: jax.Array) -> jax.Array:
    B, T = tokens_BT.shape[:2]
    return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))

  def _block_fn(self):
    def apply(block, h, positions):
      return block(h, positions)

    if not self.remat:
      return apply
    name = "full" if self.remat is True else self.remat
    if name not in _REMAT_POLICY_FNS:
      raise ConfigError(f"remat policy {name!r} is not one of {list(REMAT_POLICIES)}")
    # graph_updates=False: blocks hold no mutable state, and writing their (unchanged) Params back
    # from inside the checkpoint trace fails under jit/grad (TraceContextError).
    return nnx.remat(apply, graph_updates=False, policy=_REMAT_POLICY_FNS[name])

  # -- full forward ----------------------------------------------------------------------------
  def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None) -> jax.Array:
    return self.logits(self.last_hidden(tokens_BT, positions_BT))

  def last_hidden(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None) -> jax.Array:
    """The last block's output (batch, seq, hidden), before the final norm and the head."""
    if positions_BT is None:
      positions_BT = self.default_positions(tokens_BT)
    h = self.embed(tokens_BT)
    apply = self._block_fn()
    for block in self.layers:
      h, _ = apply(block, h, positions_BT)
    return h

  def final_hidden(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None) -> jax.Array:
    """The final-norm hidden states (batch, seq, hidden): logits = final_hidden @ head_DV()."""
    return self.norm(self.last_hidden(tokens_BT, positions_BT))

  def forward_with_intermediates(self, tokens_BT, positions_BT=None):
    """Logits plus every block's input hidden state and mixer output.

    Returns (logits, hidden_states, mixer_outputs): hidden_states[l] is the input of block l
    (hidden_states[0] = embeddings) and hidden_states[L] the last block's output (before the final
    norm); mixer_outputs[l] is block l's mixer output before the residual add.
    """
    if positions_BT is None:
      positions_BT = self.default_positions(tokens_BT)
    h = self.embed(tokens_BT)
    hidden, mixer_outs = [h], []
    apply = self._block_fn()
    for block in self.layers:
      h, m = apply(block, h, positions_BT)
      hidden.append(h)
      mixer_outs.append(m)
    return self.logits(h), hidden, mixer_outs


def _check_tokens(tokens_BT, vocab_size: int) -> None:
  if tokens_BT.ndim != 2:
    raise ValueError(f"tokens must have shape (batch, seq), got {tokens_BT.shape}")
  if not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
    raise ValueError(f"tokens must be integers, got dtype {tokens_BT.dtype}")


def Llama(config: LlamaConfig, *, rngs: nnx.Rngs) -> CausalLM:
  """The teacher: a CausalLM whose every mixer is GQA attention."""
  if config.layer_types() != ("attention",) * config.num_hidden_layers:
    raise ValueError("Llama() needs a config whose every layer is attention; use CausalLM for hybrids")
  return CausalLM(config, rngs=rngs)
