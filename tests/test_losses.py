"""Distillation losses against float64 numpy formulas written here (and torch's kl_div for the
reference's `batchmean` KL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zebra_jax.train import losses

RNG = np.random.default_rng(0)


def _log_softmax64(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_ild_distance_l2_is_the_unsquared_norm_over_hidden_averaged_over_tokens():
  s, t = RNG.normal(size=(3, 5, 8)), RNG.normal(size=(3, 5, 8))
  want = np.mean(np.sqrt(((s - t) ** 2).sum(-1)))
  got = losses.ild_distance(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), "l2")
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_ild_distance_mse_is_the_mean_squared_difference():
  s, t = RNG.normal(size=(2, 7, 6)), RNG.normal(size=(2, 7, 6))
  got = losses.ild_distance(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), "mse")
  np.testing.assert_allclose(float(got), np.mean((s - t) ** 2), rtol=1e-6)


def test_ild_distance_upcasts_bfloat16_inputs():
  s, t = RNG.normal(size=(2, 4, 16)), RNG.normal(size=(2, 4, 16))
  s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  got = losses.ild_distance(s16, t16, "l2")
  assert got.dtype == jnp.float32
  s_r, t_r = np.asarray(s16, np.float64), np.asarray(t16, np.float64)  # the rounded inputs
  np.testing.assert_allclose(float(got), np.mean(np.sqrt(((s_r - t_r) ** 2).sum(-1))), rtol=1e-6)


def test_ild_l2_gradient_is_finite_at_zero_difference():
  x = jnp.asarray(RNG.normal(size=(2, 3, 4)), jnp.float32)
  # Half the tokens identical to the target (zero difference), half not.
  t = x.at[:, 1:].add(0.5)
  g = jax.grad(lambda a: losses.ild_distance(a, t, "l2"))(x)
  assert bool(jnp.all(jnp.isfinite(g)))
  np.testing.assert_allclose(np.asarray(g[:, 0]), 0.0, atol=1e-6)
  # Where the difference is non-zero the gradient is (s - t) / ||s - t|| / (B*T).
  d = np.asarray(x - t, np.float64)[:, 1:]
  want = d / np.linalg.norm(d, axis=-1, keepdims=True) / (2 * 3)
  np.testing.assert_allclose(np.asarray(g[:, 1:]), want, rtol=1e-5, atol=1e-7)


def test_ild_distance_rejects_unknown_kind():
  with pytest.raises(ValueError, match="l2"):
    losses.ild_distance(jnp.zeros((1, 1, 2)), jnp.zeros((1, 1, 2)), "l1")


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_matches_numpy(temperature):
  t_logits, s_logits = RNG.normal(size=(2, 5, 11)) * 3, RNG.normal(size=(2, 5, 11)) * 3
  log_p = _log_softmax64(t_logits / temperature)
  log_q = _log_softmax64(s_logits / temperature)
  want = np.mean((np.exp(log_p) * (log_p - log_q)).sum(-1))
  got = losses.forward_kl(
    jnp.asarray(t_logits, jnp.float32), jnp.asarray(s_logits, jnp.float32), temperature=temperature
  )
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_forward_kl_direction_is_teacher_to_student():
  t_logits, s_logits = RNG.normal(size=(1, 3, 7)) * 4, RNG.normal(size=(1, 3, 7))
  fwd = float(losses.forward_kl(jnp.asarray(t_logits), jnp.asarray(s_logits)))
  rev = float(losses.forward_kl(jnp.asarray(s_logits), jnp.asarray(t_logits)))
  log_p, log_q = _log_softmax64(t_logits), _log_softmax64(s_logits)
  np.testing.assert_allclose(fwd, np.mean((np.exp(log_p) * (log_p - log_q)).sum(-1)), rtol=1e-5)
  assert abs(fwd - rev) > 1e-3  # the test can tell the directions apart


def test_forward_kl_is_torch_batchmean_divided_by_seq_len():
  """Reference: F.kl_div(log_softmax(student), softmax(teacher), reduction='batchmean') on (B, T, V)
  divides the total by B only; ours is the per-token mean, i.e. that value / T."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  B, T, V = 3, 6, 13
  t_logits, s_logits = RNG.normal(size=(B, T, V)) * 2, RNG.normal(size=(B, T, V)) * 2
  ref = F.kl_div(
    F.log_softmax(torch.tensor(s_logits), -1), F.softmax(torch.tensor(t_logits), -1), reduction="batchmean"
  ).item()
  got = float(losses.forward_kl(jnp.asarray(t_logits, jnp.float32), jnp.asarray(s_logits, jnp.float32)))
  np.testing.assert_allclose(got, ref / T, rtol=1e-5)


def test_forward_kl_mask_averages_over_selected_tokens():
  t_logits, s_logits = RNG.normal(size=(2, 4, 5)), RNG.normal(size=(2, 4, 5))
  mask = np.array([[1, 1, 0, 0], [1, 0, 0, 1]])
  log_p, log_q = _log_softmax64(t_logits), _log_softmax64(s_logits)
  kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
  want = (kl * mask).sum() / mask.sum()
  got = losses.forward_kl(jnp.asarray(t_logits), jnp.asarray(s_logits), mask_BT=jnp.asarray(mask))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_cross_entropy_matches_numpy():
  logits, targets = RNG.normal(size=(2, 6, 9)) * 2, RNG.integers(0, 9, size=(2, 6))
  logp = _log_softmax64(logits)
  want = -np.mean(np.take_along_axis(logp, targets[..., None], -1))
  got = losses.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  got_m = losses.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(mask))
  np.testing.assert_allclose(float(got_m), (nll * mask).sum() / mask.sum(), rtol=1e-6)


def test_sequence_logprob_sums_masked_target_logprobs():
  logits, targets = RNG.normal(size=(3, 5, 7)), RNG.integers(0, 7, size=(3, 5))
  mask = (RNG.random((3, 5)) > 0.4).astype(np.float32)
  tok = np.take_along_axis(_log_softmax64(logits), targets[..., None], -1)[..., 0]
  want = (tok * mask).sum(-1)
  got = losses.sequence_logprob(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(mask))
  assert got.shape == (3,)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_dpo_sigmoid_loss_matches_the_formula():
  pc, pr, rc, rr = (RNG.normal(size=8) * 20 for _ in range(4))
  beta = 0.1
  z = beta * ((pc - rc) - (pr - rr))
  want = np.mean(np.log1p(np.exp(-z)))  # -log sigmoid(z)
  loss, metrics = losses.dpo_sigmoid_loss(*(jnp.asarray(a, jnp.float32) for a in (pc, pr, rc, rr)), beta)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_chosen"]), np.mean(beta * (pc - rc)), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_rejected"]), np.mean(beta * (pr - rr)), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_accuracy"]), np.mean(z > 0))


def test_dpo_loss_is_log2_when_policy_equals_reference():
  x = jnp.asarray(RNG.normal(size=4), jnp.float32)
  y = jnp.asarray(RNG.normal(size=4), jnp.float32)
  loss, _ = losses.dpo_sigmoid_loss(x, y, x, y, 0.01)
  np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-6)


# -- ILD as a scan over the layers ------------------------------------------------------------------
def _ild_models(student_layers: dict, teacher_layers: int = 4):
  from flax import nnx

  from zebra_jax.config import HybridConfig, LlamaConfig
  from zebra_jax.models.hybrid import CausalLM

  base = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=teacher_layers,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    impl="reference",
    max_position_embeddings=64,
  )
  teacher = CausalLM(LlamaConfig(**base), rngs=nnx.Rngs(1))
  mla = dict(q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)
  mamba = dict(chunk_size=4)
  student = CausalLM(HybridConfig(**base, **mla, **mamba, **student_layers), rngs=nnx.Rngs(2))
  return student, teacher


def _ild_reference(student, teacher, tokens, kind):
  """ILD written out layer by layer (no scan, no stacking): the teacher's blocks one at a time, each
  student block on the teacher's input, distances summed in layer order."""
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  h = teacher.embed(tokens)
  inputs, mixer_outs = [], []
  for block in teacher.layers:
    inputs.append(h)
    h, m = block(h, pos)
    mixer_outs.append(m)
  targets = inputs[1:] + [h]
  block_loss = mixer_loss = 0.0
  for l, block in enumerate(student.layers):
    h_out, m_out = block(inputs[l], pos)
    target = targets[l]
    if l == len(student.layers) - 1:
      h_out, target = student.norm(h_out), teacher.norm(target)
    block_loss = block_loss + losses.ild_distance(h_out, target, kind)
    mixer_loss = mixer_loss + losses.ild_distance(m_out, mixer_outs[l], kind)
  return block_loss + mixer_loss


@pytest.mark.parametrize(
  "layers,scanned",
  [
    (dict(mla_layers=(0, 1, 2, 3)), True),  # ILD-MLA: every layer MLA
    (dict(), True),  # ILD-Mamba2: every layer Mamba2
    (dict(mla_layers=(0, 1, 2, 3), mla_layer_ranks={2: (None, 16)}), False),  # X-EcoMLA per-layer ranks
    (dict(mla_layers=(0, 2)), False),  # a mixed stack
    (dict(remat="full"), True),  # rematerialised blocks inside the scan
  ],
  ids=["mla", "mamba2", "per_layer_ranks", "mixed", "mamba2_remat"],
)
def test_ild_loss_scans_uniform_layers_and_equals_the_layer_by_layer_sum(layers, scanned):
  """The ILD loss and its gradient for every student parameter equal a layer-by-layer reference
  (float32), whether the layers run as a scan (uniform stacks) or one by one."""
  from flax import nnx

  from zebra_jax.distill import objectives

  layers = dict(layers)
  remat = layers.pop("remat", False)
  student, teacher = _ild_models(layers)
  student.remat = remat
  assert (objectives.stacked_blocks(student.layers[:-1]) is not None) == scanned
  assert objectives.stacked_blocks(teacher.layers) is not None
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 12)), jnp.int32)
  graphdef, params, rest = nnx.split(student, nnx.Param, ...)
  loss_fn = objectives.ild_loss_fn("l2")

  def ours(p):
    loss, metrics = loss_fn(nnx.merge(graphdef, p, rest), {"teacher": teacher}, {"tokens": tokens})
    return loss, metrics

  def reference(p):
    return _ild_reference(nnx.merge(graphdef, p, rest), teacher, tokens, "l2")

  (loss, metrics), grads = jax.jit(jax.value_and_grad(ours, has_aux=True))(params)
  ref_loss, ref_grads = jax.value_and_grad(reference)(params)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["block_loss"] + metrics["mixer_loss"]), float(ref_loss), rtol=1e-5)
  flat, ref_flat = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
  assert len(flat) == len(ref_flat)
  for a, b in zip(flat, ref_flat):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert any(float(jnp.abs(g).max()) > 0 for g in flat)
