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
States:
  ssm_state  (batch, H, headdim, N) float32  = mamba_ssm ssm_state.
  conv_state (batch, d_conv-1, 2X+E), the last d_conv-1 pre-conv inputs, oldest first, in the
             compute dtype. mamba_ssm keeps (batch, 2X+E, d_conv) with the newest input last; ours
             is its [:, :, 1:] transposed to (batch, time, channel) (its first column is shifted
             out unused at the next step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zebra_jax.config import ConfigError, HybridConfig
from zebra_jax.models.layers import Linear, dtype_of, param
from zebra_jax.ops.ssd import ssd_scan, ssd_step


class CausalConv1d(nnx.Module):
  """Depthwise causal conv over time; kernel (d_conv, channels), see the module docstring."""

  def __init__(self, channels: int, d_conv: int, *, rngs: nnx.Rngs, use_bias: bool = True,
               param_dtype=jnp.float32):
    self.channels, self.d_conv = channels, d_conv
    # torch Conv1d default: U(+-1/sqrt(fan_in)), fan_in = (in_channels / groups) * d_conv = d_conv.
    bound = 1.0 / d_conv**0.5
    self.kernel = param(jax.random.uniform(rngs.params(), (d_conv, channels), param_dtype,
                                           -bound, bound), ("conv_kernel", "mamba_conv"))
    self.bias = (param(jax.random.uniform(rngs.params(), (channels,), param_dtype, -bound, bound),
                       ("mamba_conv",)) if use_bias else None)

  def __call__(self, x_BTC: jax.Array, state_BKC: jax.Array | None = None):
    """Returns (conv(x) before the activation, in x.dtype; the new state (B, d_conv-1, C))."""
    Bsz, T, C = x_BTC.shape
    K = self.d_conv
    if state_BKC is None:
      state_BKC = jnp.zeros((Bsz, K - 1, C), x_BTC.dtype)
    elif tuple(state_BKC.shape) != (Bsz, K - 1, C):
      raise ValueError(f"conv_state must have shape (batch, d_conv-1, conv_dim)={(Bsz, K - 1, C)}, "
                       f"got {tuple(state_BKC.shape)}")
    xpad = jnp.concatenate([state_BKC.astype(x_BTC.dtype), x_BTC], axis=1)   # (B, K-1+T, C)
    # d_conv is tiny (4): K shifted multiply-adds, accumulated in float32 like causal_conv1d.
    w_KC = self.kernel[...].astype(jnp.float32)
    out = sum(xpad[:, k:k + T].astype(jnp.float32) * w_KC[k] for k in range(K))
    if self.bias is not None:
      out = out + self.bias[...].astype(jnp.float32)
    return out.astype(x_BTC.dtype), xpad[:, T:]

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
      raise ConfigError(f"Mamba2 needs a HybridConfig (d_state, headdim, ngroups, ...), got "
                        f"{type(config).__name__}")
    c = config
    self.config, self.layer_idx = c, layer_idx
    d, E, X, N = c.hidden_size, c.d_inner, c.d_xb, c.d_state
    H, P, G = c.mamba_nheads, c.headdim, c.ngroups
    # HybridConfig validates these when the config has Mamba2 layers; a config without any (e.g. a
    # pure-MLA one used to build a stray Mamba2) skipped that, so check what the forward relies on.
    for ok, msg in (
        (E % P == 0, f"d_inner={E} is not a multiple of headdim={P}"),
        (E == G * N, f"d_inner={E} must equal ngroups*d_state={G}*{N}"),
        (X % P == 0 and H % (X // P) == 0,
         f"d_xb={X} must split into headdim={P} groups that divide the {H} heads"),
        (X % N == 0 and G % (X // N) == 0,
         f"d_xb={X} must split into d_state={N} groups that divide ngroups={G}"),
        (H % G == 0, f"Mamba2 heads={H} (d_inner/headdim) are not a multiple of ngroups={G}")):
      if not ok:
        raise ConfigError(f"Mamba2 layer {layer_idx}: {msg}")
    self.x_groups, self.b_groups = X // P, X // N
    pd, dt = dtype_of(c.param_dtype), dtype_of(c.dtype)
    self.dtype = dt

    kw = dict(rngs=rngs, dtype=dt, param_dtype=pd)
    self.in_proj = Linear(d, c.mamba_in_proj_dim, axes=("embed", "mamba_in"), **kw)
    self.conv1d = CausalConv1d(c.mamba_conv_dim, c.d_conv, rngs=rngs, use_bias=c.conv_bias,
                               param_dtype=pd)
    # mamba_ssm defaults; tiny and precision-critical, so float32 whatever param_dtype is.
    lo, hi = c.A_init_range
    A = jax.random.uniform(rngs.params(), (H,), jnp.float32, lo, hi)
    self.A_log = param(jnp.log(A), ("mamba_heads",))
    self.D = param(jnp.ones((H,), jnp.float32), ("mamba_heads",))
    u = jax.random.uniform(rngs.params(), (H,), jnp.float32)
    dt0 = jnp.exp(u * (np.log(c.dt_max) - np.log(c.dt_min)) + np.log(c.dt_min))
    dt0 = jnp.maximum(dt0, c.dt_init_floor)
    self.dt_bias = param(dt0 + jnp.log(-jnp.expm1(-dt0)), ("mamba_heads",))   # softplus^-1(dt0)
    self.norm = GatedRMSNorm(E, group_size=E // G, eps=c.gated_norm_eps, param_dtype=pd)
    self.out_proj = Linear(E, d, axes=("mamba_inner", "embed"), **kw)

  # -- pieces ---------------------------------------------------------------------------------
  def _split_proj(self, zxbcdt):
    c = self.config
    E, X = c.d_inner, c.d_xb
    z = zxbcdt[..., :E]
    xBC = zxbcdt[..., E:2 * E + 2 * X]
    dt = zxbcdt[..., 2 * E + 2 * X:]
    return z, xBC, dt

  def _split_heads(self, xBC):
    """Post-conv [x | B | C] (..., 2X+E) -> x (..., H, P), B and C (..., G, N)."""
    c = self.config
    X, H, P, G, N = c.d_xb, c.mamba_nheads, c.headdim, c.ngroups, c.d_state
    lead = xBC.shape[:-1]
    x = xBC[..., :X].reshape(*lead, self.x_groups, P)
    B = xBC[..., X:2 * X].reshape(*lead, self.b_groups, N)
    C = xBC[..., 2 * X:].reshape(*lead, G, N)
    # GQA: each kv group feeds H/x_groups consecutive heads (B likewise to the G groups).
    x = jnp.repeat(x, H // self.x_groups, axis=-2)
    B = jnp.repeat(B, G // self.b_groups, axis=-2)
    return x, B, C

  def _A(self):
    return -jnp.exp(self.A_log[...].astype(jnp.float32))

  def zero_state(self, batch_size: int):
    """(ssm_state, conv_state) of an empty prefix."""
    c = self.config
    return (jnp.zeros((batch_size, c.mamba_nheads, c.headdim, c.d_state), jnp.float32),
            jnp.zeros((batch_size, c.d_conv - 1, c.mamba_conv_dim), self.dtype))

  # -- forward --------------------------------------------------------------------------------
  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array | None = None, *,
               initial_state: jax.Array | None = None, conv_state: jax.Array | None = None,
               return_state: bool = False):
    """y_BTD, or (y_BTD, (ssm_state, conv_state)) after the last token when `return_state`.

    `initial_state` (B, H, headdim, d_state) and `conv_state` (B, d_conv-1, conv_dim) continue a
    sequence: running [a; b] equals running a, then b from a's returned states.
    """
    c = self.config
    Bsz, T, _ = x_BTD.shape
    z_BTE, xBC_BTC, dt_BTH = self._split_proj(self.in_proj(x_BTD))
    xBC_BTC, conv_out = self.conv1d(xBC_BTC, conv_state)
    x_BTHP, B_BTGN, C_BTGN = self._split_heads(jax.nn.silu(xBC_BTC))
    out = ssd_scan(x_BTHP, dt_BTH, self._A(), B_BTGN, C_BTGN, D=self.D[...],
                   dt_bias=self.dt_bias[...], dt_softplus=True, initial_state=initial_state,
                   chunk_size=c.chunk_size, return_final_state=return_state, impl=c.impl)
    y_BTHP, ssm_state = out if return_state else (out, None)
    y_BTE = self.norm(y_BTHP.reshape(Bsz, T, c.d_inner), z_BTE)
    y_BTD = self.out_proj(y_BTE)
    if return_state:
      return y_BTD, (ssm_state, conv_out)
    return y_BTD

  def step(self, x_BD: jax.Array, ssm_state: jax.Array, conv_state: jax.Array):
    """One decode token: (y_BD, new_ssm_state, new_conv_state); states as in `__call__`."""
    c = self.config
    z_BE, xBC_BC, dt_BH = self._split_proj(self.in_proj(x_BD))
    xBC_BC, conv_state = self.conv1d.step(xBC_BC, conv_state)
    x_BHP, B_BGN, C_BGN = self._split_heads(jax.nn.silu(xBC_BC))
    y_BHP, ssm_state = ssd_step(ssm_state, x_BHP, dt_BH, self._A(), B_BGN, C_BGN, D=self.D[...],
                                dt_bias=self.dt_bias[...], dt_softplus=True, impl=c.impl)
    y_BE = self.norm(y_BHP.reshape(x_BD.shape[0], c.d_inner), z_BE)
    return self.out_proj(y_BE), ssm_state, conv_state
