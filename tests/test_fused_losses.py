"""The chunked output-head losses (zebra_jax/train/fused_losses.py) against explicit logits.

Values are checked against float64 numpy written here; gradients against jax autodiff of the naive
losses (`zebra_jax.train.losses` on `h @ W`, no custom VJP), in float32 at 1e-5 relative. Odd token
counts (chunks padded), masks, temperature, tied / bf16 inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zebra_jax.train import fused_losses as fl
from zebra_jax.train import losses

B, T, D, V = 2, 37, 24, 101  # 74 tokens: chunks of 16 leave a padded last chunk


def _data(seed=0, dtype=jnp.float32):
  r = np.random.default_rng(seed)
  hs = r.normal(size=(B, T, D)).astype(np.float32)
  ht = r.normal(size=(B, T, D)).astype(np.float32)
  ws = (r.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
  wt = (1.5 * r.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)
  tokens = r.integers(0, V, size=(B, T)).astype(np.int32)
  mask = (r.random((B, T)) < 0.7).astype(np.float32)
  return [jnp.asarray(x, dtype) for x in (hs, ws, ht, wt)] + [jnp.asarray(tokens), jnp.asarray(mask)]


def _np_logsoftmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(hs, ws, ht, wt, temp):
  s = np.asarray(hs, np.float64) @ np.asarray(ws, np.float64)
  t = np.asarray(ht, np.float64) @ np.asarray(wt, np.float64)
  lp, lq = _np_logsoftmax(t / temp), _np_logsoftmax(s / temp)
  return (np.exp(lp) * (lp - lq)).sum(-1)  # (B, T)


def _np_logp(h, w, targets):
  s = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
  return np.take_along_axis(_np_logsoftmax(s), np.asarray(targets)[..., None], -1)[..., 0]


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.parametrize("temp,chunk", [(1.0, 128), (0.7, 5)])
def test_kd_kl_ce_values_and_gradients(temp, chunk):
  hs, ws, ht, wt, tokens, _ = _data()
  kl, ce = fl.kd_kl_ce(hs, ws, ht, wt, tokens, temperature=temp, chunk=chunk)
  want_kl = _np_kl(hs, ws, ht, wt, temp).mean()
  want_ce = -_np_logp(hs[:, :-1], ws, tokens[:, 1:]).mean()
  assert _rel(kl, want_kl) < 1e-5 and _rel(ce, want_ce) < 1e-5

  def fused(hs, ws, a, b):
    kl, ce = fl.kd_kl_ce(hs, ws, ht, wt, tokens, temperature=temp, chunk=chunk)
    return a * kl + b * ce

  def naive(hs, ws, a, b):
    s, t = hs @ ws, ht @ wt
    return a * losses.forward_kl(t, s, temperature=temp) + b * losses.cross_entropy(s[:, :-1], tokens[:, 1:])

  for a, b in ((1.0, 0.0), (0.0, 1.0), (1.0, 0.3)):
    gf = jax.grad(fused, argnums=(0, 1))(hs, ws, a, b)
    gn = jax.grad(naive, argnums=(0, 1))(hs, ws, a, b)
    for x, y in zip(gf, gn):
      assert _rel(x, y) < 1e-5, (temp, chunk, a, b)


def test_forward_kl_with_mask_and_teacher_gets_no_gradient():
  hs, ws, ht, wt, _, mask = _data(1)
  got = fl.forward_kl(hs, ws, ht, wt, temperature=1.5, mask_BT=mask, chunk=16)
  kl = _np_kl(hs, ws, ht, wt, 1.5)
  m = np.asarray(mask, np.float64)
  assert _rel(got, (kl * m).sum() / m.sum()) < 1e-5
  g = jax.grad(
    lambda hs, ws, ht, wt: fl.forward_kl(hs, ws, ht, wt, temperature=1.5, mask_BT=mask, chunk=16),
    argnums=(0, 1, 2, 3),
  )(hs, ws, ht, wt)
  gn = jax.grad(
    lambda hs, ws: losses.forward_kl(ht @ wt, hs @ ws, temperature=1.5, mask_BT=mask), argnums=(0, 1)
  )(hs, ws)
  assert _rel(g[0], gn[0]) < 1e-5 and _rel(g[1], gn[1]) < 1e-5
  assert not np.any(np.asarray(g[2])) and not np.any(np.asarray(g[3]))  # the teacher is frozen


def test_cross_entropy_and_sequence_logprob_with_masks():
  hs, ws, _, _, tokens, mask = _data(2)
  got = fl.cross_entropy(hs, ws, tokens, mask, chunk=16)
  lp = _np_logp(hs, ws, tokens)
  m = np.asarray(mask, np.float64)
  assert _rel(got, -(lp * m).sum() / m.sum()) < 1e-5
  seq = fl.sequence_logprob(hs, ws, tokens, mask, chunk=16)
  assert seq.shape == (B,) and _rel(seq, (lp * m).sum(-1)) < 1e-5
  for f, n in (
    (
      lambda h, w: fl.cross_entropy(h, w, tokens, mask, chunk=16),
      lambda h, w: losses.cross_entropy(h @ w, tokens, mask),
    ),
    # DPO differentiates a difference of sequence log-probs: a cotangent per row
    (
      lambda h, w: jnp.dot(fl.sequence_logprob(h, w, tokens, mask, chunk=16), jnp.array([0.7, -1.3])),
      lambda h, w: jnp.dot(losses.sequence_logprob(h @ w, tokens, mask), jnp.array([0.7, -1.3])),
    ),
  ):
    gf, gn = jax.grad(f, argnums=(0, 1))(hs, ws), jax.grad(n, argnums=(0, 1))(hs, ws)
    assert _rel(gf[0], gn[0]) < 1e-5 and _rel(gf[1], gn[1]) < 1e-5


def test_tied_head_gradient_reaches_the_embedding():
  """A tied model's head is embedding.T: the head gradient must flow back through the transpose."""
  hs, _, ht, wt, tokens, _ = _data(3)
  emb_VD = jnp.asarray(np.random.default_rng(4).normal(size=(V, D)) / np.sqrt(D), jnp.float32)
  gf = jax.grad(lambda e: sum(fl.kd_kl_ce(hs, e.T, ht, wt, tokens, chunk=16)))(emb_VD)
  gn = jax.grad(
    lambda e: losses.forward_kl(ht @ wt, hs @ e.T) + losses.cross_entropy((hs @ e.T)[:, :-1], tokens[:, 1:])
  )(emb_VD)
  assert _rel(gf, gn) < 1e-5


def test_bfloat16_inputs_give_bfloat16_gradients_close_to_float32():
  hs, ws, ht, wt, tokens, _ = _data(5)
  f = lambda hs, ws: sum(fl.kd_kl_ce(hs, ws, ht.astype(hs.dtype), wt.astype(hs.dtype), tokens, chunk=16))
  g32 = jax.grad(f, argnums=(0, 1))(hs, ws)
  g16 = jax.grad(f, argnums=(0, 1))(hs.astype(jnp.bfloat16), ws.astype(jnp.bfloat16))
  assert g16[0].dtype == jnp.bfloat16 and g16[1].dtype == jnp.bfloat16
  assert _rel(g16[0], g32[0]) < 0.05 and _rel(g16[1], g32[1]) < 0.05


def test_shape_errors_name_the_problem():
  hs, ws, ht, wt, tokens, _ = _data()
  with pytest.raises(ValueError, match="do not form"):
    fl.token_logprobs(hs.reshape(-1, D), ws.T, tokens.reshape(-1))
  with pytest.raises(ValueError, match="same tokens, same vocabulary"):
    fl.kl_and_logprobs(hs.reshape(-1, D), ws, ht.reshape(-1, D), wt[:, :50], tokens.reshape(-1))


@pytest.mark.parametrize("tied,stage", [(True, "kd"), (False, "dpo")])
def test_stage_losses_fused_equal_logits(tied, stage):
  """The KD and DPO stage losses with loss_impl="fused" give the "logits" path's loss and the same
  gradient for every student parameter (float32 models, tied and untied heads)."""
  from flax import nnx

  from zebra_jax.config import LlamaConfig
  from zebra_jax.distill import objectives

  cfg = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    impl="reference",
    max_position_embeddings=64,
    tie_word_embeddings=tied,
  )
  student = objectives.CausalLM(LlamaConfig(**cfg), rngs=nnx.Rngs(0))
  other = objectives.CausalLM(LlamaConfig(**cfg), rngs=nnx.Rngs(1))
  r = np.random.default_rng(0)
  if stage == "kd":
    batch = {"tokens": jnp.asarray(r.integers(0, 97, (2, 19)), jnp.int32)}
    make = lambda impl: objectives.kd_loss_fn(1.0, 0.4, 1.3, impl, chunk=8)
    teachers = {"teacher": other}
  else:
    mask = jnp.asarray(np.arange(19)[None] >= np.array([[5], [9]]), jnp.int32)
    batch = {
      "chosen": jnp.asarray(r.integers(0, 97, (2, 19)), jnp.int32),
      "chosen_mask": mask,
      "rejected": jnp.asarray(r.integers(0, 97, (2, 19)), jnp.int32),
      "rejected_mask": mask,
    }
    make = lambda impl: objectives.dpo_loss_fn(0.5, impl, chunk=8)
    teachers = {"reference": other}
  graphdef, params = nnx.split(student, nnx.Param)

  def value_and_grad(impl):
    def f(p):
      return make(impl)(nnx.merge(graphdef, p), teachers, batch)[0]

    return jax.value_and_grad(f)(params)

  (lf, gf), (ln, gn) = value_and_grad("fused"), value_and_grad("logits")
  assert _rel(lf, ln) < 1e-5
  flat_f, flat_n = jax.tree.leaves(gf), jax.tree.leaves(gn)
  assert len(flat_f) == len(flat_n)
  for a, b in zip(flat_f, flat_n):
    assert _rel(a, b) < 1e-4
  with pytest.raises(ValueError, match="loss_impl"):
    objectives.kd_loss_fn(1.0, 0.0, 1.0, "chunked")


@pytest.mark.parametrize("temp,chunk,kl_w,ce_w", [(2.0, 16, 1.0, 0.4), (1.0, 5, 0.5, 1.0)])
def test_kd_loss_gradient_formed_in_forward_equals_autodiff(temp, chunk, kl_w, ce_w):
  """kd_loss (d loss / d logits formed in the forward pass) against float64 values and autodiff of
  the naive loss; kl and ce come back as metrics (no gradient)."""
  hs, ws, ht, wt, tokens, _ = _data(6)
  loss, kl, ce = fl.kd_loss(
    hs, ws, ht, wt, tokens, kl_weight=kl_w, ce_weight=ce_w, temperature=temp, chunk=chunk
  )
  want_kl = _np_kl(hs, ws, ht, wt, temp).mean()
  want_ce = -_np_logp(hs[:, :-1], ws, tokens[:, 1:]).mean()
  assert _rel(kl, want_kl) < 1e-5 and _rel(ce, want_ce) < 1e-5
  assert _rel(loss, kl_w * want_kl + ce_w * want_ce) < 1e-5

  def naive(hs, ws):
    s, t = hs @ ws, ht @ wt
    return kl_w * losses.forward_kl(t, s, temperature=temp) + ce_w * losses.cross_entropy(
      s[:, :-1], tokens[:, 1:]
    )

  g = jax.grad(
    lambda hs, ws: (
      3.0
      * fl.kd_loss(hs, ws, ht, wt, tokens, kl_weight=kl_w, ce_weight=ce_w, temperature=temp, chunk=chunk)[0]
    ),
    argnums=(0, 1),
  )(hs, ws)
  gn = jax.grad(lambda hs, ws: 3.0 * naive(hs, ws), argnums=(0, 1))(hs, ws)
  assert _rel(g[0], gn[0]) < 1e-5 and _rel(g[1], gn[1]) < 1e-5
  # the metrics carry no gradient, by construction rather than by accident
  gk = jax.grad(lambda hs: fl.kd_loss(hs, ws, ht, wt, tokens, chunk=chunk)[1])(hs)
  assert not np.any(np.asarray(gk))
