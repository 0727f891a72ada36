"""Output-head losses that never hold a (tokens, vocab) logits tensor: KL(teacher || student),
cross-entropy and per-token log-probabilities computed from final hidden states and LM-head
matrices, a chunk of tokens at a time, with custom VJPs.

Why: at Llama-3 shapes (vocabulary 128,256) the float32 logits of a KD step are its largest
tensors; the naive loss (`losses.forward_kl` on `model(tokens)`) builds the teacher's and the
student's in full, twice more for the softmaxes, and keeps them for the backward pass. Here the
forward pass keeps per token only the log-normalisers (a few floats), and the backward pass
recomputes each chunk's logits (student and teacher: one more head matmul each) to form
d loss / d logits = g_kl * (q - p) / T + g_lp * (onehot - softmax), which goes straight into the
two gradient matmuls (d hidden = d logits @ W^T, d W += hidden^T @ d logits). Peak extra memory is
one chunk of logits (chunk x vocab) plus the float32 d W accumulator.

Anchors: Liger Kernel's fused linear cross-entropy / JSD (chunked head + loss), MaxText's vocabulary
tiling. Reference: `zebra_jax.train.losses` on explicit logits; `tests/test_fused_losses.py` checks
values and gradients against it in float32.

Shapes: h_ND / W_DV (tokens flattened, hidden D, vocabulary V); the public wrappers take (B, T, D).
Logits are accumulated in float32 whatever the input dtype; gradients come back in the inputs'
dtypes. Teacher inputs get no gradient (they are stop-gradient in every use).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DEFAULT_CHUNK = 1024  # tokens per chunk: 1024 x 128k float32 logits = 0.5 GB


def _chunked(x, chunk: int):
  """(N, ...) -> (N_pad / chunk, chunk, ...), zero-padded at the end."""
  n = x.shape[0]
  pad = (-n) % chunk
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def _logits(h_CD, w_DV):
  return jnp.einsum("cd,dv->cv", h_CD, w_DV, preferred_element_type=jnp.float32)


def _grad_matmuls(dw_DV, h_CD, w_DV, dlogits_CV):
  """(dW + h^T dlogits, dlogits W^T): the operands in the inputs' dtype (bf16 training multiplies
  bf16 gradients, as the full-logits path does), accumulated in float32."""
  d = dlogits_CV.astype(w_DV.dtype)
  dh = jnp.einsum("cv,dv->cd", d, w_DV, preferred_element_type=jnp.float32)
  return dw_DV + jnp.einsum("cd,cv->dv", h_CD.astype(w_DV.dtype), d, preferred_element_type=jnp.float32), dh


def _check(h_ND, w_DV, what: str):
  if h_ND.ndim != 2 or w_DV.ndim != 2 or h_ND.shape[1] != w_DV.shape[0]:
    raise ValueError(
      f"{what}: hidden {h_ND.shape} and head {w_DV.shape} do not form (tokens, D) @ (D, vocab)"
    )


def _check_pair(hs_ND, ws_DV, ht_ND, wt_DV):
  """Student and teacher operands: each a valid (tokens, D) @ (D, vocab), same tokens and vocab."""
  _check(hs_ND, ws_DV, "student")
  _check(ht_ND, wt_DV, "teacher")
  if ht_ND.shape[0] != hs_ND.shape[0] or wt_DV.shape[1] != ws_DV.shape[1]:
    raise ValueError(
      f"teacher hidden {ht_ND.shape} / head {wt_DV.shape} do not match the student's "
      f"{hs_ND.shape} / {ws_DV.shape} (same tokens, same vocabulary)"
    )


# -- per-token log-probabilities (CE, DPO) ---------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def token_logprobs(h_ND, w_DV, targets_N, chunk: int = DEFAULT_CHUNK):
  """log softmax(h @ W)[n, targets[n]] for every token n, (N,) float32."""
  return _logprobs_fwd(h_ND, w_DV, targets_N, chunk)[0]


def _logprobs_fwd(h_ND, w_DV, targets_N, chunk):
  _check(h_ND, w_DV, "token_logprobs")
  n = h_ND.shape[0]

  def one(args):
    h, tgt = args
    s = _logits(h, w_DV)
    lse = jax.nn.logsumexp(s, axis=-1)
    return jnp.take_along_axis(s, tgt[:, None], axis=-1)[:, 0] - lse, lse

  lp, lse = jax.lax.map(one, (_chunked(h_ND, chunk), _chunked(targets_N, chunk)))
  lp, lse = lp.reshape(-1)[:n], lse.reshape(-1)[:n]
  return lp, (h_ND, w_DV, targets_N, lse)


def _logprobs_bwd(chunk, res, g_N):
  h_ND, w_DV, targets_N, lse_N = res
  n = h_ND.shape[0]

  def one(dw_DV, args):
    h, tgt, lse, g = args
    s = _logits(h, w_DV)
    soft = jnp.exp(s - lse[:, None])
    onehot = jax.nn.one_hot(tgt, s.shape[-1], dtype=jnp.float32)
    dlogits = g[:, None] * (onehot - soft)
    return _grad_matmuls(dw_DV, h, w_DV, dlogits)

  dw, dh = jax.lax.scan(
    one,
    jnp.zeros(w_DV.shape, jnp.float32),
    (
      _chunked(h_ND, chunk),
      _chunked(targets_N, chunk),
      _chunked(lse_N, chunk),
      _chunked(g_N.astype(jnp.float32), chunk),
    ),
  )
  dh = dh.reshape(-1, h_ND.shape[1])[:n]
  return dh.astype(h_ND.dtype), dw.astype(w_DV.dtype), None


token_logprobs.defvjp(_logprobs_fwd, _logprobs_bwd)


# -- KL(teacher || student) and the student's log-probabilities, from one pass over the chunks -------
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def kl_and_logprobs(
  hs_ND, ws_DV, ht_ND, wt_DV, targets_N, temperature: float = 1.0, chunk: int = DEFAULT_CHUNK
):
  """Per token: (KL(softmax(t/T) || softmax(s/T)), log softmax(s)[target]), both (N,) float32, with
  s = hs @ ws (student) and t = ht @ wt (teacher; no gradient)."""
  return _kl_fwd(hs_ND, ws_DV, ht_ND, wt_DV, targets_N, temperature, chunk)[0]


def _kl_fwd(hs_ND, ws_DV, ht_ND, wt_DV, targets_N, temperature, chunk):
  _check_pair(hs_ND, ws_DV, ht_ND, wt_DV)
  n, inv_t = hs_ND.shape[0], 1.0 / temperature

  def one(args):
    hs, ht, tgt = args
    s, t = _logits(hs, ws_DV), _logits(ht, wt_DV)
    lse_s1 = jax.nn.logsumexp(s, axis=-1)
    lse_sT = jax.nn.logsumexp(s * inv_t, axis=-1)
    lse_tT = jax.nn.logsumexp(t * inv_t, axis=-1)
    log_p = t * inv_t - lse_tT[:, None]
    log_q = s * inv_t - lse_sT[:, None]
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    lp = jnp.take_along_axis(s, tgt[:, None], axis=-1)[:, 0] - lse_s1
    return kl, lp, jnp.stack([lse_s1, lse_sT, lse_tT], axis=-1)

  kl, lp, lse = jax.lax.map(one, (_chunked(hs_ND, chunk), _chunked(ht_ND, chunk), _chunked(targets_N, chunk)))
  kl, lp, lse = kl.reshape(-1)[:n], lp.reshape(-1)[:n], lse.reshape(-1, 3)[:n]
  return (kl, lp), (hs_ND, ws_DV, ht_ND, wt_DV, targets_N, lse)


def _kl_bwd(temperature, chunk, res, g):
  hs_ND, ws_DV, ht_ND, wt_DV, targets_N, lse_N3 = res
  g_kl, g_lp = g
  n, inv_t = hs_ND.shape[0], 1.0 / temperature

  def one(dw_DV, args):
    hs, ht, tgt, lse, gk, gl = args
    s, t = _logits(hs, ws_DV), _logits(ht, wt_DV)
    q = jnp.exp(s * inv_t - lse[:, 1:2])
    p = jnp.exp(t * inv_t - lse[:, 2:3])
    soft = jnp.exp(s - lse[:, 0:1])
    onehot = jax.nn.one_hot(tgt, s.shape[-1], dtype=jnp.float32)
    # d KL / d s = (q - p) / T;  d logp / d s = onehot - softmax(s)
    dlogits = (gk * inv_t)[:, None] * (q - p) + gl[:, None] * (onehot - soft)
    return _grad_matmuls(dw_DV, hs, ws_DV, dlogits)

  f32 = lambda x: _chunked(x.astype(jnp.float32), chunk)
  dw, dh = jax.lax.scan(
    one,
    jnp.zeros(ws_DV.shape, jnp.float32),
    (
      _chunked(hs_ND, chunk),
      _chunked(ht_ND, chunk),
      _chunked(targets_N, chunk),
      _chunked(lse_N3, chunk),
      f32(g_kl),
      f32(g_lp),
    ),
  )
  dh = dh.reshape(-1, hs_ND.shape[1])[:n]
  return dh.astype(hs_ND.dtype), dw.astype(ws_DV.dtype), None, None, None


kl_and_logprobs.defvjp(_kl_fwd, _kl_bwd)


# -- the KD step's weighted loss: gradients formed in the forward pass ------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _kd_loss(hs_ND, ws_DV, ht_ND, wt_DV, targets_N, ce_mask_N, kl_weight, ce_weight, temperature, chunk):
  return _kd_loss_fwd(
    hs_ND, ws_DV, ht_ND, wt_DV, targets_N, ce_mask_N, kl_weight, ce_weight, temperature, chunk
  )[0]


def _kd_loss_fwd(hs_ND, ws_DV, ht_ND, wt_DV, targets_N, ce_mask_N, kl_weight, ce_weight, temperature, chunk):
  """The loss kl_weight * mean KL + ce_weight * masked mean CE is a fixed linear function of the
  per-token terms, so its gradient is known before any cotangent arrives: form d loss / d logits
  per chunk here and multiply it straight into d hidden and d W (4 head matmuls in all, as the
  full-logits path; the per-token VJPs above recompute the logits instead)."""
  _check_pair(hs_ND, ws_DV, ht_ND, wt_DV)
  n, inv_t = hs_ND.shape[0], 1.0 / temperature
  ce_mask_N = ce_mask_N.astype(jnp.float32)
  ce_count = jnp.maximum(jnp.sum(ce_mask_N), 1.0)

  def one(dw_DV, args):
    hs, ht, tgt, m = args
    s, t = _logits(hs, ws_DV), _logits(ht, wt_DV)
    log_q = jax.nn.log_softmax(s * inv_t, axis=-1)
    log_p = jax.nn.log_softmax(t * inv_t, axis=-1)
    p = jnp.exp(log_p)
    kl = jnp.sum(p * (log_p - log_q), axis=-1)
    log_s = jax.nn.log_softmax(s, axis=-1) if temperature != 1.0 else log_q
    lp = jnp.take_along_axis(log_s, tgt[:, None], axis=-1)[:, 0]
    dlogits = (kl_weight * inv_t / n) * (jnp.exp(log_q) - p)
    if ce_weight:
      onehot = jax.nn.one_hot(tgt, s.shape[-1], dtype=jnp.float32)
      dlogits = dlogits + (ce_weight * m / ce_count)[:, None] * (jnp.exp(log_s) - onehot)
    dw_DV, dh = _grad_matmuls(dw_DV, hs, ws_DV, dlogits)
    return dw_DV, (kl, lp, dh)

  # padded rows have zero hidden states (uniform = uniform: KL 0, no KL gradient) and CE mask 0
  dw, (kl, lp, dh) = jax.lax.scan(
    one,
    jnp.zeros(ws_DV.shape, jnp.float32),
    (_chunked(hs_ND, chunk), _chunked(ht_ND, chunk), _chunked(targets_N, chunk), _chunked(ce_mask_N, chunk)),
  )
  kl, lp = kl.reshape(-1)[:n], lp.reshape(-1)[:n]
  dh = dh.reshape(-1, hs_ND.shape[1])[:n]
  kl_mean = jnp.mean(kl)
  ce_mean = -jnp.sum(lp * ce_mask_N) / ce_count
  loss = kl_weight * kl_mean + ce_weight * ce_mean
  return (loss, kl_mean, ce_mean), (dh.astype(hs_ND.dtype), dw.astype(ws_DV.dtype))


def _kd_loss_bwd(kl_weight, ce_weight, temperature, chunk, res, g):
  dh, dw = res
  g_loss = g[0]  # kl and ce leave kd_loss under stop_gradient: their cotangents are zero
  return ((g_loss * dh).astype(dh.dtype), (g_loss * dw).astype(dw.dtype), None, None, None, None)


_kd_loss.defvjp(_kd_loss_fwd, _kd_loss_bwd)


def kd_loss(
  hs_BTD,
  ws_DV,
  ht_BTD,
  wt_DV,
  tokens_BT,
  *,
  kl_weight: float = 1.0,
  ce_weight: float = 0.0,
  temperature: float = 1.0,
  chunk: int = DEFAULT_CHUNK,
):
  """(loss, kl, ce) of the KD step: loss = kl_weight * KL + ce_weight * CE, with KL =
  `losses.forward_kl(t_logits, s_logits, temperature=T)` over every position and CE =
  `losses.cross_entropy(s_logits[:, :-1], tokens[:, 1:])`. Only `loss` is differentiable (kl and
  ce are metrics, returned under stop_gradient); its gradient is formed in the forward pass."""
  B, T = tokens_BT.shape
  targets_BT = jnp.concatenate([tokens_BT[:, 1:], jnp.zeros((B, 1), tokens_BT.dtype)], axis=1)
  ce_mask = jnp.broadcast_to(jnp.arange(T) < T - 1, (B, T)).reshape(-1)
  loss, kl, ce = _kd_loss(
    _flat(hs_BTD),
    ws_DV,
    _flat(jax.lax.stop_gradient(ht_BTD)),
    jax.lax.stop_gradient(wt_DV),
    targets_BT.reshape(-1),
    ce_mask,
    float(kl_weight),
    float(ce_weight),
    float(temperature),
    int(chunk),
  )
  return loss, jax.lax.stop_gradient(kl), jax.lax.stop_gradient(ce)


# -- the losses the stages use ---------------------------------------------------------------------
def _flat(x_BTD):
  return x_BTD.reshape((-1,) + x_BTD.shape[2:])


def _masked_mean(x, mask):
  if mask is None:
    return jnp.mean(x)
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def kd_kl_ce(
  hs_BTD, ws_DV, ht_BTD, wt_DV, tokens_BT, *, temperature: float = 1.0, chunk: int = DEFAULT_CHUNK
):
  """(KL, CE) of the KD step, equal to `losses.forward_kl(t_logits, s_logits, temperature=T)` and
  `losses.cross_entropy(s_logits[:, :-1], tokens[:, 1:])`: KL over every position, CE on the
  next token of every position but the last."""
  B, T = tokens_BT.shape
  targets_BT = jnp.concatenate([tokens_BT[:, 1:], jnp.zeros((B, 1), tokens_BT.dtype)], axis=1)
  kl, lp = kl_and_logprobs(
    _flat(hs_BTD),
    ws_DV,
    _flat(jax.lax.stop_gradient(ht_BTD)),
    jax.lax.stop_gradient(wt_DV),
    targets_BT.reshape(-1),
    temperature,
    chunk,
  )
  ce_mask = jnp.broadcast_to(jnp.arange(T) < T - 1, (B, T)).reshape(-1)
  return jnp.mean(kl), _masked_mean(-lp, ce_mask)


def forward_kl(
  hs_BTD, ws_DV, ht_BTD, wt_DV, *, temperature: float = 1.0, mask_BT=None, chunk: int = DEFAULT_CHUNK
):
  """`losses.forward_kl` on the logits hs @ ws and ht @ wt, without building them."""
  B, T = hs_BTD.shape[:2]
  kl, _ = kl_and_logprobs(
    _flat(hs_BTD),
    ws_DV,
    _flat(jax.lax.stop_gradient(ht_BTD)),
    jax.lax.stop_gradient(wt_DV),
    jnp.zeros((B * T,), jnp.int32),
    temperature,
    chunk,
  )
  return _masked_mean(kl, None if mask_BT is None else mask_BT.reshape(-1))


def cross_entropy(h_BTD, w_DV, targets_BT, mask_BT=None, *, chunk: int = DEFAULT_CHUNK):
  """`losses.cross_entropy` on the logits h @ w (targets already shifted)."""
  lp = token_logprobs(_flat(h_BTD), w_DV, targets_BT.reshape(-1), chunk)
  return _masked_mean(-lp, None if mask_BT is None else mask_BT.reshape(-1))


def sequence_logprob(h_BTD, w_DV, targets_BT, mask_BT, *, chunk: int = DEFAULT_CHUNK):
  """`losses.sequence_logprob` on the logits h @ w: per row, the masked sum of log p(target)."""
  B, T = targets_BT.shape
  lp = token_logprobs(_flat(h_BTD), w_DV, targets_BT.reshape(-1), chunk).reshape(B, T)
  return jnp.sum(lp * mask_BT, axis=-1)


__all__ = [
  "token_logprobs",
  "kl_and_logprobs",
  "kd_loss",
  "kd_kl_ce",
  "forward_kl",
  "cross_entropy",
  "sequence_logprob",
  "DEFAULT_CHUNK",
]
