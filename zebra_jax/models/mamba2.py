"""Mamba2 mixer of Zebra-Llama / MambaInLlama (reference section 3).

Per token (d = hidden, E = d_inner, X = d_xb, H = nheads = E/headdim, G = ngroups, N = d_state):

  [z | x | B | C | dt] = in_proj(u)                  sizes [E, X, X, E, H]
  xBC = silu(causal depthwise conv1d([x | B | C]))   on the un-repeated 2X + E channels
  x: X/headdim kv groups of headdim, repeated to H heads (head h takes group h // (H / (X/headdim)))
  B: X/N groups of N, repeated to G groups the same way;  C: G groups of N
  y = SSD(x, dt + dt_bias -> softplus, A = -exp(A_log), B, C, D)   head h reads B/C group h // (H/G)
  out = out_proj(GroupRMSNorm_{E/G}(y * silu(z)) * norm.weight)

Parameter layout and the mapping to the PyTorch reference (mamba_ssm / MambaInLlama names):
  in_proj.kernel   (d, 2E+2X+H)  = in_proj.weight.T; columns [z | x | B | C | dt]
  conv1d.kernel    (d_conv, 2X+E): torch conv1d.weight (2X+E, 1, d_conv) has weight[c, 0, k] =
                   kernel[k, c], i.e. kernel = weight[:, 0, :].T. Tap k multiplies the input
                   d_conv-1-k steps in the past (torch cross-correlation, left padding d_conv-1).
  conv1d.bias      (2X+E,)       = conv1d.bias
  A_log, D, dt_bias (H,)         same, always float32
  norm.weight      (E,)          = norm.weight (RMSNormGated)
  out_proj.kernel  (E, d)        = out_proj.weight.T
States (`MambaState`, the layer's cache):
  ssm  (batch, H, headdim, N) float32  = mamba_ssm ssm_state.
  conv (batch, d_conv-1, 2X+E), the last d_conv-1 pre-conv inputs, oldest first, in the compute
       dtype. mamba_ssm keeps (batch, 2X+E, d_conv) with the newest input last; ours is its
       [:, :, 1:] transposed to (batch, time, channel) (its first column is shifted out unused at
       the next step).

`Mamba2.cached` runs ragged batches (right padding, per-sequence counts n_valid of real tokens) by
masking the pad steps out of the scan: their x is set to 0 and their raw dt to -1e4, which makes
softplus(dt + dt_bias) exactly 0, hence exp(dt*A) = 1 and dt*x*B = 0: the SSM state passes through
them unchanged, bit for bit. The conv state is the window of the d_conv - 1 pre-conv inputs just
before each sequence's first pad step. `Mamba2.replay` reruns recorded per-step inputs the same way
(the rollback of speculative decoding).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zebra_jax.config import ConfigError, HybridConfig
from zebra_jax.models.layers import Linear, dtype_of, param
from zebra_jax.ops.conv import causal_conv1d
from zebra_jax.ops.ssd import ssd_scan, ssd_step

# Raw dt of masked steps: softplus(-1e4 + dt_bias) == 0.0 exactly in float32 (and -1e4 is
# representable in bfloat16 / float16).
_MASKED_DT = -1e4


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MambaState:
  ssm: jax.Array  # (B, nheads, headdim, d_state) float32
  conv: jax.Array  # (B, d_conv - 1, conv_dim): last pre-conv [x | B | C] inputs, oldest first
  AXES = {"ssm": ("batch", "mamba_heads", None, None), "conv": ("batch", None, "mamba_conv")}

  @classmethod
  def zeros(cls, config: HybridConfig, layer_idx: int, batch_size: int, max_len: int, dtype):
    """The state of an empty prefix (max_len unused: the state does not grow)."""
    c = config
    return cls(
      jnp.zeros((batch_size, c.mamba_nheads, c.headdim, c.d_state), jnp.float32),
      jnp.zeros((batch_size, c.d_conv - 1, c.mamba_conv_dim), dtype),
    )


def _conv_window(conv_BKC, xBC_BTC, n_B):
  """The d_conv-1 pre-conv inputs ending just before step n[b] of the chunk (per sequence)."""
  K1 = conv_BKC.shape[1]
  full = jnp.concatenate([conv_BKC, xBC_BTC.astype(conv_BKC.dtype)], axis=1)
  return jax.vmap(lambda f, n: jax.lax.dynamic_slice_in_dim(f, n, K1, 0))(full, n_B)


class CausalConv1d(nnx.Module):
  """Depthwise causal conv over time; kernel (d_conv, channels), see the module docstring."""

  def __init__(
    self, channels: int, d_conv: int, *, rngs: nnx.Rngs, use_bias: bool = True, param_dtype=jnp.float32
  ):
    self.channels, self.d_conv = channels, d_conv
    # torch Conv1d default: U(+-1/sqrt(fan_in)), fan_in = (in_channels / groups) * d_conv = d_conv.
    bound = 1.0 / d_conv**0.5
    self.kernel = param(
      jax.random.uniform(rngs.params(), (d_conv, channels), param_dtype, -bound, bound),
      ("conv_kernel", "mamba_conv"),
    )
    self.bias = (
      param(jax.random.uniform(rngs.params(), (channels,), param_dtype, -bound, bound), ("mamba_conv",))
      if use_bias
      else None
    )

  def __call__(self, x_BTC: jax.Array, state_BKC: jax.Array | None = None):
    """Returns (conv(x) before the activation, in x.dtype; the new state (B, d_conv-1, C))."""
    Bsz, T, C = x_BTC.shape
    K = self.d_conv
    if state_BKC is None:
      state_BKC = jnp.zeros((Bsz, K - 1, C), x_BTC.dtype)
    elif tuple(state_BKC.shape) != (Bsz, K - 1, C):
      raise ValueError(
        f"conv_state must have shape (batch, d_conv-1, conv_dim)={(Bsz, K - 1, C)}, "
        f"got {tuple(state_BKC.shape)}"
      )
    return causal_conv1d(x_BTC, self.kernel[...], None if self.bias is None else self.bias[...], state_BKC)

  def step(self, x_BC: jax.Array, state_BKC: jax.Array):
    y, new_state = self(x_BC[:, None], state_BKC)
    return y[:, 0], new_state


class GatedRMSNorm(nnx.Module):
  """mamba_ssm RMSNormGated(norm_before_gate=False): GroupRMSNorm(y * silu(z)) * weight.

  Computed in float32, returned in y's dtype."""

  def __init__(self, dim: int, *, group_size: int, eps: float, param_dtype=jnp.float32):
    if dim % group_size:
      raise ConfigError(f"gated norm: dim={dim} is not a multiple of group_size={group_size}")
    self.group_size, self.eps = group_size, eps
    self.weight = param(jnp.ones((dim,), param_dtype), ("mamba_inner",))

  def __call__(self, y: jax.Array, z: jax.Array) -> jax.Array:
    g = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    gg = g.reshape(*g.shape[:-1], -1, self.group_size)
    gg = gg * jax.lax.rsqrt(jnp.mean(gg * gg, axis=-1, keepdims=True) + self.eps)
    return (gg.reshape(g.shape) * self.weight[...].astype(jnp.float32)).astype(y.dtype)


class Mamba2(nnx.Module):
  """The Mamba2 mixer; called as mixer(x_BTD, positions_BT) -> y_BTD (positions are unused)."""

  def __init__(self, config: HybridConfig, layer_idx: int, *, rngs: nnx.Rngs):
    if not isinstance(config, HybridConfig):
      raise ConfigError(
        f"Mamba2 needs a HybridConfig (d_state, headdim, ngroups, ...), got {type(config).__name__}"
      )
    c = config
    self.config, self.layer_idx = c, layer_idx
    d, E, X, N = c.hidden_size, c.d_inner, c.d_xb, c.d_state
    H, P, G = c.mamba_nheads, c.headdim, c.ngroups
    # HybridConfig validates these when the config has Mamba2 layers; a config without any (e.g. a
    # pure-MLA one used to build a stray Mamba2) skipped that, so check what the forward relies on.
    for ok, msg in (
      (E % P == 0, f"d_inner={E} is not a multiple of headdim={P}"),
      (E == G * N, f"d_inner={E} must equal ngroups*d_state={G}*{N}"),
      (
        X % P == 0 and H % (X // P) == 0,
        f"d_xb={X} must split into headdim={P} groups that divide the {H} heads",
      ),
      (
        X % N == 0 and G % (X // N) == 0,
        f"d_xb={X} must split into d_state={N} groups that divide ngroups={G}",
      ),
      (H % G == 0, f"Mamba2 heads={H} (d_inner/headdim) are not a multiple of ngroups={G}"),
    ):
      if not ok:
        raise ConfigError(f"Mamba2 layer {layer_idx}: {msg}")
    self.x_groups, self.b_groups = X // P, X // N
    pd, dt = dtype_of(c.param_dtype), dtype_of(c.dtype)
    self.dtype = dt

    kw = dict(rngs=rngs, dtype=dt, param_dtype=pd)
    self.in_proj = Linear(d, c.mamba_in_proj_dim, axes=("embed", "mamba_in"), **kw)
    self.conv1d = CausalConv1d(c.mamba_conv_dim, c.d_conv, rngs=rngs, use_bias=c.conv_bias, param_dtype=pd)
    # mamba_ssm defaults; tiny and precision-critical, so float32 whatever param_dtype is.
    lo, hi = c.A_init_range
    A = jax.random.uniform(rngs.params(), (H,), jnp.float32, lo, hi)
    self.A_log = param(jnp.log(A), ("mamba_heads",))
    self.D = param(jnp.ones((H,), jnp.float32), ("mamba_heads",))
    u = jax.random.uniform(rngs.params(), (H,), jnp.float32)
    dt0 = jnp.exp(u * (np.log(c.dt_max) - np.log(c.dt_min)) + np.log(c.dt_min))
    dt0 = jnp.maximum(dt0, c.dt_init_floor)
    self.dt_bias = param(dt0 + jnp.log(-jnp.expm1(-dt0)), ("mamba_heads",))  # softplus^-1(dt0)
    self.norm = GatedRMSNorm(E, group_size=E // G, eps=c.gated_norm_eps, param_dtype=pd)
    self.out_proj = Linear(E, d, axes=("mamba_inner", "embed"), **kw)

  # -- pieces ---------------------------------------------------------------------------------
  def _split_proj(self, zxbcdt):
    c = self.config
    E, X = c.d_inner, c.d_xb
    z = zxbcdt[..., :E]
    xBC = zxbcdt[..., E : 2 * E + 2 * X]
    dt = zxbcdt[..., 2 * E + 2 * X :]
    return z, xBC, dt

  def _split_heads(self, xBC):
    """Post-conv [x | B | C] (..., 2X+E) -> x (..., H, P), B and C (..., G, N)."""
    c = self.config
    X, H, P, G, N = c.d_xb, c.mamba_nheads, c.headdim, c.ngroups, c.d_state
    lead = xBC.shape[:-1]
    x = xBC[..., :X].reshape(*lead, self.x_groups, P)
    B = xBC[..., X : 2 * X].reshape(*lead, self.b_groups, N)
    C = xBC[..., 2 * X :].reshape(*lead, G, N)
    # GQA: each kv group feeds H/x_groups consecutive heads (B likewise to the G groups).
    x = jnp.repeat(x, H // self.x_groups, axis=-2)
    B = jnp.repeat(B, G // self.b_groups, axis=-2)
    return x, B, C

  def _A(self):
    return -jnp.exp(self.A_log[...].astype(jnp.float32))

  # -- forward --------------------------------------------------------------------------------
  def __call__(
    self,
    x_BTD: jax.Array,
    positions_BT: jax.Array | None = None,
    *,
    initial_state: jax.Array | None = None,
    conv_state: jax.Array | None = None,
    return_state: bool = False,
  ):
    """y_BTD, or (y_BTD, (ssm_state, conv_state)) after the last token when `return_state`.

    `initial_state` (B, H, headdim, d_state) and `conv_state` (B, d_conv-1, conv_dim) continue a
    sequence: running [a; b] equals running a, then b from a's returned states.
    """
    c = self.config
    Bsz, T, _ = x_BTD.shape
    z_BTE, xBC_BTC, dt_BTH = self._split_proj(self.in_proj(x_BTD))
    xBC_BTC, conv_out = self.conv1d(xBC_BTC, conv_state)
    x_BTHP, B_BTGN, C_BTGN = self._split_heads(jax.nn.silu(xBC_BTC))
    out = ssd_scan(
      x_BTHP,
      dt_BTH,
      self._A(),
      B_BTGN,
      C_BTGN,
      D=self.D[...],
      dt_bias=self.dt_bias[...],
      dt_softplus=True,
      initial_state=initial_state,
      chunk_size=c.chunk_size,
      return_final_state=return_state,
      impl=c.impl,
    )
    y_BTHP, ssm_state = out if return_state else (out, None)
    y_BTE = self.norm(y_BTHP.reshape(Bsz, T, c.d_inner), z_BTE)
    y_BTD = self.out_proj(y_BTE)
    if return_state:
      return y_BTD, (ssm_state, conv_out)
    return y_BTD

  # -- the forward over the cache (prefill, decode, speculative verification and rollback) -------
  def cached(
    self,
    x_BTD: jax.Array,
    positions_BT: jax.Array | None,
    state: MambaState,
    *,
    n_valid_B: jax.Array,
    mode: str = "decode",
  ):
    """(y_BTD, the MambaState after each sequence's n_valid[b] steps, record = (pre-conv xBC
    (B, T, conv_dim), raw dt (B, T, H)), the inputs `replay` reruns). "decode" with T = 1 is one
    `ops.ssd.ssd_step`; anything else the masked `ops.ssd.ssd_scan` (positions are unused)."""
    c = self.config
    Bsz, T, _ = x_BTD.shape
    z_BTE, xBC_BTC, dt_BTH = self._split_proj(self.in_proj(x_BTD))
    if mode == "decode" and T == 1:
      xBC_BC, conv = self.conv1d.step(xBC_BTC[:, 0], state.conv)
      x_BHP, B_BGN, C_BGN = self._split_heads(jax.nn.silu(xBC_BC))
      y_BHP, ssm = ssd_step(
        state.ssm,
        x_BHP,
        dt_BTH[:, 0],
        self._A(),
        B_BGN,
        C_BGN,
        D=self.D[...],
        dt_bias=self.dt_bias[...],
        dt_softplus=True,
        impl=c.impl,
      )
      y_BTHP, new = y_BHP[:, None], MambaState(ssm, conv)
    else:
      y_BTHP, new = self._masked_scan(xBC_BTC, dt_BTH, state, n_valid_B)
    y_BTD = self.out_proj(self.norm(y_BTHP.reshape(Bsz, T, c.d_inner), z_BTE))
    return y_BTD, new, (xBC_BTC, dt_BTH)

  def replay(self, record, state: MambaState, n_valid_B: jax.Array) -> MambaState:
    """The state after the first n_valid[b] steps of a `cached` record, run from the checkpoint
    `state` (speculative decoding keeps no per-step states)."""
    return self._masked_scan(*record, state, n_valid_B)[1]

  def _masked_scan(self, xBC_BTC, dt_BTH, state: MambaState, n_valid_B):
    """Scan of pre-conv inputs from `state`; steps t >= n_valid[b] leave the state untouched."""
    c = self.config
    T = xBC_BTC.shape[1]
    xBC_conv, _ = self.conv1d(xBC_BTC, state.conv)
    x, Bm, Cm = self._split_heads(jax.nn.silu(xBC_conv))
    valid_BT = jnp.arange(T)[None, :] < n_valid_B[:, None]
    x = jnp.where(valid_BT[:, :, None, None], x, 0)
    dt = jnp.where(valid_BT[:, :, None], dt_BTH, jnp.asarray(_MASKED_DT, dt_BTH.dtype))
    y, ssm = ssd_scan(
      x,
      dt,
      self._A(),
      Bm,
      Cm,
      D=self.D[...],
      dt_bias=self.dt_bias[...],
      dt_softplus=True,
      initial_state=state.ssm,
      chunk_size=min(c.chunk_size, T),
      return_final_state=True,
      impl=c.impl,
    )
    return y, MambaState(ssm, _conv_window(state.conv, xBC_BTC, n_valid_B))
