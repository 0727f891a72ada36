"""The stage objectives as functions of the models: ILD's per-layer distances, KD's KL (+ CE) and
DPO's sigmoid loss on sequence log-probs, each (student, {role: teacher model}, batch) ->
(loss, metrics). The math lives in `zebra_jax.train.losses` (full logits) and
`zebra_jax.train.fused_losses` (chunked from hidden states); `distill/plan.py` picks one per stage."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zebra_jax.models.hybrid import CausalLM
from zebra_jax.train import fused_losses, losses

LOSS_IMPLS = ("logits", "fused")


def _positions(tokens_BT):
  return CausalLM.default_positions(tokens_BT)


def ild_loss_fn(kind: str):
  """Reference ILD: every student block gets the teacher's input hidden state; the loss sums, over
  layers, the distance of block outputs and of mixer outputs (the last block output compared after
  each model's final norm, as HF hidden_states[-1] is normalised)."""

  def loss_fn(student, teachers, batch):
    teacher = teachers["teacher"]
    tokens = batch["tokens"]
    pos = _positions(tokens)
    _, hidden, mixer_outs = teacher.forward_with_intermediates(tokens, pos)
    hidden = [jax.lax.stop_gradient(h) for h in hidden]
    mixer_outs = [jax.lax.stop_gradient(m) for m in mixer_outs]
    L = len(student.layers)
    apply = student._block_fn()  # honours train.remat like the full forward
    block_loss, mixer_loss = 0.0, 0.0
    for l, block in enumerate(student.layers):
      h_out, m_out = apply(block, hidden[l], pos)
      target = hidden[l + 1]
      if l == L - 1:
        h_out, target = student.norm(h_out), jax.lax.stop_gradient(teacher.norm(target))
      block_loss = block_loss + losses.ild_distance(h_out, target, kind)
      mixer_loss = mixer_loss + losses.ild_distance(m_out, mixer_outs[l], kind)
    return block_loss + mixer_loss, {"block_loss": block_loss, "mixer_loss": mixer_loss}

  return loss_fn


def kd_loss_fn(
  kl_weight: float,
  ce_weight: float,
  temperature: float,
  impl: str = "logits",
  chunk: int = fused_losses.DEFAULT_CHUNK,
):
  """KL on every position of the packed row (no targets needed); CE on next-token targets. The
  whole row is the input so the sequence length stays the configured one (kernel-friendly).
  impl "logits": both models' full logits, then the losses (train/losses.py); "fused": the same
  losses from the final hidden states, `chunk` tokens at a time (train/fused_losses.py)."""
  _check_loss_impl(impl)

  def loss_fn(student, teachers, batch):
    tokens = batch["tokens"]
    pos = _positions(tokens)
    teacher = teachers["teacher"]
    if impl == "fused":
      ht = jax.lax.stop_gradient(teacher.final_hidden(tokens, pos))
      loss, kl, ce = fused_losses.kd_loss(
        student.final_hidden(tokens, pos),
        student.head_DV(),
        ht,
        jax.lax.stop_gradient(teacher.head_DV()),
        tokens,
        kl_weight=kl_weight,
        ce_weight=ce_weight,
        temperature=temperature,
        chunk=chunk,
      )
      return loss, {"kl": kl, "ce": ce}
    t_logits = jax.lax.stop_gradient(teacher(tokens, pos))
    s_logits = student(tokens, pos)
    kl = losses.forward_kl(t_logits, s_logits, temperature=temperature)
    ce = losses.cross_entropy(s_logits[:, :-1], tokens[:, 1:])
    loss = kl_weight * kl + (ce_weight * ce if ce_weight else 0.0)
    return loss, {"kl": kl, "ce": ce}

  return loss_fn


def _check_loss_impl(impl: str) -> None:
  if impl not in LOSS_IMPLS:
    raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {impl!r}")


def dpo_loss_fn(beta: float, impl: str = "logits", chunk: int = fused_losses.DEFAULT_CHUNK):
  """Sigmoid DPO on sequence log-probs; impl as in kd_loss_fn."""
  _check_loss_impl(impl)

  def logps(model, tokens, mask):
    if impl == "fused":
      h = model.final_hidden(tokens, _positions(tokens))[:, :-1]
      return fused_losses.sequence_logprob(
        h, model.head_DV(), tokens[:, 1:], mask[:, 1:].astype(jnp.float32), chunk=chunk
      )
    logits = model(tokens, _positions(tokens))[:, :-1]
    return losses.sequence_logprob(logits, tokens[:, 1:], mask[:, 1:].astype(jnp.float32))

  def loss_fn(policy, teachers, batch):
    ref = teachers["reference"]
    pc = logps(policy, batch["chosen"], batch["chosen_mask"])
    pr = logps(policy, batch["rejected"], batch["rejected_mask"])
    rc = jax.lax.stop_gradient(logps(ref, batch["chosen"], batch["chosen_mask"]))
    rr = jax.lax.stop_gradient(logps(ref, batch["rejected"], batch["rejected_mask"]))
    return losses.dpo_sigmoid_loss(pc, pr, rc, rr, beta)

  return loss_fn


__all__ = ["LOSS_IMPLS", "ild_loss_fn", "kd_loss_fn", "dpo_loss_fn"]
