"""A whole hybrid with the GPU kernels run through the Pallas interpreter gives the reference's
logits and parameter gradients (float32, CPU).

The CPU-side twin of `tests/test_models_gpu.py::test_float32_forward_and_gradients_match_reference`:
the same model (one MLA, two Mamba2, one GQA layer), but the Pallas GPU kernels of the training /
prefill path (the SSD scan and the flash attention used by the MLA and GQA layers) are registered
for the "cpu" backend with `interpret=True`, so the models' dispatch (`zebra_jax.ops`) calls them
exactly as it does on a GPU, and the interpreter runs the kernel programs with IEEE float32 dots.
The GPU test checks the compiled kernels; this one checks, in CI, that the model-level wiring
(layouts, masks, custom VJPs, padding of odd lengths) is right at 1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_models_gpu import BASE, rel  # the GPU test's model and helper

from kernels_pallas.attention import flash_gpu
from kernels_pallas.ssd.gpu import gpu_supports, ssd_scan_gpu
from kernels_pallas.ssd.reference import ssd_step_reference
from zebra_jax.config import HybridConfig
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.ops import attention as ops_attention
from zebra_jax.ops import ssd as ops_ssd
from zebra_jax.ops.dispatch import Kernel


@pytest.fixture
def gpu_kernels_on_cpu(monkeypatch):
  """Registers the interpreted GPU kernels under impl "pallas" for backend "cpu" (undone after);
  counts their calls so the test can tell they ran."""
  if jax.default_backend() != "cpu":
    pytest.skip("registers kernels for the cpu backend")
  calls = {"ssd": 0, "attention": 0}

  def ssd_scan(*args, **kw):
    calls["ssd"] += 1
    return ssd_scan_gpu(*args, interpret=True, **kw)

  def attention(q, k, v, *, scale):
    calls["attention"] += 1
    return flash_gpu.flash_attention_gpu(q, k, v, scale=scale, interpret=True)

  monkeypatch.setitem(ops_ssd.SCAN_KERNELS.kernels, ("pallas", "cpu"), Kernel(ssd_scan, gpu_supports))
  monkeypatch.setitem(ops_ssd.STEP_KERNELS.kernels, ("pallas", "cpu"), Kernel(ssd_step_reference))
  monkeypatch.setitem(ops_attention.KERNELS.kernels, ("pallas", "cpu"), Kernel(attention, flash_gpu.supports))
  return calls


@nnx.jit
def logits_and_grads(model, tokens):
  """The logits and the parameter gradients of test_models_gpu.grads' loss (mean logsumexp of the
  logits), from one jitted program per model (op-by-op, the many small compiles cost twice as
  long)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    logits = nnx.merge(graphdef, p, rest)(tokens)
    return jnp.mean(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)), logits

  g, logits = jax.grad(loss, has_aux=True)(params)
  return logits, jax.tree.leaves(g)


def test_float32_hybrid_with_interpreted_gpu_kernels_matches_reference(gpu_kernels_on_cpu):
  ref = CausalLM(
    HybridConfig(**BASE, impl="reference", dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0)
  )
  pal = CausalLM(
    HybridConfig(**BASE, impl="pallas", dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(1)
  )
  nnx.update(pal, nnx.state(ref))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 200)), jnp.int32)  # odd T
  logits_pal, g_pal = logits_and_grads(pal, tokens)
  logits_ref, g_ref = logits_and_grads(ref, tokens)
  assert rel(logits_pal, logits_ref) < 1e-4
  # the kernels ran: 2 Mamba2 layers call the scan, the MLA and the GQA layer the attention
  assert gpu_kernels_on_cpu["ssd"] >= 2 and gpu_kernels_on_cpu["attention"] >= 2
  assert len(g_pal) == len(g_ref)
  worst = max(rel(a, b) for a, b in zip(g_pal, g_ref) if np.linalg.norm(np.asarray(b)) > 0)
  assert worst < 5e-4, worst
