"""Mesh (data, fsdp, tensor) and the logical-axis rule table.

Parameters carry logical axis names (see models/layers.py). `DEFAULT_RULES` maps each name to the mesh
axes it may be split over, tried in order; a candidate may also be a tuple of mesh axes (the dimension
split over their product). A mesh axis already used by another dimension of the same tensor, absent
from the mesh, or not dividing the dimension is skipped (that dimension stays replicated). Layout
experiments change the rules, never the model code.

Pallas kernels (Mosaic) cannot be partitioned by GSPMD; `kernel_mesh` / `batch_axes` / `head_axis` /
`shard_map` are what the ops layer (zebra_jax/ops) uses to run them per shard inside the trainer's
partitioned step.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> candidate mesh axes, in order of preference.
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
  "vocab": ("tensor",),
  "embed": ("fsdp",),
  "mlp": ("tensor",),
  "q_heads": ("tensor",),
  "kv_heads": ("tensor",),
  # The low-rank MLA dims: fsdp first, so q_b_proj / kv_b_proj (lora, heads) are split over fsdp
  # on their input dim like every other projection (heads over tensor); q_a / kv_a (embed, lora)
  # have fsdp on embed already and keep their layout (q_lora -> tensor there).
  "q_lora": ("fsdp", "tensor"),
  "kv_lora": ("fsdp",),
  "mamba_in": ("tensor",),
  "mamba_inner": ("tensor",),
  "mamba_conv": ("tensor",),
  "mamba_heads": (),
  "conv_kernel": (),
  "norm": (),
  # activations
  "batch": (("data", "fsdp"), "data", "fsdp"),  # as batch_sharding / constrain_batch
  "length": (),
}


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'data,fsdp,tensor' (a --mesh flag) -> three sizes for make_mesh (positive, or one -1)."""
  try:
    sizes = tuple(int(x) for x in text.split(","))
  except ValueError:
    sizes = ()
  if len(sizes) != 3 or any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise ValueError(
      f"--mesh {text!r}: expected data,fsdp,tensor sizes such as 1,1,2 (positive; "
      "one of them may be -1 for the remaining devices)"
    )
  return sizes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into mesh sizes {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
      f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
      f"{int(np.prod(sizes))} devices, have {len(devices)}"
    )
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_pspec(
  axes: Sequence[str | None],
  shape: Sequence[int],
  mesh: Mesh,
  rules: Mapping[str, Sequence[str | tuple[str, ...]]] = DEFAULT_RULES,
) -> P:
  """PartitionSpec of one array from its logical axes (see the module docstring)."""
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    chosen = None
    for cand in rules.get(name, ()) if name else ():
      group = (cand,) if isinstance(cand, str) else tuple(cand)
      group = tuple(a for a in group if mesh.shape.get(a, 1) > 1)  # size-1 axes split nothing
      size = int(np.prod([mesh.shape[a] for a in group])) if group else 1
      if not group or used.intersection(group) or dim % size:
        continue
      chosen = group[0] if len(group) == 1 else group
      used.update(group)
      break
    spec.append(chosen)
  return P(*spec)


def param_shardings(model_or_state, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every variable of a model (or nnx.State), from its logical axes.

  Returns a State of the same structure whose variables hold NamedShardings, so it lines up leaf for
  leaf with the state (usable as jit in/out_shardings and with jax.device_put).
  """
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)

  def one(var):
    axes = var.get_metadata().get("out_sharding")
    spec = logical_to_pspec(axes, var.shape, mesh, rules) if axes else P()
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
  """Places every variable of `model` on `mesh` according to the rules (in place), returns it."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules)))
  return model


# -- activations -----------------------------------------------------------------------------------
_ACTIVATION_MESH: contextvars.ContextVar = contextvars.ContextVar("zebra_activation_mesh", default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None):
  """While tracing under this context, `constrain_batch` pins activations to `mesh`."""
  token = _ACTIVATION_MESH.set(mesh)
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def constrain_batch(x):
  """Splits an activation's leading (batch) axis over data x fsdp, the batch's layout, when traced
  under `activation_mesh` (the trainer's step is); a no-op otherwise. Without it XLA's sharding
  propagation may follow the fsdp-sharded weights instead and keep every chip's activations for
  the whole batch."""
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    return x
  axes = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1)
  size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if not axes or x.shape[0] % size:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axes)))


# -- Pallas kernels inside the partitioned step ----------------------------------------------------
def kernel_mesh() -> Mesh | None:
  """The activation mesh while tracing under `activation_mesh` with more than one device, else None.

  Mosaic (Pallas TPU) kernels cannot be partitioned by GSPMD ("Mosaic kernels cannot be
  automatically partitioned"), so under such a mesh the ops call them through `shard_map`."""
  mesh = _ACTIVATION_MESH.get()
  return mesh if mesh is not None and mesh.devices.size > 1 else None


def batch_axes(mesh: Mesh, batch: int) -> str | tuple[str, ...] | None:
  """Mesh axes a leading batch dimension of size `batch` is split over inside a kernel's
  shard_map: data x fsdp (the batch layout of the step), else whichever one of them divides it,
  else None (replicated: every device then runs the whole batch, correct but redundant)."""
  spec = logical_to_pspec(("batch",), (batch,), mesh)
  return spec[0]


def head_axis(mesh: Mesh, *head_counts: int) -> str | None:
  """Returns "tensor" when the mesh has a tensor axis > 1 dividing every given head count (query and kv
  heads, so each shard keeps whole GQA groups), else None (heads replicated)."""
  t = mesh.shape.get("tensor", 1)
  return "tensor" if t > 1 and all(n % t == 0 for n in head_counts) else None


def shard_map(f, *, mesh: Mesh, in_specs, out_specs):
  """`jax.shard_map` (jax >= 0.8; `check_vma`) or, on older jax,
  `jax.experimental.shard_map.shard_map` (`check_rep`). Replication checking is off: the kernels
  are opaque custom calls (and custom VJPs) to it; with it off, shard_map's transpose sums the
  cotangents of inputs that are replicated over some mesh axes, so gradients stay exact."""
  new = getattr(jax, "shard_map", None)
  if new is not None:
    return new(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map as legacy  # jax < 0.8

  return legacy(f, mesh, in_specs, out_specs, check_rep=False)
