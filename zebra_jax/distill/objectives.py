"""The stage objectives as functions of the models: ILD's per-layer distances, KD's KL (+ CE) and
DPO's sigmoid loss on sequence log-probs, each (student, {role: teacher model}, batch) ->
(loss, metrics). The math lives in `zebra_jax.train.losses` (full logits) and
`zebra_jax.train.fused_losses` (chunked from hidden states); `distill/plan.py` picks one per stage."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zebra_jax.models.hybrid import CausalLM
from zebra_jax.train import fused_losses, losses

LOSS_IMPLS = ("logits", "fused")


def _positions(tokens_BT):
  return CausalLM.default_positions(tokens_BT)


def stacked_blocks(blocks) -> tuple | None:
  """(graphdef, state with a leading layer axis) of `blocks` when they are one mixer type with the
  same parameter shapes, so a `lax.scan` over them compiles one block instead of len(blocks); None
  otherwise (X-EcoMLA's per-layer ranks, mixed stacks). The graphdef is the first block's: blocks
  differ only in their layer index, which no forward reads."""
  blocks = list(blocks)
  if len(blocks) < 2 or len({b.mixer_type for b in blocks}) != 1:
    return None
  splits = [nnx.split(b) for b in blocks]
  leaves0, tree0 = jax.tree.flatten(splits[0][1])
  for _, state in splits[1:]:
    leaves, tree = jax.tree.flatten(state)
    if tree != tree0 or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(leaves, leaves0)):
      return None
  return splits[0][0], jax.tree.map(lambda *xs: jnp.stack(xs), *[state for _, state in splits])


def _teacher_intermediates(teacher, tokens, pos):
  """(inputs_LBTD, mixer_outs_LBTD, last_BTD): every block's input hidden state and mixer output,
  stacked, and the last block's output (before the final norm); a scan over uniform blocks."""
  stacked = stacked_blocks(teacher.layers)
  if stacked is None:
    _, hidden, mixer_outs = teacher.forward_with_intermediates(tokens, pos)
    return jnp.stack(hidden[:-1]), jnp.stack(mixer_outs), hidden[-1]
  graphdef, state_L = stacked
  apply = teacher._block_fn()

  def body(h, state):
    h_out, m_out = apply(nnx.merge(graphdef, state), h, pos)
    return h_out, (h, m_out)

  last, (inputs, mixer_outs) = jax.lax.scan(body, teacher.embed(tokens), state_L)
  return inputs, mixer_outs, last


def ild_loss_fn(kind: str):
  """Reference ILD: every student block gets the teacher's input hidden state; the loss sums, over
  layers, the distance of block outputs and of mixer outputs (the last block output compared after
  each model's final norm, as HF hidden_states[-1] is normalised).

  The layers are independent given the teacher's states, so uniform stacks (every ILD student:
  all MLA or all Mamba2 of one shape; a Llama teacher) run as a `lax.scan` over the layers: one
  block is compiled instead of 30 (the smollm2 ILD stages compiled for 28-62 s on an H100 for
  28-40 s of steps). Other stacks run the layers one by one; the sum is the same, in the same order."""

  def loss_fn(student, teachers, batch):
    teacher = teachers["teacher"]
    tokens = batch["tokens"]
    pos = _positions(tokens)
    inputs, mixer_outs, last = jax.tree.map(
      jax.lax.stop_gradient, _teacher_intermediates(teacher, tokens, pos)
    )
    L = len(student.layers)
    # block l < L-1 is compared with block l+1's input (inputs[l + 1]); the last block with the
    # teacher's last output, both normed
    apply = student._block_fn()  # honours train.remat like the full forward
    dist = lambda a, b: losses.ild_distance(a, b, kind)
    block_loss, mixer_loss = jnp.float32(0.0), jnp.float32(0.0)
    stacked = stacked_blocks(student.layers[: L - 1])
    if stacked is not None:
      graphdef, state_L = stacked

      def body(acc, xs):
        state, h_in, target, m_target = xs
        h_out, m_out = apply(nnx.merge(graphdef, state), h_in, pos)
        return (acc[0] + dist(h_out, target), acc[1] + dist(m_out, m_target)), None

      xs = (state_L, inputs[: L - 1], inputs[1:L], mixer_outs[: L - 1])
      (block_loss, mixer_loss), _ = jax.lax.scan(body, (block_loss, mixer_loss), xs)
    else:
      for l in range(L - 1):
        h_out, m_out = apply(student.layers[l], inputs[l], pos)
        block_loss = block_loss + dist(h_out, inputs[l + 1])
        mixer_loss = mixer_loss + dist(m_out, mixer_outs[l])
    h_out, m_out = apply(student.layers[L - 1], inputs[L - 1], pos)
    block_loss = block_loss + dist(student.norm(h_out), jax.lax.stop_gradient(teacher.norm(last)))
    mixer_loss = mixer_loss + dist(m_out, mixer_outs[L - 1])
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


__all__ = ["LOSS_IMPLS", "ild_loss_fn", "kd_loss_fn", "dpo_loss_fn", "stacked_blocks"]
