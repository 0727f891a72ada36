"""Device mesh and logical-axis sharding (one rule table maps parameter axis names to mesh axes)."""

from zebra_jax.parallel.sharding import (
  DEFAULT_RULES,
  MESH_AXES,
  logical_to_pspec,
  make_mesh,
  param_shardings,
  shard_model,
)

__all__ = ["DEFAULT_RULES", "MESH_AXES", "logical_to_pspec", "make_mesh", "param_shardings", "shard_model"]
