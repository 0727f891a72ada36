"""Basic layers with logical sharding axes: dense (einsum), RMSNorm, embeddings, SwiGLU MLP.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds *logical* axis names
('embed', 'mlp', 'heads', ...). `zebra_jax.parallel` maps them to mesh axes with one rule table, so
layouts change in config only. Parameters are created unsharded (`eager_sharding=False`) and placed
by the caller (jit out_shardings or device_put), which keeps module construction mesh-agnostic.

Dense kernels are stored (in_features, out_features), the transpose of torch's nn.Linear.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def dtype_of(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def param(value: jax.Array, axes: Axes) -> nnx.Param:
  """An nnx.Param carrying logical axis names (resolved to a mesh later, not now)."""
  if len(axes) != value.ndim:
    raise ValueError(f"logical axes {axes} do not match parameter shape {value.shape}")
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class Linear(nnx.Module):
  """y = x @ W (+ b); W is (in_features, out_features) with logical axes `axes`."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: Axes,
    rngs: nnx.Rngs,
    use_bias: bool = False,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    init_std: float | None = None,
  ):
    self.in_features, self.out_features = in_features, out_features
    self.dtype = dtype
    # torch's nn.Linear default (kaiming-uniform, a=sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in)).
    bound = 1.0 / in_features**0.5
    if init_std is None:
      w = jax.random.uniform(rngs.params(), (in_features, out_features), param_dtype, -bound, bound)
    else:
      w = init_std * jax.random.normal(rngs.params(), (in_features, out_features), param_dtype)
    self.kernel = param(w, axes)
    self.bias = (
      param(jax.random.uniform(rngs.params(), (out_features,), param_dtype, -bound, bound), (axes[1],))
      if use_bias
      else None
    )

  def __call__(self, x_BTI: jax.Array) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x_BTI.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """HF LlamaRMSNorm: normalise in float32, cast back to the input dtype, then scale."""

  def __init__(self, dim: int, *, eps: float, axis_name: str = "norm", param_dtype=jnp.float32):
    self.eps = eps
    self.weight = param(jnp.ones((dim,), param_dtype), (axis_name,))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


class Embed(nnx.Module):
  """Token embedding table (vocab, embed); `attend` is the tied output head."""

  def __init__(
    self,
    vocab: int,
    dim: int,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    init_std: float = 0.02,
  ):
    self.dtype = dtype
    self.embedding = param(
      init_std * jax.random.normal(rngs.params(), (vocab, dim), param_dtype), ("vocab", "embed")
    )

  def __call__(self, tokens_BT: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], tokens_BT, axis=0).astype(self.dtype)

  def attend(self, x_BTD: jax.Array) -> jax.Array:
    return jnp.einsum("btd,vd->btv", x_BTD, self.embedding[...].astype(self.dtype))


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.gate_proj = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
    self.up_proj = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
    self.down_proj = Linear(hidden, dim, axes=("mlp", "embed"), **kw)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))
