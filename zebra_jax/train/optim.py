"""Optimiser: AdamW with linear warmup + cosine decay and global-norm clipping (the reference's HF
Trainer defaults: weight decay 0, max_grad_norm 1.0, warmup 1%)."""

from __future__ import annotations

import jax
import optax


def lr_schedule(lr: float, total_steps: int, warmup_frac: float = 0.01, final_frac: float = 0.0):
  warmup = max(1, int(round(total_steps * warmup_frac))) if warmup_frac > 0 else 0
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup else lr,
    peak_value=lr,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=lr * final_frac,
  )


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its leaf of `scales` (a pytree of floats shaped like the params):
  after AdamW this is a per-parameter learning rate (the decoupled decay is scaled with it)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u if s == 1.0 else u * s, updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
  lr: float,
  total_steps: int,
  *,
  warmup_frac: float = 0.01,
  weight_decay: float = 0.0,
  grad_clip: float | None = 1.0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  lr_scales=None,
) -> optax.GradientTransformation:
  """Clip -> AdamW (warmup + cosine) [-> per-parameter multipliers `lr_scales`, a pytree of floats
  shaped like the trainable params; None: every parameter at `lr`]."""
  chain = []
  if grad_clip:
    chain.append(optax.clip_by_global_norm(grad_clip))
  chain.append(
    optax.adamw(lr_schedule(lr, total_steps, warmup_frac), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  )
  if lr_scales is not None and any(s != 1.0 for s in jax.tree.leaves(lr_scales)):
    chain.append(scale_by_tree(lr_scales))
  return optax.chain(*chain)
