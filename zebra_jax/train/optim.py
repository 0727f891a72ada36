"""Optimiser: AdamW with linear warmup + cosine decay and global-norm clipping (the reference's HF
Trainer defaults: weight decay 0, max_grad_norm 1.0, warmup 1%)."""

from __future__ import annotations

import optax


def lr_schedule(lr: float, total_steps: int, warmup_frac: float = 0.01, final_frac: float = 0.0):
  warmup = max(1, int(round(total_steps * warmup_frac))) if warmup_frac > 0 else 0
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=lr * final_frac)


def make_optimizer(lr: float, total_steps: int, *, warmup_frac: float = 0.01,
                   weight_decay: float = 0.0, grad_clip: float | None = 1.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  chain = []
  if grad_clip:
    chain.append(optax.clip_by_global_norm(grad_clip))
  chain.append(optax.adamw(lr_schedule(lr, total_steps, warmup_frac), b1=b1, b2=b2, eps=eps,
                           weight_decay=weight_decay))
  return optax.chain(*chain)
