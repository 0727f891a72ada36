"""Logical sharding axes: every parameter carries them, and a model sharded over a (data, fsdp, tensor)
mesh of 4 CPU devices computes the same logits as the unsharded one."""

import subprocess
import sys
import textwrap

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from zebra_jax.config import HybridConfig
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.parallel import DEFAULT_RULES, logical_to_pspec, make_mesh

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
           num_attention_heads=4, num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=16,
           mla_layers=(0,), attn_layers=(2,), chunk_size=4)


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
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
