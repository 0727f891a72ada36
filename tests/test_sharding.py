"""Logical sharding axes: every parameter carries them, and a model sharded over a (data, fsdp, tensor)
mesh of 4 CPU devices computes the same logits as the unsharded one."""

import subprocess
import sys
import textwrap

import math

import jax
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from zebra_jax.config import HybridConfig
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.parallel import DEFAULT_RULES, MESH_AXES, logical_to_pspec, make_mesh

CFG = dict(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=3,
  num_attention_heads=4,
  num_key_value_heads=2,
  kv_lora_rank=16,
  q_lora_rank=16,
  mla_layers=(0,),
  attn_layers=(2,),
  chunk_size=4,
)


def test_every_parameter_has_logical_axes_known_to_the_rules():
  model = nnx.eval_shape(lambda: CausalLM(HybridConfig(**CFG), rngs=nnx.Rngs(0)))
  missing, unknown = [], set()
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get("out_sharding")
    if not axes or len(axes) != len(var.shape):
      missing.append(".".join(map(str, path)))
    else:
      unknown |= {a for a in axes if a is not None and a not in DEFAULT_RULES}
  assert not missing, f"parameters without logical axes: {missing}"
  assert not unknown, f"logical axes with no rule: {sorted(unknown)}"


def test_rules_skip_axes_that_do_not_divide_or_repeat():
  mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
  assert logical_to_pspec(("embed", "mlp"), (32, 64), mesh) == P(None, None)


# A tiny hybrid (MLA with q/kv LoRA, Mamba2, GQA attention) whose widths 8 divides.
CFG8 = dict(
  vocab_size=128,
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=3,
  num_attention_heads=8,
  num_key_value_heads=8,
  kv_lora_rank=16,
  q_lora_rank=32,
  mla_layers=(0,),
  attn_layers=(2,),
  chunk_size=8,
)


def _specs(config, mesh_sizes):
  """{path: (shape, PartitionSpec)} of every parameter on an abstract (data, fsdp, tensor) mesh."""
  model = nnx.eval_shape(lambda: CausalLM(HybridConfig(**config), rngs=nnx.Rngs(0)))
  mesh = AbstractMesh(tuple(mesh_sizes), MESH_AXES)
  return {
    ".".join(map(str, path)): (
      var.shape,
      logical_to_pspec(var.get_metadata()["out_sharding"], var.shape, mesh),
    )
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }


def test_no_sizeable_parameter_is_replicated_on_fsdp8():
  """On a pure fsdp=8 mesh every parameter of more than 1024 elements is split (MLA's q_b_proj and
  kv_b_proj over fsdp on their LoRA input dim, like the other projections); what stays whole on
  every chip (norm scales, Mamba's per-head A/D/dt_bias and its d_conv x channels conv) is a small
  share of the model."""
  specs = _specs(CFG8, (1, 8, 1))
  replicated = {k: shape for k, (shape, spec) in specs.items() if all(s is None for s in spec)}
  big = {k: shape for k, shape in replicated.items() if math.prod(shape) > 1024}
  assert not big, f"replicated on fsdp=8: {big}"
  share = sum(math.prod(s) for s in replicated.values()) / sum(math.prod(s) for s, _ in specs.values())
  assert share < 0.02, share
  assert specs["layers.0.mixer.q_b_proj.kernel"][1] == P("fsdp", None)
  assert specs["layers.0.mixer.kv_b_proj.kernel"][1] == P("fsdp", None)
  # With a tensor axis too, the LoRA up-projections are laid out like q_proj: fsdp on the input,
  # heads over tensor (the layout the head-sharded attention kernel reads).
  specs = _specs(CFG8, (1, 4, 2))
  assert specs["layers.0.mixer.q_b_proj.kernel"][1] == P("fsdp", "tensor")
  assert specs["layers.0.mixer.kv_b_proj.kernel"][1] == P("fsdp", "tensor")
  assert specs["layers.0.mixer.q_a_proj.kernel"][1] == P("fsdp", "tensor")
  assert specs["layers.2.mixer.q_proj.kernel"][1] == P("fsdp", "tensor")


def test_batch_rule_splits_over_data_and_fsdp_together():
  """A rule candidate may be a tuple of mesh axes: the batch of activations and caches is split
  over data x fsdp (as the trainer's batch), else over whichever one divides it."""
  mesh = AbstractMesh((2, 4, 1), MESH_AXES)
  assert logical_to_pspec(("batch", "length", "kv_lora"), (16, 8, 32), mesh) == P(
    ("data", "fsdp"), None, None
  )
  assert logical_to_pspec(("batch", "length", "kv_lora"), (6, 8, 32), mesh) == P("data", None, "fsdp")
  assert logical_to_pspec(("batch",), (4,), AbstractMesh((1, 4, 2), MESH_AXES)) == P("fsdp")


def test_sharded_forward_matches_unsharded():
  code = textwrap.dedent(f"""
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
      import jax, jax.numpy as jnp, numpy as np
      from flax import nnx
      from zebra_jax.config import HybridConfig
      from zebra_jax.models.hybrid import CausalLM
      from zebra_jax.parallel import make_mesh, shard_model
      m = CausalLM(HybridConfig(**{CFG!r}), rngs=nnx.Rngs(0))
      tok = jnp.asarray(np.random.RandomState(0).randint(0, 64, (4, 10)))
      ref = np.asarray(m(tok))
      shard_model(m, make_mesh(data=1, fsdp=2, tensor=2))
      spec = m.layers[2].mixer.q_proj.kernel[...].sharding.spec
      assert tuple(spec) == ("fsdp", "tensor"), spec
      out = np.asarray(nnx.jit(lambda mm, t: mm(t))(m, tok))
      err = np.abs(out - ref).max() / np.abs(ref).max()
      assert err < 1e-5, err
      print("ok", err)
  """)
  r = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"},
    timeout=300,
  )
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
