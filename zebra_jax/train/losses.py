"""Distillation losses: intermediate-layer (ILD), forward KL, cross-entropy, DPO.

All reductions are explicit. Logits are upcast to float32 before any softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ild_distance(student_BTD: jax.Array, teacher_BTD: jax.Array, kind: str = "l2") -> jax.Array:
  """Mean over (batch, tokens) of a per-token distance over the hidden dimension.

  "l2": the reference's unsquared L2 norm ||s - t||_2 (Zebra-Llama calls it MSE, it is not);
  "mse": mean of squared differences over the hidden dimension.
  """
  diff = student_BTD.astype(jnp.float32) - teacher_BTD.astype(jnp.float32)
  if kind == "l2":
    # sqrt has an infinite derivative at 0: add a tiny epsilon so identical inputs give zero gradient.
    return jnp.mean(jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12))
  if kind == "mse":
    return jnp.mean(diff * diff)
  raise ValueError(f"ILD loss kind must be 'l2' or 'mse', got {kind!r}")


def forward_kl(
  teacher_logits_BTV, student_logits_BTV, *, temperature: float = 1.0, mask_BT: jax.Array | None = None
) -> jax.Array:
  """Per-token mean of KL(p_teacher || q_student) at `temperature` (the reference uses 1).

  The reference's `batchmean` equals this times the sequence length; we report the per-token mean so
  numbers do not depend on seq_len (the gradient direction is the same; clipping makes scale moot).
  """
  t = teacher_logits_BTV.astype(jnp.float32) / temperature
  s = student_logits_BTV.astype(jnp.float32) / temperature
  log_p = jax.nn.log_softmax(t, axis=-1)
  log_q = jax.nn.log_softmax(s, axis=-1)
  kl_BT = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return _masked_mean(kl_BT, mask_BT)


def cross_entropy(logits_BTV, targets_BT, mask_BT: jax.Array | None = None) -> jax.Array:
  """Mean next-token cross-entropy; targets are already shifted (targets[t] follows tokens[t])."""
  logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  nll_BT = -jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
  return _masked_mean(nll_BT, mask_BT)


def sequence_logprob(logits_BTV, targets_BT, mask_BT) -> jax.Array:
  """Sum over response tokens of log p(target); mask selects the response (prompt masked out)."""
  logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  tok = jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
  return jnp.sum(tok * mask_BT, axis=-1)


def dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
  """Standard (sigmoid) DPO: -log sigmoid(beta * (policy margin - reference margin)), batch mean.

  Returns (loss, metrics) with the implicit rewards and preference accuracy.
  """
  margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
  loss = -jnp.mean(jax.nn.log_sigmoid(beta * margin))
  metrics = {
    "reward_chosen": jnp.mean(beta * (policy_chosen - ref_chosen)),
    "reward_rejected": jnp.mean(beta * (policy_rejected - ref_rejected)),
    "reward_accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
  }
  return loss, metrics


def _masked_mean(x, mask):
  if mask is None:
    return jnp.mean(x)
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)
