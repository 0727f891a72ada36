"""Ahead-of-time compilation of every training stage for a TPU topology, on a machine without a TPU.

    python scripts/distill.py --config configs/zebra_3b.py --aot-topology v5p:2x4x4

libtpu describes the topology (`jax.experimental.topologies.get_topology_desc`) as compile-only
devices; the mesh of `cfg.mesh` is laid over them. For each training stage the student, teachers and
optimiser state are built abstractly (`nnx.eval_shape` / `jax.eval_shape`: no weights are read or
allocated, so an 8B teacher costs nothing), sharded by the same logical rules, and the *same* jitted
step the trainer runs (`train.trainer.build_train_step` with the stage's loss function, batch,
sequence length, gradient accumulation and remat) is traced, lowered and compiled by the TPU
compiler. The report gives, per chip: argument / output / temporary memory from
`compiled.memory_analysis()` against the chip's HBM; FLOPs three ways (the model FLOPs of
`accounting.flops_per_token`, the matmul FLOPs the traced step executes incl. backward and remat,
and XLA's `cost_analysis()`); and a roofline step time max(FLOPs / peak, HBM bytes / bandwidth).
docs/aot.md explains the numbers and records the Zebra runs.

Where the training code and the design disagree on a dtype, the larger choice is compiled so that
"fits" here means it fits there (see `_student_param_dtype` and `_teacher_dtypes`). Kernels are
chosen for the TPU while tracing (`ops.dispatch_backend("tpu")`), so `impl="auto"` picks the Pallas
TPU kernels a pod run would (flash attention, the SSD scan where its `tpu_supports` accepts the
shapes); the ops run them per shard through `shard_map` inside the partitioned step, as on the pod.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from dataclasses import replace
from typing import Any, Callable

from zebra_jax import accounting, presets
from zebra_jax.config import HybridConfig, LlamaConfig
from zebra_jax.distill.config import remat_setting

_INSTALL = "pip install -e .[tpu-aot]"
GiB = 1024**3


# ------------------------------------------------------------------------------------------------
# Chips
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """Per-chip numbers (public spec sheets): HBM capacity, dense bf16 peak and HBM bandwidth."""

  name: str
  hbm_bytes: float
  peak_bf16_flops: float
  hbm_bytes_per_s: float


CHIPS: dict[str, ChipSpec] = {
  "v4": ChipSpec("TPU v4", 32 * GiB, 275e12, 1228e9),
  "v5e": ChipSpec("TPU v5e", 16 * GiB, 197e12, 819e9),
  "v5p": ChipSpec("TPU v5p", 95 * GiB, 459e12, 2765e9),
  "v6e": ChipSpec("TPU v6e", 32 * GiB, 918e12, 1640e9),
}
_CHIP_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v6": "v6e"}
# libtpu's own pattern for topology names, e.g. v5p:4x4x4, v5e:16x16, v6e_8x8_twisted.
_TOPOLOGY_RE = re.compile(r"^([a-zA-Z0-9_ ]+)[=_:]([0-9x]+)(_twisted|_untwisted)?$")
# Fraction of HBM a program may use: the runtime keeps a little for itself.
USABLE_HBM_FRACTION = 0.95


class AOTError(RuntimeError):
  """The AOT compilation cannot be set up (libtpu missing, bad topology name, ...)."""


def parse_topology(name: str) -> tuple[ChipSpec, tuple[int, ...]]:
  """('v5p:4x4x4') -> (ChipSpec of v5p, (4, 4, 4)): the chip generation and chip grid."""
  m = _TOPOLOGY_RE.match(name.strip())
  if not m:
    raise AOTError(f"topology {name!r} is not of the form <chip>:<AxBxC>, e.g. v5p:4x4x4, v5e:16x16, v6e:8x8")
  gen = m.group(1).strip().lower().replace(" ", "")
  gen = _CHIP_ALIASES.get(gen, gen)
  if gen not in CHIPS:
    raise AOTError(
      f"topology {name!r}: chip {m.group(1)!r} has no HBM / peak table here; known: "
      f"{', '.join(sorted(CHIPS))}"
    )
  return CHIPS[gen], tuple(int(d) for d in m.group(2).split("x"))


@contextlib.contextmanager
def _quiet_libtpu_env():
  """libtpu probes the GCE metadata server and TPU_* variables for a real slice; on a CPU machine
  that only prints warnings. Fills in neutral values unless the user set them, and takes them out
  again afterwards: left in os.environ they would make child processes (a later distill.py run)
  believe they are on a TPU slice."""
  # ALLOW_MULTIPLE_LIBTPU_LOAD: compile-only use needs no exclusive TPU lock, so several AOT runs
  # (or test workers) may load libtpu at once.
  added = []
  for k, v in (
    ("TPU_SKIP_MDS_QUERY", "1"),
    ("TPU_WORKER_HOSTNAMES", "localhost"),
    ("TPU_WORKER_ID", "0"),
    ("TPU_ACCELERATOR_TYPE", "v5p-8"),
    ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
  ):
    if k not in os.environ:
      os.environ[k] = v
      added.append(k)
  try:
    yield
  finally:
    for k in added:
      os.environ.pop(k, None)


def topology_devices(topology_name: str) -> list:
  """Compile-only TPU devices of `topology_name` (libtpu needed, no TPU)."""
  try:
    import libtpu  # noqa: F401
  except ImportError:
    raise AOTError(
      f"--aot_topology needs libtpu to compile for TPUs on this machine: {_INSTALL} "
      "(jax 0.10.2 pairs with libtpu 0.0.42.*)"
    ) from None
  import jax
  from jax.experimental import topologies

  if not any(os.environ.get(k) for k in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")):
    # Without this jax would also try to open a real TPU through libtpu and fail noisily; the
    # topology's compile-only devices need no TPU backend.
    try:
      jax.config.update("jax_platforms", "cpu")
    except Exception:  # backends already initialised: keep them
      pass
  try:
    with _quiet_libtpu_env():
      desc = topologies.get_topology_desc(platform="tpu", topology_name=topology_name)
  except Exception as e:
    raise AOTError(f"libtpu rejected topology {topology_name!r}: {e}") from None
  return list(desc.devices)


def _make_mesh(cfg, devices):
  import numpy as np
  from jax.experimental import mesh_utils
  from jax.sharding import Mesh

  # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
  from zebra_jax.parallel.sharding import MESH_AXES, make_mesh

  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)  # resolves -1
  shape = tuple(mesh.shape[a] for a in MESH_AXES)
  try:  # physical (ICI-aware) device order, as on a real slice
    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


# ------------------------------------------------------------------------------------------------
# Stage plans: what each stage's trainer would be built from, as configs and shapes only
# ------------------------------------------------------------------------------------------------
def _teacher_config(tcfg, which: str):
  """The teacher's LlamaConfig without its weights: read from teacher.path when this machine has
  it (config.json / GGUF metadata / saved model), else from the `preset` field."""
  import dataclasses as dc

  path = tcfg.path
  overrides = dict(tcfg.get("overrides", None) or {})
  preset = tcfg.get("preset", None)

  def from_preset(name, why):
    try:
      base = presets.get_preset(name)
    except KeyError as e:
      raise AOTError(f"{which}.preset: {e}") from None
    fields = {f.name: getattr(base, f.name) for f in dc.fields(LlamaConfig)}
    fields.update(overrides)
    return LlamaConfig(**fields), why

  if isinstance(path, str) and path.startswith("random:"):
    return from_preset(path.split(":", 1)[1], f"random teacher of preset {path.split(':', 1)[1]}")
  if path == "smollm2":
    return from_preset(preset or "smollm2-135m-instruct", "preset (SmolLM2-135M-Instruct shape)")
  if isinstance(path, str) and os.path.exists(path):
    # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
    from zebra_jax.convert import is_saved_model, resolve_gguf

    # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
    from zebra_jax.convert.orbax_io import load_config

    if os.path.isdir(path) and is_saved_model(path):
      return load_config(path), f"config of {path}"
    gguf_file = resolve_gguf(path)
    if gguf_file is not None:
      # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
      from zebra_jax.convert.gguf import gguf_reader, gguf_config

      return gguf_config(gguf_reader(gguf_file), gguf_file)[0], f"GGUF metadata of {gguf_file}"
    if os.path.isdir(path):
      # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
      from zebra_jax.convert.hf import load_hf_config

      return load_hf_config(path), f"{path}/config.json"
  if preset:
    return from_preset(preset, f"preset {preset!r} ({which}.path not readable here)")
  raise AOTError(
    f"{which}.path={path!r} cannot be read on this machine and {which}.preset is not set; "
    f"set --config.{which}.preset to a zebra_jax.presets name (e.g. "
    "llama-3.1-8b-instruct) to compile with that shape"
  )


def _with_dtypes(config, dtype: str, param_dtype: str, impl: str):
  return dataclasses.replace(config, dtype=dtype, param_dtype=param_dtype, impl=impl)


def _teacher_dtypes(cfg, which: str) -> tuple[str, str]:
  """(compute, storage) dtypes the run gives a teacher. The ILD teacher is reloaded from the
  `teacher` stage artifact with load_model(dtype=teacher.dtype), storing that dtype; a separate KD
  teacher goes through RunContext.load_teacher_source, which stores train.param_dtype."""
  t = cfg[which]
  if which == "teacher":
    return t.dtype, t.dtype
  return t.dtype, cfg.train.param_dtype


def _student_param_dtype(cfg) -> str:
  """Master weights in train.param_dtype for every trained model (the design: bf16 compute, fp32
  master weights). RunContext.load_artifact reloads KD/DPO students with param_dtype = train.dtype;
  compiling the float32 case keeps the report an upper bound either way."""
  return cfg.train.param_dtype


def _student_fields(cfg) -> dict:
  # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
  from zebra_jax.distill.context import STUDENT_FIELDS

  m = cfg.model
  fields = {k: m[k] for k in STUDENT_FIELDS if m.get(k) is not None}
  if fields.get("mla_rope_scaling") is not None:
    fields["mla_rope_scaling"] = dict(fields["mla_rope_scaling"])
  return fields


def stage_plans(cfg) -> list:
  """One plan per compiled step of the run: ild_mla, ild_mamba, kd, dpo and each stepwise phase
  (teacher, select and assemble train nothing)."""
  # lazy: pulls in orbax, jax, flax; jax must start after aot sets libtpu's environment
  from zebra_jax.distill import plan

  # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
  from zebra_jax.distill import select as select_lib

  t = cfg.train
  teacher, teacher_src = _teacher_config(cfg.teacher, "teacher")
  ild_teacher = _with_dtypes(teacher, *_teacher_dtypes(cfg, "teacher"), t.impl)
  student_base = _with_dtypes(teacher, t.dtype, _student_param_dtype(cfg), t.impl)
  fields = _student_fields(cfg)
  L = teacher.num_hidden_layers
  notes = (f"teacher shape: {teacher_src}",)
  if cfg.model.get("kv_energy_ratio") or cfg.model.get("q_energy_ratio"):
    notes += (
      "energy-ratio (dynamic) MLA ranks depend on the teacher's weights; compiled with the "
      "configured kv_lora_rank / q_lora_rank",
    )

  def student(mla_layers, attn_layers):
    return HybridConfig.from_llama(
      student_base, **fields, mla_layers=tuple(mla_layers), attn_layers=tuple(attn_layers)
    )

  def kd_teacher():
    # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
    from zebra_jax.distill.context import same_teacher

    if same_teacher(cfg):  # RunContext.kd_teacher() returns the ILD teacher
      return ild_teacher, ()
    config, src = _teacher_config(cfg.kd_teacher, "kd_teacher")
    return _with_dtypes(config, *_teacher_dtypes(cfg, "kd_teacher"), t.impl), (f"KD teacher: {src}",)

  def assembled():
    """The hybrid of the assemble stage: model.mla_layers, or select's count placed uniformly."""
    layers, extra = cfg.model.mla_layers, ()
    if layers is None:
      layers = select_lib.uniform_placement(L, cfg.model.n_mla)
      extra = (
        f"select places model.n_mla={cfg.model.n_mla} MLA layers at run time; compiled "
        f"with the uniform placement {list(layers)}",
      )
    return student(layers, cfg.model.attn_layers), extra

  out = []
  final_student = None
  for name in cfg.stages:
    if name in ("ild_mla", "ild_mamba"):
      s = student(tuple(range(L)) if name == "ild_mla" else (), ())
      out.append(replace(plan.ild(cfg, name[len("ild_") :], s, ild_teacher), notes=notes))
    elif name == "stepwise":
      for phase, attn_layers in enumerate(cfg.stepwise.schedule):
        s = student((), attn_layers)
        out.append(replace(plan.stepwise(cfg, phase, s, ild_teacher), notes=notes))
        final_student = s
    elif name == "kd":
      if "stepwise" in cfg.stages:
        s = final_student if final_student is not None else student((), cfg.stepwise.schedule[-1])
        extra = ()
      else:
        s, extra = assembled()
      tcfg, tnote = kd_teacher()
      out.append(replace(plan.kd(cfg, s, tcfg), notes=notes + extra + tnote))
      final_student = s
    elif name == "dpo":
      policy, extra = (final_student, ()) if final_student is not None else assembled()
      # The reference is a frozen copy reloaded with load_model(dtype=train.dtype).
      reference = _with_dtypes(policy, t.dtype, t.dtype, t.impl)
      out.append(replace(plan.dpo(cfg, policy, reference), notes=notes + extra))
  return out


# ------------------------------------------------------------------------------------------------
# Compilation
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StageReport:
  name: str
  fits: bool
  hbm_bytes: float  # per device
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  total_bytes: int = 0  # arguments + outputs - aliased (donated) + temporaries + code
  xla_flops: float | None = None  # per device, from cost_analysis
  xla_bytes: float | None = None  # per device HBM traffic, from cost_analysis
  model_flops: float | None = None  # per device per step, accounting.flops_per_token
  exec_flops: float = 0.0  # per device per step, matmuls of the traced step (+ remat)
  pallas_calls: dict = dataclasses.field(default_factory=dict)  # TPU kernels in the step
  roofline_s: float | None = None
  bound: str = ""
  model_step_s: float | None = None  # model FLOPs at peak
  params_trainable: int = 0
  params_frozen: int = 0
  tokens_per_step: int = 0
  compile_s: float = 0.0
  error: str | None = None
  notes: tuple[str, ...] = ()


@dataclasses.dataclass
class AOTReport:
  topology: str
  chip: ChipSpec
  num_devices: int
  devices_per_chip: int
  mesh_shape: dict
  stages: list[StageReport]

  @property
  def fits(self) -> bool:
    return all(s.fits for s in self.stages)

  @property
  def failed(self) -> list[str]:
    return [s.name for s in self.stages if not s.fits]


def _abstract_model(config, remat: str | bool):
  from flax import nnx

  # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
  from zebra_jax.models.hybrid import CausalLM

  model = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
  model.remat = remat
  return model


def _sds(state, shardings):
  import jax

  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def _cost(compiled) -> tuple[float | None, float | None]:
  try:
    cost = compiled.cost_analysis()
  except Exception:
    return None, None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:
    return None, None
  return cost.get("flops"), cost.get("bytes accessed")


def _optimizer_cost(optimizer, tr_state, opt_state, tr_shard, opt_shard):
  """Cost of the step's tail alone (grad norm, clipping, AdamW, apply) with the step's shardings."""
  import jax
  import jax.numpy as jnp
  import optax

  def tail(trainable, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, optax.global_norm(grads)

  grads = jax.tree.map(
    lambda x, sh: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=sh), tr_state, tr_shard
  )
  fn = jax.jit(tail, out_shardings=(tr_shard, opt_shard, None), donate_argnums=(0, 1))
  return _cost(fn.lower(_sds(tr_state, tr_shard), _sds(opt_state, opt_shard), grads).compile())


def _sub_jaxprs(value):
  """The jaxprs held by an equation parameter (Jaxpr, ClosedJaxpr or tuples of them)."""
  if isinstance(value, (list, tuple)):
    for v in value:
      yield from _sub_jaxprs(v)
  elif hasattr(value, "eqns"):  # Jaxpr
    yield value
  elif hasattr(getattr(value, "jaxpr", None), "eqns"):  # ClosedJaxpr
    yield value.jaxpr


def jaxpr_matmul_flops(jaxpr) -> float:
  """FLOPs of every dot_general / convolution a jaxpr executes (2 per multiply-add), summed over the
  devices, recursing into jit / remat / custom-derivative calls, scan bodies times their length, the
  largest cond branch and while bodies once. Run on the traced train step it counts the backward
  pass and remat's recomputation exactly, independently of the compiler's cost model; elementwise
  work is left out as in `accounting.flops_per_token`.

  A `shard_map` body holds per-shard shapes and runs on each device of its manual axes: counted
  times their size. A Pallas kernel counts its `cost_estimate` when it gives FLOPs, else its body
  times the grid size: an upper bound for kernels that skip grid steps (the causal flash kernels
  skip the key blocks above the diagonal, about half of their matmul work)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      rhs_free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
      total += 2.0 * math.prod(lhs) * math.prod(rhs_free)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * math.prod(out) * math.prod(rhs) / out_features
    elif name == "cond":
      total += max((jaxpr_matmul_flops(b) for b in eqn.params["branches"]), default=0.0)
    elif name == "pallas_call":
      estimate = getattr(eqn.params.get("cost_estimate"), "flops", None)
      grid = tuple(getattr(eqn.params.get("grid_mapping"), "grid", ()) or ())
      total += (
        float(estimate)
        if estimate
        else jaxpr_matmul_flops(eqn.params["jaxpr"]) * math.prod(int(g) for g in grid)
      )
    else:
      sub = sum(jaxpr_matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
      if name == "scan":
        sub *= eqn.params.get("length", 1)
      elif name == "shard_map":
        mesh = eqn.params["mesh"]
        manual = eqn.params.get("newly_manual_axes") or mesh.axis_names
        sub *= math.prod(mesh.shape[a] for a in manual)
      total += sub
  return total


def _pallas_calls(jaxpr) -> dict[str, int]:
  """{kernel name: number of pallas_call equations} in a jaxpr, recursively (scan bodies once)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  out: dict[str, int] = {}
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      info = eqn.params.get("name_and_src_info") or eqn.params.get("name") or "pallas_call"
      name = str(getattr(info, "name", info)).split(" ")[0]
      out[name] = out.get(name, 0) + 1
      continue
    for v in eqn.params.values():
      for j in _sub_jaxprs(v):
        for k, n in _pallas_calls(j).items():
          out[k] = out.get(k, 0) + n
  return out


def _count(state) -> int:
  import jax

  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))


def compile_stage(
  plan, mesh, chip: ChipSpec, devices_per_chip: int, *, remat: str | bool, rules=None
) -> StageReport:
  """Lowers and compiles `plan`'s train step for `mesh`; returns per-device memory and cost."""
  import time

  import jax
  from flax import nnx

  # lazy: pulls in jax, numpy; jax must start after aot sets libtpu's environment
  from zebra_jax.ops import dispatch_backend

  # lazy: pulls in jax, flax, optax; jax must start after aot sets libtpu's environment
  from zebra_jax.parallel.sharding import DEFAULT_RULES, param_shardings

  # lazy: pulls in orbax, jax, flax; jax must start after aot sets libtpu's environment
  from zebra_jax.train.trainer import (
    batch_sharding,
    build_train_step,
    optimizer_state_shardings,
    split_trainable,
    stage_optimizer,
  )

  rules = DEFAULT_RULES if rules is None else rules
  spec = plan.spec
  hbm = chip.hbm_bytes / devices_per_chip
  spec.validate(mesh, f"stage {plan.name!r}")

  student = _abstract_model(plan.student, remat)  # the stages set remat on the student only
  graphdef, tr_state, fr_state = split_trainable(student, plan.trainable)
  if not jax.tree.leaves(tr_state):
    raise AOTError(f"stage {plan.name!r}: the trainable filter selects no parameters")
  teacher_defs = {k: nnx.split(_abstract_model(c, False)) for k, c in plan.teachers.items()}
  tr_shard = param_shardings(tr_state, mesh, rules)
  fr_shard = param_shardings(fr_state, mesh, rules)
  te_shard = {k: param_shardings(st, mesh, rules) for k, (_, st) in teacher_defs.items()}
  optimizer = stage_optimizer(spec, tr_state, plan.lr_scale)
  opt_shard = optimizer_state_shardings(optimizer, tr_state, tr_shard, mesh)
  opt_state = jax.eval_shape(optimizer.init, tr_state)
  b_shard = batch_sharding(mesh)

  def make_step():
    return build_train_step(
      graphdef,
      {k: gd for k, (gd, _) in teacher_defs.items()},
      optimizer,
      plan.loss_fn,
      spec.grad_accum,
      trainable_shardings=tr_shard,
      opt_shardings=opt_shard,
      frozen_shardings=fr_shard,
      teacher_shardings=te_shard,
      batch_shardings=b_shard,
    )

  batch = {
    k: jax.ShapeDtypeStruct(shape, dtype, sharding=b_shard) for k, (shape, dtype) in plan.batch.items()
  }

  # Model FLOPs (the trainer's MFU convention): student fwd+bwd plus each teacher's forward.
  rows = spec.batch_size * plan.rows_per_sequence
  tokens = rows * spec.seq_len
  per_token = accounting.flops_per_token(plan.student, spec.seq_len, training=True)
  per_token += sum(
    accounting.flops_per_token(c, spec.seq_len, training=False) for c in plan.teachers.values()
  )
  if not plan.heads:  # ILD runs no LM head (accounting.distill_flops_per_token, as the trainer)
    per_token -= 3 * accounting.head_flops_per_token(plan.student) + sum(
      accounting.head_flops_per_token(c) for c in plan.teachers.values()
    )
  n_dev = mesh.devices.size
  model_flops = per_token * tokens / n_dev
  report = StageReport(
    plan.name,
    False,
    hbm,
    model_flops=model_flops,
    model_step_s=model_flops / (chip.peak_bf16_flops / devices_per_chip),
    params_trainable=_count(tr_state),
    params_frozen=_count(fr_state),
    tokens_per_step=tokens,
    notes=plan.notes,
  )

  t0 = time.perf_counter()
  try:
    args = (
      _sds(tr_state, tr_shard),
      _sds(opt_state, opt_shard),
      _sds(fr_state, fr_shard),
      {k: _sds(st, te_shard[k]) for k, (_, st) in teacher_defs.items()},
      batch,
    )
    # Kernels are chosen for the TPU, not this host's CPU, so impl="auto" picks the kernels a pod
    # run would; the ops call them through shard_map under the step's activation mesh (Mosaic
    # refuses kernels that GSPMD would have to partition). train.impl="reference" still forces
    # the pure-JAX ops.
    with dispatch_backend("tpu"):
      traced = make_step().trace(*args)
      lowered = traced.lower()
    report.exec_flops = jaxpr_matmul_flops(traced.jaxpr) / n_dev
    report.pallas_calls = _pallas_calls(traced.jaxpr)
    compiled = lowered.compile()
  except Exception as e:  # the TPU compiler refuses programs that exceed HBM
    msg = str(e)
    if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower():
      report.error = msg.strip().splitlines()[0][:600]
      report.compile_s = time.perf_counter() - t0
      return report
    raise
  report.compile_s = time.perf_counter() - t0

  mem = compiled.memory_analysis()
  report.argument_bytes = int(mem.argument_size_in_bytes)
  report.output_bytes = int(mem.output_size_in_bytes)
  report.alias_bytes = int(mem.alias_size_in_bytes)
  report.temp_bytes = int(mem.temp_size_in_bytes)
  report.code_bytes = int(getattr(mem, "generated_code_size_in_bytes", 0) or 0)
  report.total_bytes = (
    report.argument_bytes + report.output_bytes - report.alias_bytes + report.temp_bytes + report.code_bytes
  )
  report.fits = report.total_bytes <= USABLE_HBM_FRACTION * hbm

  flops, nbytes = _cost(compiled)
  if spec.grad_accum > 1 and flops is not None and nbytes is not None:
    # XLA's cost analysis counts a while-loop body once, so the accumulation scan's micro-steps
    # are counted once: add the other accum - 1 (body = step - optimiser update).
    o_flops, o_bytes = _optimizer_cost(optimizer, tr_state, opt_state, tr_shard, opt_shard)
    if o_flops is not None and o_bytes is not None:
      flops = spec.grad_accum * (flops - o_flops) + o_flops
      nbytes = spec.grad_accum * (nbytes - o_bytes) + o_bytes
    else:
      flops = nbytes = None
  report.xla_flops, report.xla_bytes = flops, nbytes
  peak = chip.peak_bf16_flops / devices_per_chip
  bw = chip.hbm_bytes_per_s / devices_per_chip
  if nbytes is not None:
    # Compute: the matmul FLOPs the step executes (jaxpr count, incl. backward and remat; XLA's
    # count misses loop iterations, e.g. of the all-gather/matmul loops it builds for fsdp).
    # Memory: the compiler's HBM traffic, at least one read of the arguments and write of the
    # outputs.
    nbytes = max(nbytes, report.argument_bytes + report.output_bytes)
    report.xla_bytes = nbytes
    t_c, t_m = max(report.exec_flops, flops or 0.0) / peak, nbytes / bw
    report.roofline_s, report.bound = max(t_c, t_m), ("compute" if t_c >= t_m else "memory")
  return report


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
def _gib(n) -> str:
  return f"{n / GiB:.2f} GiB"


def _bytes(n) -> str:
  for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


def _fmt_flops(f) -> str:
  if f is None:
    return "n/a"
  for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if f >= size:
      return f"{f / size:.2f} {unit}"
  return f"{f:.0f} FLOP"


def _secs(t) -> str:
  return f"{t:.3f} s" if t >= 0.1 else f"{t * 1e3:.3f} ms"


def _params(n) -> str:
  return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def format_stage(r: StageReport) -> str:
  lines = [
    f"[{r.name}] {'FITS' if r.fits else 'DOES NOT FIT'}"
    f"  (compiled in {r.compile_s:.0f}s; trainable {_params(r.params_trainable)}, "
    f"frozen {_params(r.params_frozen)} params; {r.tokens_per_step} tokens/step)"
  ]
  if r.error:
    lines.append(f"  compiler: {r.error}")
  else:
    lines.append(
      f"  per-chip memory: arguments {_bytes(r.argument_bytes)}, outputs "
      f"{_bytes(r.output_bytes)} (donated/aliased {_bytes(r.alias_bytes)}), temporaries "
      f"{_bytes(r.temp_bytes)}, code {_bytes(r.code_bytes)}"
    )
    lines.append(
      f"  total {_bytes(r.total_bytes)} of {_bytes(r.hbm_bytes)} HBM "
      f"({100 * r.total_bytes / r.hbm_bytes:.1f}%; limit "
      f"{100 * USABLE_HBM_FRACTION:.0f}%)"
    )
    lines.append(
      f"  FLOPs per chip per step: model {_fmt_flops(r.model_flops)} "
      f"(accounting.flops_per_token), executed matmuls {_fmt_flops(r.exec_flops)} "
      f"(traced step incl. remat), XLA cost analysis {_fmt_flops(r.xla_flops)}"
    )
    if r.roofline_s is not None:
      lines.append(
        f"  roofline step time {_secs(r.roofline_s)} ({r.bound}-bound; HBM traffic "
        f"{_bytes(r.xla_bytes)}); model FLOPs at peak {_secs(r.model_step_s)} "
        f"-> MFU <= {100 * r.model_step_s / r.roofline_s:.0f}%"
      )
  kernels = ", ".join(f"{k} x{n}" for k, n in sorted(r.pallas_calls.items()))
  lines.append(f"  Pallas TPU kernels traced: {kernels or 'none (pure-JAX ops)'}")
  lines += [f"  note: {n}" for n in r.notes]
  return "\n".join(lines)


def aot_report(
  cfg, topology_name: str, *, stages: list[str] | None = None, print_fn: Callable[[str], Any] = print
) -> AOTReport:
  """AOT-compiles every training stage of `cfg` for `topology_name` and prints per-chip memory and
  a roofline step time. Returns the report; `report.fits` is False when a stage needs more HBM
  than the chip has (scripts/distill.py then exits non-zero naming it). `stages` restricts the
  compiled steps by name (e.g. ["kd"]; stepwise phases are "stepwise_<i>")."""
  # lazy: pulls in ml_collections, which importing this module does not
  from zebra_jax.distill.config import validate

  validate(cfg)
  chip, dims = parse_topology(topology_name)
  devices = topology_devices(topology_name)
  chips = math.prod(dims)
  devices_per_chip = max(1, len(devices) // chips) if len(devices) % chips == 0 else 1
  mesh = _make_mesh(cfg, devices)
  kind = getattr(devices[0], "device_kind", chip.name)
  print_fn(
    f"AOT {cfg.name} for {topology_name}: {len(devices)} x {kind} "
    f"({chips} chips, {devices_per_chip} device(s) per chip; {_gib(chip.hbm_bytes)} HBM, "
    f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, {chip.hbm_bytes_per_s / 1e9:.0f} GB/s "
    f"per chip); mesh {dict(mesh.shape)}; seq_len {cfg.data.seq_len}; remat "
    f"{remat_setting(cfg)}"
  )
  plans = stage_plans(cfg)
  if stages is not None:
    unknown = sorted(set(stages) - {p.name for p in plans})
    if unknown:
      raise AOTError(
        f"stages {unknown} are not compiled steps of this config; have {[p.name for p in plans]}"
      )
    plans = [p for p in plans if p.name in stages]
  if not plans:
    print_fn("no training stage to compile")
  results = []
  for plan in plans:
    s = plan.spec
    print_fn(
      f"[{plan.name}] compiling: batch {s.batch_size} = {s.grad_accum} x "
      f"{s.batch_size // s.grad_accum} sequences of {s.seq_len} tokens ..."
    )
    r = compile_stage(plan, mesh, chip, devices_per_chip, remat=remat_setting(cfg))
    results.append(r)
    print_fn(format_stage(r))
  report = AOTReport(topology_name, chip, len(devices), devices_per_chip, dict(mesh.shape), results)
  if report.fits:
    print_fn(f"all {len(results)} compiled stage(s) fit {topology_name}")
  else:
    print_fn(
      f"does not fit {topology_name}: stage(s) {', '.join(report.failed)} (reduce the "
      "micro-batch with <stage>.grad_accum, turn on train.remat, or use more chips)"
    )
  return report
